"""A user:password@ in a platform URL is never shown, even where the CLI's refusal is not in the
way (segbill used as a library): notices, the summary's `stopped` and dead-letter reasons name
the host and port only."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from segbill.delivery import DeliveryOptions, HttpSink
from segbill.pipeline import Options, Replay
from segbill.runner import run
from segbill.sources import expand
from segbill.targets import get_target
from segbill.targets.api import ReadFailed, ReadOptions
from segbill.targets.lago_api import LagoReader
from segbill.testing.fake_platform import FakePlatform

from .conftest import jsonl, track, write

SECRET = "pw-SECRET3"


@pytest.mark.parametrize(
    ("status", "said"), [(401, "billing.test:8443 rejected the API key"), (503, "billing.test:8443 still failed after 0 retries")]
)
def test_a_send_names_the_host_without_the_password(tmp_path: Path, status: int, said: str) -> None:
    path = write(tmp_path / "in.jsonl", jsonl(track(messageId="m1")))
    dead = tmp_path / "dead.jsonl"
    replay = Replay(Options(expand([str(path)], stdin_is_terminal=False), get_target("lago"), dead_letter=dead))
    settings = DeliveryOptions(url=f"https://user:{SECRET}@billing.test:8443", api_key="k", batch_size=100, max_retries=0)
    transport = httpx.MockTransport(lambda request: httpx.Response(status))
    run(replay, HttpSink(get_target("lago"), settings, transport=transport))
    replay.close()
    shown = f"{replay.tally.stopped} {dead.read_text() if dead.exists() else ''}"
    assert said in shown and SECRET not in shown


def test_a_read_names_the_host_without_the_password() -> None:
    with FakePlatform(api_key="right-key") as fake:
        host = fake.url.removeprefix("http://")
        url = f"http://user:{SECRET}@{host}"

        async def read() -> str:
            async with LagoReader(ReadOptions(url, "wrong-key", 5.0, 0)) as reader:
                with pytest.raises(ReadFailed) as failed:
                    await reader.get("/api/v1/billable_metrics")
            return str(failed.value)

        said = asyncio.run(read())
    assert said.startswith(f"{host} rejected the API key") and SECRET not in said

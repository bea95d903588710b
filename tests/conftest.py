"""Shared helpers: run the real CLI in-process (or as a process) against the fake platforms, and
read back what it wrote."""

from __future__ import annotations

import gzip
import os
import pty
import random
import subprocess
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from segbill import delivery, sources, state
from segbill.cli import app
from segbill.segment import iso_millis
from segbill.testing.fake_platform import FakePlatform

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DATA = ROOT / "sample_data"
KEY = "sk-test-key"  # the fake's API key; never to appear in any output


@dataclass
class Run:
    exit_code: int
    stdout: str
    stderr: str
    dead_letter: Path

    @property
    def events(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.stdout.splitlines() if line.strip()]

    @property
    def dead_letters(self) -> list[dict[str, Any]]:
        if not self.dead_letter.exists():
            return []
        return [orjson.loads(line) for line in self.dead_letter.read_bytes().splitlines()]


@pytest.fixture
def segbill(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Run `segbill ARGS` in-process from a scratch folder, as a user would."""
    monkeypatch.chdir(tmp_path)

    def run(
        *args: str, input: bytes | str | None = None, dead_letter: str = "dead.jsonl", env: dict[str, str] | None = None
    ) -> Run:
        argv = list(args)
        if "--dead-letter" not in argv and argv[:1] == ["send"]:
            argv += ["--dead-letter", dead_letter]
        result = CliRunner().invoke(app, argv, input=input, env=env, catch_exceptions=False)
        return Run(result.exit_code, result.stdout, result.stderr, tmp_path / dead_letter)

    return run


# In a subprocess, this makes `import isal` fail, so segbill falls back to zlib.
WITHOUT_ISAL = "import sys; sys.modules['isal'] = None; from segbill import main; sys.argv[0] = 'segbill'; main()"


@pytest.fixture(params=["isal", "zlib"])
def inflate(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """gzip inputs are inflated by python-isal when installed, else by zlib: test both."""
    if request.param == "isal":
        monkeypatch.setattr(sources, "decompressobj", pytest.importorskip("isal.isal_zlib").decompressobj)
    else:
        monkeypatch.setattr(sources, "decompressobj", zlib.decompressobj)
    return request.param


def track(**fields: Any) -> dict[str, Any]:
    """A minimal valid track message; keyword arguments replace or add fields (None removes)."""
    message: dict[str, Any] = {
        "type": "track",
        "event": "API Call",
        "userId": "user-1",
        "messageId": "msg-1",
        "timestamp": "2024-01-01T00:00:00.123Z",
        "properties": {},
    }
    for key, value in fields.items():
        if value is None:
            message.pop(key, None)
        else:
            message[key] = value
    return message


def jsonl(*messages: Any) -> bytes:
    return b"".join(orjson.dumps(message) + b"\n" for message in messages)


def write(path: Path, data: bytes, *, compress: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


@pytest.fixture
def fake() -> Iterator[FakePlatform]:
    """The fake Lago and Hyperline on 127.0.0.1, taking `KEY`; a 429 asks for no wait."""
    with FakePlatform(api_key=KEY, retry_after=0) as platform:
        yield platform


@pytest.fixture(params=[True, False], ids=["insert-returning", "sqlite-before-3.35"])
def claim_method(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both ways of claiming keys: INSERT ... RETURNING, and the lookup-then-insert fallback."""
    monkeypatch.setattr(state, "RETURNING", request.param)


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries in this process back off from 10 ms, so a test's retried failures cost little."""
    monkeypatch.setattr(delivery, "BACKOFF_BASE", 0.01)


def platform_env(url: str) -> dict[str, str]:
    """The variables that send either platform's events to the fake at `url`."""
    return {"LAGO_API_URL": url, "LAGO_API_KEY": KEY, "HYPERLINE_API_URL": url, "HYPERLINE_API_KEY": KEY}


def process_env(url: str) -> dict[str, str]:
    """The environment of a `python -m segbill` process that sends to the fake at `url`."""
    return {**os.environ, **platform_env(url)}


def in_terminal(*args: str, env: dict[str, str], cwd: Path) -> tuple[int, str]:
    """Run `segbill ARGS` as a process whose stdout and stderr are a terminal (a pseudo-terminal,
    200 columns): what a user at a terminal sees, rich tables included."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "segbill", *args],
        env={**os.environ, **env, "COLUMNS": "200"},
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=terminal,
    )
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the process closed its end
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)
    return process.wait(timeout=60), output.decode(errors="replace")


def assert_adds_up(summary: dict[str, Any]) -> dict[str, Any]:
    """Every record read has exactly one outcome, and each outcome's reasons add up to it."""
    done = summary.get("converted", summary.get("delivered"))
    assert (
        summary["read"] == done + summary["skipped"] + summary["dead_lettered"] + summary["not_attempted"] + summary["unanswered"]
    )
    assert summary["skipped"] == sum(summary["skipped_by_reason"].values())
    assert summary["dead_lettered"] == sum(summary["dead_lettered_by_reason"].values())
    return summary


def send(segbill: Any, url: str, *args: str, to: str = "lago", human: bool = False) -> tuple[Run, dict[str, Any] | None]:
    """`segbill send ARGS --to TO --quiet` to the fake, with `--json` unless `human`: the run and
    its summary (checked to add up; None for a human summary). No output holds the key."""
    run = segbill("send", *args, "--to", to, "--quiet", *([] if human else ["--json"]), env=platform_env(url))
    assert KEY not in run.stdout + run.stderr
    return run, (None if human else assert_adds_up(orjson.loads(run.stdout.strip().splitlines()[-1])))


def spread_export(
    count: int, customers: list[str], events: list[str], *, start: int, days: int = 10, seed: int = 1
) -> list[dict[str, Any]]:
    """`count` track messages spread at random (seeded) over customers, event names and `days`
    days from `start` (ms): the shape check and reconcile count and narrow."""
    rng = random.Random(seed)
    return [
        track(
            messageId=f"msg-{i:05d}",
            userId=rng.choice(customers),
            event=rng.choice(events),
            timestamp=iso_millis(start + rng.randrange(days * 86_400_000)),
            properties={"n": i},
        )
        for i in range(count)
    ]

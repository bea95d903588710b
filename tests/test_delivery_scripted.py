"""Scripted answer sequences through httpx.MockTransport, where a sequence is clearer than a server."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import replace
from email.utils import formatdate
from pathlib import Path

import httpx
import orjson
import pytest

from segbill import delivery
from segbill.delivery import DeliveryOptions, HttpSink, retryable, wait_hint
from segbill.pipeline import Options, Replay
from segbill.runner import run as run_loop
from segbill.sources import expand
from segbill.targets import Answer, get_target

from .conftest import jsonl, track, write

pytestmark = pytest.mark.usefixtures("fast_backoff")


def replay_of(tmp_path: Path, target: str, count: int) -> Replay:
    path = write(tmp_path / "in.jsonl", jsonl(*(track(messageId=f"m{i}") for i in range(count))))
    options = Options(expand([str(path)], stdin_is_terminal=False), get_target(target), dead_letter=tmp_path / "dead.jsonl")
    return Replay(options)


def run(replay: Replay, answers: list[httpx.Response | Exception], **options: object) -> list[httpx.Request]:
    """Deliver through a transport that plays `answers` in order; returns the requests it saw."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    target = replay.options.target
    settings = DeliveryOptions(url="https://billing.test", api_key="k", batch_size=target.default_batch, **options)  # type: ignore[arg-type]
    run_loop(replay, HttpSink(target, settings, transport=httpx.MockTransport(handler)))
    replay.close()
    return seen


def test_every_retry_resends_the_identical_body(tmp_path: Path) -> None:
    replay = replay_of(tmp_path, "lago", 5)
    seen = run(
        replay,
        [
            httpx.Response(503),
            httpx.ConnectError("refused"),
            httpx.ReadTimeout("slow"),
            httpx.DecodingError("garbled gzip answer"),
            httpx.Response(429, headers={"X-RateLimit-Reset": "0"}),
            httpx.Response(200, json={"events": []}),
        ],
    )
    assert len({request.content for request in seen}) == 1 and len(seen) == 6
    assert replay.tally.delivered == 5 and replay.tally.retries == 5 and replay.tally.requests == 6


def test_a_batch_sent_without_a_final_answer_when_the_run_stops_is_unanswered_not_attempted(tmp_path: Path) -> None:
    """The first batch gets only 503s; the second, sent meanwhile, a 401 that stops the run.
    The first was sent (maybe stored): `unanswered`. The second was refused whole and the rest
    never left: `not_attempted`. Only requests that really went again count as retries."""
    replay = replay_of(tmp_path, "lago", 300)
    seen: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.content)
        return httpx.Response(503) if b'"m0"' in request.content else httpx.Response(401)

    settings = DeliveryOptions(url="https://billing.test", api_key="k", batch_size=100, concurrency=2, max_retries=10)
    run_loop(replay, HttpSink(get_target("lago"), settings, transport=httpx.MockTransport(handler)))
    replay.close()
    tally = replay.tally
    first = [body for body in seen if b'"m0"' in body]
    assert (
        len(seen) == len(first) + 1 and 1 <= len(first) < 10
    )  # one request of the second batch; the stop cut the first's retries
    assert tally.requests == len(seen) and tally.retries == len(first) - 1
    assert tally.unanswered == 100 and tally.not_attempted == tally.read - 100 >= 100 and tally.delivered == 0
    assert tally.unsettled == 0 and tally.exit_code() == 3 and "rejected the API key" in (tally.stopped or "")


def test_501_and_other_unexpected_statuses_are_dead_lettered_not_retried(tmp_path: Path) -> None:
    replay = replay_of(tmp_path, "hyperline", 3)
    seen = run(replay, [httpx.Response(501, json={"message": "Not Implemented"})])
    assert len(seen) == 1
    assert replay.tally.dead_lettered == {"rejected": 3}
    entries = [orjson.loads(line) for line in (tmp_path / "dead.jsonl").read_bytes().splitlines()]
    assert entries[0]["reason"] == 'Hyperline answered HTTP 501 ({"message":"Not Implemented"}); not retried.'


def test_lago_422_mixing_duplicates_errors_and_valid_events(tmp_path: Path) -> None:
    replay = replay_of(tmp_path, "lago", 4)
    details = {"0": {"transaction_id": ["value_already_exist"]}, "2": {"code": ["value_is_mandatory"]}}
    seen = run(
        replay,
        [
            httpx.Response(
                422, json={"status": 422, "error": "Unprocessable Entity", "code": "validation_errors", "error_details": details}
            ),
            httpx.Response(200, json={"events": []}),
        ],
    )
    resent = orjson.loads(seen[1].content)["events"]
    assert [event["transaction_id"] for event in resent] == ["m1", "m3"]
    tally = replay.tally
    assert tally.delivered == 3 and tally.already_delivered == 1 and tally.dead_lettered == {"rejected": 1}
    [entry] = [orjson.loads(line) for line in (tmp_path / "dead.jsonl").read_bytes().splitlines()]
    assert entry["record"]["messageId"] == "m2"
    assert entry["reason"] == 'Rejected by Lago: {"code":["value_is_mandatory"]}.'


def test_a_lago_422_naming_no_event_is_split_down_to_dead_letters_not_resent_for_ever(tmp_path: Path) -> None:
    """`error_details: {}` names no event: every event was resent, the same answer came back, for
    ever. It refuses the batch as a whole, so the batch is split until single events are
    dead-lettered with Lago's answer."""
    replay = replay_of(tmp_path, "lago", 3)
    empty = {"status": 422, "error": "Unprocessable Entity", "code": "validation_errors", "error_details": {}}
    seen = run(replay, [httpx.Response(422, json=empty) for _ in range(5)])
    assert [len(orjson.loads(r.content)["events"]) for r in seen] == [3, 1, 2, 1, 1]
    assert replay.tally.dead_lettered == {"rejected": 3} and replay.tally.delivered == 0
    entries = [orjson.loads(line) for line in (tmp_path / "dead.jsonl").read_bytes().splitlines()]
    assert sorted(entry["record"]["messageId"] for entry in entries) == ["m0", "m1", "m2"]
    assert {entry["reason"] for entry in entries} == {f"Rejected by Lago (HTTP 422: {orjson.dumps(empty).decode()})."}


def test_an_answer_that_resends_every_event_cannot_loop(tmp_path: Path) -> None:
    """Whatever a platform's answer says, a batch only ever comes back smaller: an answer that
    asks for every event again (nothing settled) splits the batch, down to dead letters."""
    lago = get_target("lago")
    everything_again = replace(lago, read_answer=lambda status, content, keys: Answer(resend=list(range(len(keys)))))
    path = write(tmp_path / "in.jsonl", jsonl(*(track(messageId=f"m{i}") for i in range(4))))
    replay = Replay(Options(expand([str(path)], stdin_is_terminal=False), everything_again, dead_letter=tmp_path / "dead.jsonl"))
    seen = run(replay, [httpx.Response(409, text="conflict") for _ in range(7)])
    assert [len(orjson.loads(r.content)["events"]) for r in seen] == [4, 2, 1, 1, 2, 1, 1]
    assert replay.tally.dead_lettered == {"rejected": 4} and replay.tally.unsettled == 0
    entries = [orjson.loads(line) for line in (tmp_path / "dead.jsonl").read_bytes().splitlines()]
    assert {entry["reason"] for entry in entries} == {"Rejected by Lago (HTTP 409: conflict)."}


def test_lago_too_many_events_halves_the_batch(tmp_path: Path) -> None:
    """Self-hosted Lago can lower the batch limit: a batch-level 422 is split, not dead-lettered."""
    replay = replay_of(tmp_path, "lago", 8)
    too_many = httpx.Response(
        422, json={"status": 422, "code": "validation_errors", "error_details": {"events": ["too_many_events"]}}
    )
    seen = run(replay, [too_many, httpx.Response(200, json={}), httpx.Response(200, json={})])
    assert [len(orjson.loads(r.content)["events"]) for r in seen] == [8, 4, 4]
    assert replay.tally.delivered == 8


def test_retries_run_out_then_the_batch_is_dead_lettered_with_the_last_error(tmp_path: Path) -> None:
    replay = replay_of(tmp_path, "hyperline", 2)
    run(replay, [httpx.Response(502), httpx.Response(503), httpx.Response(500)], max_retries=2)
    assert replay.tally.dead_lettered == {"unreachable": 2}
    entry = orjson.loads((tmp_path / "dead.jsonl").read_bytes().splitlines()[0])
    assert entry["reason"] == "Not delivered: billing.test still failed after 2 retries (HTTP 500)."


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 599])
def test_retryable_statuses(status: int) -> None:
    assert retryable(status)


@pytest.mark.parametrize("status", [200, 400, 401, 404, 422, 501])
def test_statuses_not_retried(status: int) -> None:
    assert not retryable(status)


def test_wait_hints_from_both_platforms() -> None:
    lago, hyperline = get_target("lago").rates, get_target("hyperline").rates
    assert wait_hint(httpx.Headers({"X-RateLimit-Reset": "3"}), lago) == 3.0  # Lago: seconds
    assert wait_hint(httpx.Headers({"Retry-After": "7"}), hyperline) == 7.0  # Hyperline: seconds
    future = formatdate(time.time() + 20, usegmt=True)
    hint = wait_hint(httpx.Headers({"Retry-After": future}), hyperline)
    assert hint is not None and 18 <= hint <= 20  # an HTTP date
    past = formatdate(time.time() - 60, usegmt=True)
    assert wait_hint(httpx.Headers({"Retry-After": "soon", "X-RateLimit-Reset": past}), hyperline) == 0.0
    assert wait_hint(httpx.Headers({}), lago) is None


def test_the_api_key_is_not_in_the_delivery_options_repr() -> None:
    options = DeliveryOptions(url="https://billing.test", api_key="sk-live-very-secret", batch_size=10)
    assert "sk-live-very-secret" not in repr(options) and "sk-live-very-secret" not in str(options)


def test_progress_without_a_terminal_is_one_plain_line_per_tick() -> None:
    import io

    from segbill.cli.progress import Progress
    from segbill.report import Tally

    tally = Tally(target="lago", dry_run=False)
    tally.read, tally.delivered = 1500, 1200
    tally.dead_lettered["rejected"] = 3
    stream = io.StringIO()
    progress = Progress(tally, total_bytes=1000, stream=stream, terminal=False)
    assert progress.interval == 10.0  # cron logs get a line every 10 s, not a bar
    progress.on_bytes("a.jsonl", 250)
    progress.start()
    progress.tick(0.0)
    progress.stop()
    [line] = stream.getvalue().splitlines()
    # 25% of the bytes read, 1,203 of the 1,500 records read settled: 20% done
    assert re.search(rf" segbill\[{tally.run_id}\]: 20% of the input, elapsed 0:00:0\d, ETA 0:00:\d\d; ", line)
    assert "read 1,500, delivered 1,200, skipped 0, dead-lettered 3, " in line and line.endswith("records/s")


@pytest.mark.parametrize(("budget", "most"), [(300, 3), (10_000, 16)])
def test_the_events_out_at_once_stay_within_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, budget: int, most: int
) -> None:
    """Every batch handed to a sender holds its events until their outcome: however many requests
    may be in flight, no more than MAX_EVENTS_OUT events are out at once."""
    monkeypatch.setattr(delivery, "MAX_EVENTS_OUT", budget)
    replay = replay_of(tmp_path, "lago", 3000)
    in_flight = [0]
    peaks: list[int] = []

    async def answer(request: httpx.Request) -> httpx.Response:
        in_flight[0] += 1
        peaks.append(in_flight[0])
        for _ in range(50):  # answer only after the reader has had every chance to hand out more
            await asyncio.sleep(0)
        in_flight[0] -= 1
        return httpx.Response(200, json={"events": []})

    settings = DeliveryOptions(url="https://billing.test", api_key="k", batch_size=100, concurrency=16)
    run_loop(replay, HttpSink(replay.options.target, settings, transport=httpx.MockTransport(answer)))
    replay.close()
    assert replay.tally.delivered == 3000
    assert max(peaks) == most

"""Delivery against fake Lago and Hyperline servers on 127.0.0.1 that behave as the real ones do.

Every test checks the three promises: nothing lost, nothing stored twice, and the API key in no
output and no dead-letter line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from segbill.testing.fake_platform import FakePlatform

from .conftest import Run, jsonl, track, write

KEY = "sk-live-5e5e-do-not-print"
ENV_NAMES = {"lago": ("LAGO_API_URL", "LAGO_API_KEY"), "hyperline": ("HYPERLINE_API_URL", "HYPERLINE_API_KEY")}


pytestmark = pytest.mark.usefixtures("fast_backoff")


@pytest.fixture
def fake() -> Iterator[FakePlatform]:
    with FakePlatform(api_key=KEY, retry_after=0, hang_seconds=5) as platform:
        yield platform


def messages(count: int, prefix: str = "m", customers: int = 7) -> list[dict[str, Any]]:
    return [track(messageId=f"{prefix}{i}", userId=f"cus_{i % customers}", properties={"n": i}) for i in range(count)]


def env_for(target: str, url: str) -> dict[str, str]:
    url_name, key_name = ENV_NAMES[target]
    return {url_name: url, key_name: KEY}


def send(segbill, tmp_path: Path, target: str, url: str, data: bytes, *extra: str) -> tuple[Run, dict[str, Any]]:
    path = tmp_path / "events.jsonl"
    path.write_bytes(data)
    run = segbill("send", str(path), "--to", target, "--json", "--quiet", *extra, env=env_for(target, url))
    assert KEY not in run.stdout and KEY not in run.stderr
    if run.dead_letter.exists():
        assert KEY not in run.dead_letter.read_text()
    summary = orjson.loads(run.stdout) if run.stdout.strip() else {}
    if summary:
        assert (
            summary["read"]
            == summary["delivered"]
            + summary["skipped"]
            + summary["dead_lettered"]
            + summary["not_attempted"]
            + summary["unanswered"]
        )
    return run, summary


def stored_once(fake: FakePlatform, target: str, ids: list[str]) -> None:
    counts = fake.counts(target)  # type: ignore[arg-type]
    assert sorted(counts) == sorted(ids), "stored events differ from the billable ones"
    assert set(counts.values()) == {1}, "an event is stored twice"


@pytest.mark.parametrize("target", ["lago", "hyperline"])
def test_everything_is_delivered_once_in_batches_with_the_key_as_a_bearer_token(
    segbill, tmp_path: Path, fake: FakePlatform, target: str
) -> None:
    run, summary = send(segbill, tmp_path, target, fake.url, jsonl(*messages(250), {"type": "identify", "userId": "u"}))
    assert run.exit_code == 0, run.stderr
    assert summary["delivered"] == 250 and summary["skipped_by_reason"] == {"identify": 1}
    stored_once(fake, target, [f"m{i}" for i in range(250)])
    requests = fake.requests(target)  # type: ignore[arg-type]
    assert sorted(r.events for r in requests) == ([50, 100, 100] if target == "lago" else [250])
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in requests)
    assert summary["requests"] == len(requests) and summary["retries"] == 0


def test_a_path_prefix_in_the_url_is_kept(segbill, tmp_path: Path, fake: FakePlatform) -> None:
    run, _ = send(segbill, tmp_path, "lago", fake.url + "/lago/", jsonl(*messages(3)))
    assert run.exit_code == 0
    assert [r.path for r in fake.requests("lago")] == ["/lago/api/v1/events/batch"]


def test_a_poison_event_costs_only_itself_the_other_99_are_delivered(segbill, tmp_path: Path, fake: FakePlatform) -> None:
    fake.lago_poison = {"m42"}
    run, summary = send(segbill, tmp_path, "lago", fake.url, jsonl(*messages(100)))
    assert run.exit_code == 1
    assert summary["delivered"] == 99 and summary["dead_lettered_by_reason"] == {"rejected": 1}
    stored_once(fake, "lago", [f"m{i}" for i in range(100) if i != 42])
    [entry] = run.dead_letters
    assert entry["record"]["messageId"] == "m42"
    assert entry["reason"].startswith("Rejected by Lago: ") and "expression_evaluation_failed" in entry["reason"]
    assert entry["source"] == {"path": str(tmp_path / "events.jsonl"), "line": 43}
    assert [r.status for r in fake.requests("lago")] == [422, 200]  # the valid rest went straight back


def test_a_rerun_finds_everything_already_delivered_and_stores_nothing_twice(segbill, tmp_path: Path, fake: FakePlatform) -> None:
    data = jsonl(*messages(150))
    send(segbill, tmp_path, "lago", fake.url, data)
    run, summary = send(segbill, tmp_path, "lago", fake.url, data)
    assert run.exit_code == 0
    assert summary["delivered"] == 150 and summary["already_delivered"] == 150
    stored_once(fake, "lago", [f"m{i}" for i in range(150)])


def test_hyperline_failed_events_are_matched_by_record_id(segbill, tmp_path: Path, fake: FakePlatform) -> None:
    fake.hyperline_customers = {f"cus_{i}" for i in range(6)}  # cus_6 does not exist
    run, summary = send(segbill, tmp_path, "hyperline", fake.url, jsonl(*messages(70)))
    assert run.exit_code == 1
    missing = [f"m{i}" for i in range(70) if i % 7 == 6]
    assert summary["dead_lettered_by_reason"] == {"rejected": len(missing)}
    assert [e["record"]["messageId"] for e in run.dead_letters] == missing
    assert {e["reason"] for e in run.dead_letters} == {
        "Rejected by Hyperline, which gives no reason; check that the customer exists."
    }
    stored_once(fake, "hyperline", [f"m{i}" for i in range(70) if i % 7 != 6])


def test_a_whole_request_400_is_narrowed_down_to_the_bad_event(segbill, tmp_path: Path, fake: FakePlatform) -> None:
    fake.hyperline_malformed = {"m13"}
    run, _summary = send(segbill, tmp_path, "hyperline", fake.url, jsonl(*messages(64)))
    assert run.exit_code == 1
    [entry] = run.dead_letters
    assert entry["record"]["messageId"] == "m13" and entry["reason"].startswith("Rejected by Hyperline (HTTP 400: ")
    stored_once(fake, "hyperline", [f"m{i}" for i in range(64) if i != 13])
    assert len(fake.requests("hyperline")) <= 2 * 7  # halving: about two requests per level


def exact_dead_letters(run: Run) -> list[dict[str, Any]]:
    """The dead-letter file read with the standard library, which keeps every integer exact."""
    return [json.loads(line) for line in run.dead_letter.read_text().splitlines()]


@pytest.mark.parametrize("target", ["lago", "hyperline"])
def test_a_rejected_event_is_dead_lettered_with_its_original_message_exactly(
    segbill, tmp_path: Path, fake: FakePlatform, target: str
) -> None:
    """Events travel without their parsed message: the dead letter reads it back from the line."""
    fake.lago_poison = {"odd"}
    fake.hyperline_customers = {"cus_0"}
    odd = track(messageId="odd", userId="cus_gone" if target == "hyperline" else "cus_0", properties={"n": 1.5, "note": "Zoë ✓"})
    line = orjson.dumps(odd)[:-1] + b',"context":{"trace":123456789012345678901234567890,"ratio":0.1}}'
    data = jsonl(*messages(150, customers=1)) + line + b"\n"
    run, summary = send(segbill, tmp_path, target, fake.url, data)
    assert run.exit_code == 1 and summary["dead_lettered_by_reason"] == {"rejected": 1}
    [entry] = exact_dead_letters(run)
    assert entry["record"] == json.loads(line)
    assert entry["record"]["context"]["trace"] == 123456789012345678901234567890
    assert entry["source"] == {"path": str(tmp_path / "events.jsonl"), "line": 151}
    stored_once(fake, target, [f"m{i}" for i in range(150)])


def test_a_rejected_envelope_item_is_dead_lettered_alone_with_the_envelope_context_merged(
    segbill, tmp_path: Path, fake: FakePlatform
) -> None:
    fake.hyperline_customers = {"cus_ok"}
    envelope = {
        "batch": [track(messageId="e1", userId="cus_ok"), track(messageId="e2", userId="cus_gone", context={"ip": "2.2.2.2"})],
        "context": {"library": {"name": "analytics-node"}, "ip": "1.1.1.1"},
        "integrations": {"All": True},
    }
    run, summary = send(segbill, tmp_path, "hyperline", fake.url, jsonl(envelope))
    assert run.exit_code == 1 and summary["delivered"] == 1
    [entry] = exact_dead_letters(run)
    expected = track(
        messageId="e2",
        userId="cus_gone",
        context={"library": {"name": "analytics-node"}, "ip": "2.2.2.2"},
        integrations={"All": True},
    )
    assert entry["record"] == expected
    assert entry["source"] == {"path": str(tmp_path / "events.jsonl"), "line": 1, "index": 1}
    stored_once(fake, "hyperline", ["e1"])


def test_a_replayed_dead_letter_rejected_again_keeps_its_record_and_first_source(
    segbill, tmp_path: Path, fake: FakePlatform
) -> None:
    fake.lago_poison = {"m3"}
    first, _ = send(segbill, tmp_path, "lago", fake.url, jsonl(*messages(5)))
    [original] = exact_dead_letters(first)
    dead = tmp_path / "dead.jsonl"
    again = segbill(
        "send", str(dead), "--to", "lago", "--json", "--quiet", env=env_for("lago", fake.url), dead_letter="again.jsonl"
    )
    assert again.exit_code == 1
    [entry] = exact_dead_letters(again)
    assert entry["record"] == original["record"] == messages(5)[3]
    assert entry["source"] == {"path": str(dead), "line": 1}
    assert entry["first_source"] == {"path": str(tmp_path / "events.jsonl"), "line": 4}


def test_an_event_the_platform_rejected_is_sent_again_once_the_mapping_is_fixed(
    segbill, tmp_path: Path, fake: FakePlatform
) -> None:
    """A rejected event travelled without its parsed message; its dead letter is still kept under
    the mapping that made it, not as a line that fails whatever the mapping."""
    fake.hyperline_customers = {"cus_ok"}
    data = jsonl(track(messageId="m1", userId="cus_gone", anonymousId="cus_ok"))
    _, summary = send(segbill, tmp_path, "hyperline", fake.url, data, "--state", "s.db")
    assert summary["dead_lettered_by_reason"] == {"rejected": 1}
    fixed, summary = send(segbill, tmp_path, "hyperline", fake.url, data, "--state", "s.db", "--customer-from", "anonymousId")
    assert fixed.exit_code == 0 and summary["delivered"] == 1 and summary["skipped"] == 0
    stored_once(fake, "hyperline", ["m1"])


@pytest.mark.parametrize("fault", ["503", "500", "502", "408", "429", "reset", "hang"])
def test_transient_failures_are_retried_until_delivered(segbill, tmp_path: Path, fake: FakePlatform, fault: str) -> None:
    fake.script([fault, fault])
    run, summary = send(segbill, tmp_path, "lago", fake.url, jsonl(*messages(10)), "--timeout", "0.5")
    assert run.exit_code == 0, run.stderr
    assert summary["retries"] == 2 and summary["requests"] == 3
    stored_once(fake, "lago", [f"m{i}" for i in range(10)])


@pytest.mark.parametrize("target", ["lago", "hyperline"])
def test_a_lost_answer_ends_delivered_and_stored_once(segbill, tmp_path: Path, fake: FakePlatform, target: str) -> None:
    fake.script(["lost"])
    run, summary = send(segbill, tmp_path, target, fake.url, jsonl(*messages(10)))
    assert run.exit_code == 0, run.stderr
    assert summary["delivered"] == 10 and summary["retries"] == 1
    if target == "lago":
        assert summary["already_delivered"] == 10  # Lago answered the retry with value_already_exist
    stored_once(fake, target, [f"m{i}" for i in range(10)])


@pytest.mark.parametrize(
    ("fault", "words"),
    [("401", "rejected the API key"), ("403", "refused to let this API key write events"), ("404", "has no such endpoint")],
)
def test_fatal_answers_stop_at_once_with_exit_3_naming_the_host(
    segbill, tmp_path: Path, fake: FakePlatform, fault: str, words: str
) -> None:
    fake.script([fault])
    run, summary = send(segbill, tmp_path, "lago", fake.url, jsonl(*messages(1000)), "--concurrency", "1")
    assert run.exit_code == 3
    host = fake.url.removeprefix("http://")
    assert summary["stopped"].startswith(f"{host} {words} (HTTP {fault}")
    assert summary["dead_lettered"] == 0 and summary["delivered"] == 0
    assert summary["not_attempted"] == summary["read"] >= 100
    assert len(fake.requests("lago")) == 1
    assert not run.dead_letter.exists()


def test_an_unreachable_host_dead_letters_with_the_last_error_then_stops(segbill, tmp_path: Path) -> None:
    with FakePlatform(api_key=KEY) as gone:
        url = gone.url  # a port that nothing listens on once closed
    run, summary = send(segbill, tmp_path, "lago", url, jsonl(*messages(1000)), "--max-retries", "2", "--concurrency", "1")
    assert run.exit_code == 3
    assert summary["dead_lettered_by_reason"] == {"unreachable": 300}
    assert summary["not_attempted"] == summary["read"] - 300 and summary["read"] < 1000  # reading stopped too
    assert summary["stopped"].startswith(f"{url.removeprefix('http://')} unreachable: 3 batches in a row")
    reasons = {e["reason"] for e in run.dead_letters}
    assert len(reasons) == 1 and reasons.pop().startswith(
        f"Not delivered: {url.removeprefix('http://')} still failed after 2 retries (ConnectError"
    )


def test_retries_count_only_requests_really_sent_again(segbill, tmp_path: Path) -> None:
    """Every request answered 503: with --max-retries 1 a batch is sent at most twice, so at
    most half of the requests are retries, however the stop cuts the batches in flight."""
    with FakePlatform(api_key=KEY, faults={"503": 1.0}, retry_after=0) as fake:
        run, summary = send(
            segbill, tmp_path, "lago", fake.url, jsonl(*messages(3000)), "--max-retries", "1", "--concurrency", "4"
        )
        assert summary["requests"] == len(fake.requests("lago")) and fake.counts("lago") == {}
    assert run.exit_code == 3 and summary["stopped"].endswith("3 batches in a row failed every retry (HTTP 503)")
    assert summary["dead_lettered_by_reason"]["unreachable"] >= 300
    assert 0 < summary["retries"] <= summary["requests"] // 2


def test_one_429_pauses_every_sender(segbill, tmp_path: Path) -> None:
    with FakePlatform(api_key=KEY, retry_after=1, latency=0.02) as fake:
        fake.script(["429"])
        run, _summary = send(segbill, tmp_path, "lago", fake.url, jsonl(*messages(2000)), "--concurrency", "8")
        assert run.exit_code == 0
        requests = fake.requests("lago")
        throttled = next(r for r in requests if r.status == 429)
        during = [r for r in requests if throttled.at + 0.1 < r.at < throttled.at + 0.9]
        assert during == [], "a sender kept going while the platform asked everyone to wait"
        assert any(r.at >= throttled.at + 0.9 for r in requests)
        stored_once(fake, "lago", [f"m{i}" for i in range(2000)])


def test_chaos_everything_stored_exactly_once_nothing_transient_dead_lettered(segbill, tmp_path: Path) -> None:
    faults = {"503": 0.05, "429": 0.05, "reset": 0.02, "lost": 0.01}
    with FakePlatform(api_key=KEY, faults=faults, seed=7, retry_after=0) as fake:
        for target in ("lago", "hyperline"):
            data = jsonl(*messages(5000, prefix=target), {"type": "page"})
            run, summary = send(segbill, tmp_path, target, fake.url, data, "--batch-size", "50")
            assert run.exit_code == 0, run.stderr
            assert summary["delivered"] == 5000 and summary["dead_lettered"] == 0
            assert summary["retries"] > 0
            stored_once(fake, target, [f"{target}{i}" for i in range(5000)])
            assert not run.dead_letter.exists()


def test_a_missing_key_exits_2_naming_the_variable(segbill, tmp_path: Path) -> None:
    write(tmp_path / "in.jsonl", jsonl(*messages(1)))
    run = segbill("send", "in.jsonl", "--to", "hyperline", env={"HYPERLINE_API_KEY": ""})
    assert run.exit_code == 2
    assert "no API key for Hyperline: set HYPERLINE_API_KEY" in run.stderr


def test_a_batch_size_over_the_platform_limit_exits_2(segbill, tmp_path: Path) -> None:
    write(tmp_path / "in.jsonl", jsonl(*messages(1)))
    run = segbill("send", "in.jsonl", "--to", "lago", "--batch-size", "101", env={"LAGO_API_KEY": KEY})
    assert run.exit_code == 2 and "over Lago's limit of 100" in run.stderr


def test_plain_http_to_a_remote_host_warns_that_the_key_travels_unencrypted(segbill) -> None:
    run = segbill("send", "--to", "lago", "--api-url", "http://billing.example.com", input=b"", env={"LAGO_API_KEY": KEY})
    assert run.exit_code == 2  # empty input: nothing is sent anywhere
    assert "billing.example.com is reached over plain http: the API key travels unencrypted" in run.stderr
    assert KEY not in run.stderr

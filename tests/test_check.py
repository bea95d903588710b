"""`segbill check --to lago`: every event a send would deliver gets the verdict Lago's billing gives it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from segbill import check
from segbill.testing.fake_platform import FakePlatform

from .conftest import jsonl, track, write

KEY = "sk-check-do-not-print"
ALL_VERDICTS = {"billable", "unknown_code", "unknown_subscription", "before_start", "after_termination", "invoiced", "draft"}


def organization(fake: FakePlatform) -> None:
    """Every kind of subscription and invoice the verdicts depend on."""
    fake.add_billable_metric("api_calls")
    fake.add_billable_metric("seats", aggregation_type="unique_count_agg", field_name="seat_id")
    fake.add_subscription("acme-main", external_customer_id="acme", started_at="2024-01-01T00:00:00Z")
    fake.add_invoice("finalized", [("acme-main", "2024-01-01T00:00:00Z", "2024-01-31T23:59:59Z")])
    fake.add_invoice("draft", [("acme-main", "2024-02-01T00:00:00Z", "2024-02-29T23:59:59Z")])
    fake.add_invoice("voided", [("acme-main", "2024-03-01T00:00:00Z", "2024-03-31T23:59:59Z")])
    fake.add_subscription("late", external_customer_id="acme", started_at="2024-03-15T00:00:00Z")
    fake.add_subscription("pending", status="pending", started_at="2024-06-01T00:00:00Z")
    fake.add_subscription("canceled", status="canceled")
    fake.add_subscription("ended", status="terminated", started_at="2024-01-01T00:00:00Z", terminated_at="2024-03-10T00:00:00Z")
    # A plan change keeps the external id on a new subscription: both are that id's history.
    fake.add_subscription(
        "upgraded",
        external_customer_id="globex",
        status="terminated",
        started_at="2024-01-01T00:00:00Z",
        terminated_at="2024-02-15T00:00:00Z",
    )
    fake.add_subscription("upgraded", external_customer_id="globex", started_at="2024-02-15T00:00:00Z")


EXPECTED = {
    # (event name, userId, time) -> verdict
    ("api_calls", "acme-main", "2024-03-05T10:00:00.000Z"): "billable",  # in a voided invoice's period: not closed
    ("api_calls", "acme-main", "2024-04-01T00:00:00.000Z"): "billable",
    ("seats", "acme-main", "2024-01-15T00:00:00.000Z"): "invoiced",
    ("api_calls", "acme-main", "2024-01-31T23:59:59.999Z"): "invoiced",  # 23:59:59Z covers the whole second
    ("api_calls", "acme-main", "2024-02-01T00:00:00.000Z"): "draft",
    ("api_calls", "acme-main", "2024-02-29T23:59:59.999Z"): "draft",
    ("API Call", "acme-main", "2024-04-01T00:00:00.000Z"): "unknown_code",
    ("api_calls", "nobody", "2024-04-01T00:00:00.000Z"): "unknown_subscription",
    ("bogus", "nobody", "2024-04-01T00:00:00.000Z"): "unknown_code",  # the first rule that applies
    ("api_calls", "late", "2024-03-14T23:59:59.999Z"): "before_start",
    ("api_calls", "late", "2024-03-15T00:00:00.000Z"): "billable",
    ("api_calls", "pending", "2024-07-01T00:00:00.000Z"): "before_start",
    ("api_calls", "canceled", "2024-07-01T00:00:00.000Z"): "before_start",
    ("api_calls", "ended", "2024-03-09T23:59:59.999Z"): "billable",
    ("api_calls", "ended", "2024-03-10T00:00:00.000Z"): "billable",  # at terminated_at: billed
    ("api_calls", "ended", "2024-03-10T00:00:00.001Z"): "after_termination",
    ("api_calls", "upgraded", "2024-02-01T00:00:00.000Z"): "billable",
    ("api_calls", "upgraded", "2024-03-01T00:00:00.000Z"): "billable",
    ("api_calls", "acme-main", "2023-12-31T23:59:59.999Z"): "before_start",
}


def messages(rows: dict[tuple[str, str, str], str] = EXPECTED, prefix: str = "m") -> list[dict[str, Any]]:
    return [track(messageId=f"{prefix}{i}", event=name, userId=user, timestamp=at) for i, (name, user, at) in enumerate(rows)]


@pytest.fixture
def fake() -> Iterator[FakePlatform]:
    with FakePlatform(api_key=KEY) as platform:
        organization(platform)
        yield platform


def env(fake: FakePlatform) -> dict[str, str]:
    return {"LAGO_API_URL": fake.url, "LAGO_API_KEY": KEY}


def check_json(segbill, fake: FakePlatform, *args: str) -> tuple[int, dict[str, Any]]:
    run = segbill("check", *args, "--to", "lago", "--json", env=env(fake))
    assert KEY not in run.stdout + run.stderr
    return run.exit_code, orjson.loads(run.stdout)


def test_every_event_gets_the_first_verdict_that_applies_and_nothing_is_sent(segbill, fake: FakePlatform, tmp_path: Path) -> None:
    wanted: dict[str, int] = dict.fromkeys(ALL_VERDICTS, 0)
    for verdict in EXPECTED.values():
        wanted[verdict] += 1
    for (name, user, at), verdict in EXPECTED.items():  # one event at a time: each verdict is its own
        path = write(tmp_path / "one.jsonl", jsonl(track(messageId="x", event=name, userId=user, timestamp=at)))
        code, result = check_json(segbill, fake, str(path))
        assert result["verdicts"] == {**dict.fromkeys(ALL_VERDICTS, 0), verdict: 1}, (name, user, at)
    path = write(tmp_path / "all.jsonl", jsonl(*messages(), {"type": "identify", "userId": "u"}) + b"not json\n")
    code, result = check_json(segbill, fake, str(path))
    assert result["verdicts"] == wanted and set(result["verdicts"]) == ALL_VERDICTS
    assert result["checked"] == len(EXPECTED) and result["not_billed"] == len(EXPECTED) - wanted["billable"] - wanted["draft"]
    assert result["read"] == len(EXPECTED) + 2 and result["skipped_by_reason"] == {"identify": 1} and result["dead_lettered"] == 1
    assert code == 1
    assert fake.counts("lago") == {} and all(r.method == "GET" for r in fake.requests("lago"))
    assert not Path("segbill-dead-letter.jsonl").exists()


def test_a_subscriptions_ends_are_judged_to_the_millisecond_as_lago_bills_them(
    segbill, fake: FakePlatform, tmp_path: Path
) -> None:
    """lago-api bills a subscription's events from started_at (floored to the ms, and shown to
    the ms) to terminated_at, both included. terminated_at is shown to the second: an event at
    that second is billed; one later in the same second is billed only if the termination's
    hidden fraction (here .750) reaches it, which check cannot see, so it never calls it billable."""
    fake.add_subscription("precise", started_at="2024-05-01T10:01:09.666789Z", status="terminated",
                          terminated_at="2024-05-20T08:00:00.750123Z")  # fmt: skip
    rows = {
        "2024-05-01T10:01:09.665Z": "before_start",
        "2024-05-01T10:01:09.666Z": "billable",  # started_at, to the ms
        "2024-05-20T07:59:59.999Z": "billable",
        "2024-05-20T08:00:00.000Z": "billable",  # terminated_at as Lago shows it
        "2024-05-20T08:00:00.001Z": "after_termination",  # Lago bills it (.750): check cannot know
        "2024-05-20T08:00:01.000Z": "after_termination",
    }
    for at, verdict in rows.items():
        path = write(tmp_path / "one.jsonl", jsonl(track(messageId="x", event="api_calls", userId="precise", timestamp=at)))
        _, result = check_json(segbill, fake, str(path))
        assert result["verdicts"] == {**dict.fromkeys(ALL_VERDICTS, 0), verdict: 1}, at


def test_the_top_groups_say_why(segbill, fake: FakePlatform, tmp_path: Path) -> None:
    rows = {("API Call", "acme-main", f"2024-04-0{day}T00:00:00.000Z"): "unknown_code" for day in range(1, 4)}
    path = write(tmp_path / "e.jsonl", jsonl(*messages(rows)))
    _, result = check_json(segbill, fake, str(path))
    assert result["top"] == {
        "unknown_code": [
            {
                "code": "API Call",
                "external_subscription_id": "acme-main",
                "events": 3,
                "first": "2024-04-01T00:00:00.000Z",
                "last": "2024-04-03T00:00:00.000Z",
            }
        ]
    }


def test_a_record_send_would_dead_letter_is_not_billed_either(segbill, fake: FakePlatform, tmp_path: Path) -> None:
    """Every event bills, but one record has no customer: a send of this input exits 1 and
    bills that record never, so check says so with its exit status too."""
    rows = {key: verdict for key, verdict in EXPECTED.items() if verdict in ("billable", "draft")}
    path = write(tmp_path / "e.jsonl", jsonl(*messages(rows), track(userId=None, messageId="no-customer")))
    run = segbill("check", str(path), "--to", "lago", "--json", env=env(fake))
    result = orjson.loads(run.stdout)
    assert (result["not_billed"], result["checked"], result["dead_lettered"]) == (0, len(rows), 1)
    assert run.exit_code == 1


def test_exit_0_when_everything_bills_and_the_human_report(segbill, fake: FakePlatform, tmp_path: Path) -> None:
    rows = {key: verdict for key, verdict in EXPECTED.items() if verdict in ("billable", "draft")}
    path = write(tmp_path / "e.jsonl", jsonl(*messages(rows)))
    run = segbill("check", str(path), "--to", "lago", env=env(fake))
    assert run.exit_code == 0, run.stdout + run.stderr
    assert f"segbill check against lago: {len(rows)} events a send would deliver" in run.stdout
    assert "billable" in run.stdout and "every event will be billed" in run.stdout
    bad = write(tmp_path / "bad.jsonl", jsonl(*messages()))
    run = segbill("check", str(bad), "--to", "lago", env=env(fake))
    assert run.exit_code == 1
    assert "API Call on acme-main: 1 at 2024-04-01T00:00:00.000Z" in run.stdout
    assert "in a period of a finalized invoice" in run.stdout


def test_the_same_selection_as_send(segbill, fake: FakePlatform, tmp_path: Path) -> None:
    """Mapping, filters, repeats and --since/--until decide what is checked, exactly as for send."""
    path = write(tmp_path / "e.jsonl", jsonl(*messages(), *messages(prefix="m")))  # every message twice
    sent = segbill(
        "send", str(path), "--to", "lago", "--dry-run", "--since", "2024-02-01", "--until", "2024-04-01", "--event", "api_*"
    )
    _, result = check_json(segbill, fake, str(path), "--since", "2024-02-01", "--until", "2024-04-01", "--event", "api_*")
    assert result["checked"] == len(sent.events) > 0
    assert result["skipped_by_reason"]["duplicate"] == result["checked"]  # repeats are found among the selected
    config = write(tmp_path / "segbill.toml", b'[lago.events]\nrename = { "API Call" = "api_calls" }\n')
    _, renamed = check_json(segbill, fake, str(path), "--config", str(config))
    assert renamed["verdicts"]["unknown_code"] == 1  # only "bogus" is left unknown


def test_reads_follow_subscriptions_and_invoices_not_events(segbill, fake: FakePlatform, tmp_path: Path) -> None:
    for i in range(150):  # more than a page of subscriptions
        fake.add_subscription(f"filler-{i}")
    for day in range(1, 102):  # more than a page of invoices for one customer
        fake.add_invoice(
            "finalized",
            [
                (
                    "acme-main",
                    f"2023-0{1 + day // 30}-{1 + day % 28:02d}T00:00:00Z",
                    f"2023-0{1 + day // 30}-{1 + day % 28:02d}T23:59:59Z",
                )
            ],
        )
    small = write(tmp_path / "small.jsonl", jsonl(*messages()))
    _, first = check_json(segbill, fake, str(small))
    many = {
        (name, user, at.replace(":00.000Z", f":{s:02d}.{ms:03d}Z")): v
        for (name, user, at), v in EXPECTED.items()
        for s in range(0, 60, 7)
        for ms in (1, 2)
    }
    large = write(tmp_path / "large.jsonl", jsonl(*messages(many)))
    _, second = check_json(segbill, fake, str(large))
    assert second["checked"] > 10 * first["checked"]
    assert second["verdicts"]["invoiced"] > first["verdicts"]["invoiced"] > 0
    # metrics 1 + subscriptions 2 pages + acme's invoices (2 pages, 103 draft or finalized shown)
    # + globex's and ended's (1 page each); the others' verdicts need no invoice
    assert first["requests"] == second["requests"] == 1 + 2 + 2 + 103 + 1 + 1
    paths = [r.path.split("?")[0] for r in fake.requests("lago")]
    assert paths.count("/api/v1/events") == 0


def test_reads_are_paced_under_the_announced_limit(segbill, tmp_path: Path) -> None:
    with FakePlatform(api_key=KEY, lago_read_rate_limit=40) as fake:
        organization(fake)
        for day in range(1, 60):
            fake.add_invoice(
                "finalized", [("acme-main", f"2023-03-{1 + day % 28:02d}T00:00:00Z", f"2023-03-{1 + day % 28:02d}T23:59:59Z")]
            )
        path = write(tmp_path / "e.jsonl", jsonl(*messages()))
        code, result = check_json(segbill, fake, str(path))
        assert code == 1 and result["requests"] == len(fake.requests("lago")) == 1 + 1 + 1 + 61 + 1 + 1
        assert fake.throttled("lago") == 0 and result["retries"] == 0


def test_a_429_is_waited_out_and_a_bad_key_stops_with_exit_3(segbill, fake: FakePlatform, tmp_path: Path) -> None:
    path = write(tmp_path / "e.jsonl", jsonl(*messages()))
    fake.retry_after = 0
    fake.script(["429", "503"])
    code, result = check_json(segbill, fake, str(path))
    assert code == 1 and result["retries"] == 2 and result["checked"] == len(EXPECTED) and result["interrupted"] is False
    before = len(fake.requests("lago"))
    run = segbill("check", str(path), "--to", "lago", env={"LAGO_API_URL": fake.url, "LAGO_API_KEY": "wrong"})
    assert run.exit_code == 3 and run.stdout == "" and "wrong" not in run.stderr
    assert run.stderr.splitlines() == [
        f"segbill: error: check could not read Lago ({fake.url[7:]} rejected the API key (HTTP 401 for /api/v1/billable_metrics)); nothing was checked."
    ]
    assert len(fake.requests("lago")) == before + 1  # the first read is refused: no other is made
    run = segbill("check", str(path), "--to", "lago", "--json", env={"LAGO_API_URL": fake.url, "LAGO_API_KEY": "wrong"})
    stopped = orjson.loads(run.stdout)
    assert run.exit_code == 3 and stopped["stopped"] and (stopped["read"], stopped["checked"], stopped["not_billed"]) == (0, 0, 0)
    assert stopped["interrupted"] is False
    run = segbill("check", str(path), "--to", "lago", env={"LAGO_API_URL": fake.url, "LAGO_API_KEY": ""})
    assert run.exit_code == 2 and "no API key for Lago: set LAGO_API_KEY" in run.stderr


def test_an_empty_input_is_not_a_pass(segbill, fake: FakePlatform, tmp_path: Path) -> None:
    """No event checked is never "every event will be billed"; an input with no record at all
    exits 2 with the error line send and inspect give (it exited 2 in silence)."""
    path = write(tmp_path / "e.jsonl", jsonl({"type": "identify", "userId": "u"}))
    run = segbill("check", str(path), "--to", "lago", env=env(fake))
    assert run.exit_code == 1 and "no event in the input would be sent" in run.stdout
    assert "will be billed" not in run.stdout
    empty = write(tmp_path / "empty.jsonl", b"")
    for command in ("check", "reconcile"):
        for json in ([], ["--json"]):
            run = segbill(command, str(empty), "--to", "lago", *json, env=env(fake))
            assert run.exit_code == 2  # as send
            assert run.stderr == f"segbill: error: no records in {empty}: the input is empty.\n"
            assert "will be billed" not in run.stdout
            if json:
                assert orjson.loads(run.stdout)["exit_code"] == 2
    assert segbill("reconcile", str(path), "--to", "lago", env=env(fake)).exit_code == 1


def test_send_check_refuses_to_send_what_would_not_be_billed(segbill, fake: FakePlatform, tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.jsonl", jsonl(*messages()))
    run = segbill("send", str(bad), "--to", "lago", "--check", env=env(fake))
    assert run.exit_code == 1
    assert f"--check: 10 of {len(EXPECTED)} events would not be billed (above); nothing was sent." in run.stderr
    assert "unknown_subscription" in run.stderr and KEY not in run.stdout + run.stderr
    assert fake.counts("lago") == {} and not any(r.method == "POST" for r in fake.requests("lago"))
    run = segbill("send", str(bad), "--to", "lago", "--check", "--json", env=env(fake))  # a cron logs why
    assert run.exit_code == 1 and "10 of" in run.stderr and fake.counts("lago") == {}
    [line] = run.stdout.splitlines()
    assert orjson.loads(line)["not_billed"] == 10 and orjson.loads(line)["exit_code"] == 1
    good_rows = {key: verdict for key, verdict in EXPECTED.items() if verdict in ("billable", "draft")}
    good = write(tmp_path / "good.jsonl", jsonl(*messages(good_rows)))
    run = segbill("send", str(good), "--to", "lago", "--check", "--state", "state.db", env=env(fake))
    assert run.exit_code == 0, run.stderr
    assert f"--check: all {len(good_rows)} events will be billed (2 once a draft invoice is refreshed); sending." in run.stderr
    assert len(fake.counts("lago")) == len(good_rows)
    # A rerun with the state checks only what it would still send: nothing, so nothing is refused.
    both = write(
        tmp_path / "both.jsonl",
        jsonl(*messages(good_rows), *messages({("bogus", "x", "2024-04-01T00:00:00Z"): ""}, prefix="new")),
    )
    run = segbill("send", str(good), "--to", "lago", "--check", "--state", "state.db", env=env(fake))
    assert run.exit_code == 0 and "--check: no event to check: this send has nothing new to deliver." in run.stderr
    run = segbill("send", str(both), "--to", "lago", "--check", "--state", "state.db", env=env(fake))
    assert run.exit_code == 1 and "--check: 1 of 1 events would not be billed" in run.stderr


def test_send_check_needs_a_lago_send_of_files(segbill, fake: FakePlatform, tmp_path: Path) -> None:
    path = write(tmp_path / "e.jsonl", jsonl(track()))
    assert segbill("send", str(path), "--to", "lago", "--check", "--dry-run").exit_code == 2
    run = segbill("send", "-", "--to", "lago", "--check", input=jsonl(track()), env=env(fake))
    assert run.exit_code == 2 and "give files or folders, not stdin" in run.stderr


def test_a_dry_run_points_at_check(segbill, tmp_path: Path) -> None:
    path = write(tmp_path / "e.jsonl", jsonl(track()))
    run = segbill("send", str(path), "--to", "lago", "--dry-run")
    assert "segbill check with the same options" in run.stderr
    assert "segbill check" not in segbill("send", str(path), "--to", "hyperline", "--dry-run").stderr


def many_customers(fake: FakePlatform, count: int) -> list[dict[str, Any]]:
    """`count` customers, each with a finalized January: every one's first event costs invoice
    reads. Their February events interleave, with records a send would skip or dead-letter."""
    fake.add_billable_metric("api_calls")
    for i in range(count):
        fake.add_subscription(f"sub-{i}", external_customer_id=f"cust-{i}", started_at="2024-01-01T00:00:00Z")
        fake.add_invoice("finalized", [(f"sub-{i}", "2024-01-01T00:00:00Z", "2024-01-31T23:59:59Z")])
    records: list[dict[str, Any]] = []
    for j in range(10 * count):
        records.append(
            track(
                messageId=f"e{j}",
                event="api_calls",
                userId=f"sub-{j % count}",
                timestamp=f"2024-02-{1 + j % 28:02d}T00:00:00.000Z",
            )
        )
        if j % 5 == 0:
            records += [
                {"type": "identify", "userId": f"sub-{j % count}"},
                track(messageId=f"anon{j}", userId=None, anonymousId="a"),
            ]
    return records


def check_in_subprocess(
    fake: FakePlatform, path: Path, *args: str, after: int, then: Callable[[subprocess.Popen], None]
) -> tuple[int, str]:
    """Run `segbill check` as a user would and, once it has made `after` reads, act. It starts
    as a shell's background job does, with SIGINT ignored: a signal must still stop it."""
    start = len(fake.requests("lago"))
    process = subprocess.Popen(
        [sys.executable, "-m", "segbill", "check", str(path), "--to", "lago", *args],
        env={**os.environ, **env(fake)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    while len(fake.requests("lago")) < start + after:
        assert process.poll() is None, process.communicate()
        threading.Event().wait(0.01)
    then(process)
    stdout, stderr = process.communicate(timeout=60)
    assert b"Traceback" not in stderr and KEY.encode() not in stdout + stderr, stderr
    return process.returncode, stdout.decode()


def adds_up(result: dict[str, Any]) -> bool:
    return result["read"] == result["checked"] + result["skipped"] + result["dead_lettered"] + result["not_attempted"]


def test_an_interrupted_check_counts_every_record_read_and_claims_nothing(tmp_path: Path) -> None:
    """SIGINT lands while customers' invoices are read (each answer slowed): what was read is
    checked, skipped, dead-lettered or not checked; no verdict is claimed for the rest."""
    with FakePlatform(api_key=KEY, latency=0.1) as fake:
        records = many_customers(fake, 40)
        path = write(tmp_path / "e.jsonl", jsonl(*records))
        code, stdout = check_in_subprocess(fake, path, "--json", after=6, then=lambda process: process.send_signal(signal.SIGINT))
        result = orjson.loads(stdout)
        assert code == 130 and result["interrupted"] is True and result["exit_code"] == 130 and result["stopped"] is None
        assert adds_up(result) and 0 < result["checked"] < 400 and result["verdicts"]["billable"] == result["checked"]
        assert result["dead_lettered_by_reason"] == {"missing_customer": result["dead_lettered"]}
        code, stdout = check_in_subprocess(fake, path, after=6, then=lambda process: process.send_signal(signal.SIGTERM))
        assert code == 130 and "every event will be billed" not in stdout
        assert (
            "interrupted: INCOMPLETE" in stdout
            and "\n  not checked " in stdout
            and "of the events checked; the rest is unknown" in stdout
        )


def test_a_ctrl_c_right_after_a_verdict_counts_that_event_once(
    segbill, fake: FakePlatform, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """SIGINT arrives just as the 1,000th event gets its verdict; asyncio delivers it at the
    check's next await. That event was counted checked and also not checked (read + 1) when the
    await came right after the verdict; now it is checked, and only the events after it are not."""
    signalled_at = check.YIELD_EVERY
    add = check.CheckResult.add

    def add_then_signal(result: check.CheckResult, *args: Any) -> None:
        add(result, *args)
        if result.checked == signalled_at:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(check.CheckResult, "add", add_then_signal)
    rows = [
        track(messageId=f"e{i}", event="api_calls", userId="acme-main", timestamp="2024-04-01T00:00:00.000Z") for i in range(2500)
    ]
    path = write(tmp_path / "e.jsonl", jsonl(*rows))
    code, result = check_json(segbill, fake, str(path))
    assert code == 130 and result["interrupted"] is True
    assert result["checked"] == signalled_at and result["verdicts"]["billable"] == signalled_at
    assert adds_up(result) and result["not_attempted"] == result["read"] - signalled_at > 0


def test_a_read_failing_mid_check_stops_with_exit_3_and_counts_that_add_up(tmp_path: Path) -> None:
    """After some customers' invoices were read, every read is answered 503 (no retry allowed)."""
    with FakePlatform(api_key=KEY, latency=0.05) as fake:
        records = many_customers(fake, 40)
        path = write(tmp_path / "e.jsonl", jsonl(*records))

        def fail_reads(_: subprocess.Popen) -> None:
            fake.faults = {"503": 1.0}

        code, stdout = check_in_subprocess(fake, path, "--max-retries", "0", after=6, then=fail_reads)
        assert code == 3 and "still failed after 0 retries" in stdout and "stopped early" in stdout
        assert "every event will be billed" not in stdout and "INCOMPLETE" in stdout
        assert (
            "records send would dead-letter (missing_customer " in stdout and "unreadable" not in stdout
        )  # named as send names them
        fake.faults = {}
        code, stdout = check_in_subprocess(fake, path, "--max-retries", "0", "--json", after=6, then=fail_reads)
        result = orjson.loads(stdout)
        assert code == 3 and result["stopped"] and adds_up(result) and 0 < result["checked"] < 400

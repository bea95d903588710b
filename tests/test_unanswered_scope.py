"""An event whose request went unanswered is resent only to where it went: the same key for
another subscription (Lago) or customer (Hyperline) is a second event on the platform, billed
beside the first, so it is a duplicate, as in one run over everything; the same event again is
resent, and the platform absorbs it."""

from __future__ import annotations

import re
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import orjson
import pytest

from segbill.segment import parse_time
from segbill.state import Claim, State
from segbill.testing.fake_platform import FakePlatform

from .conftest import KEY, jsonl, process_env, send, track, write

pytestmark = pytest.mark.usefixtures("fast_backoff")

TIME = "2024-01-05T10:00:00.000Z"
# Each platform, and the store of the fake Lago (the fake Hyperline has one way to store).
PLATFORMS = [("lago", "postgres"), ("lago", "clickhouse"), ("hyperline", "postgres")]
IDS = ["lago-postgres", "lago-clickhouse", "hyperline"]


def api_call(customer: str, message_id: str = "m1", timestamp: str = TIME) -> dict[str, Any]:
    return track(event="api_call", userId=customer, messageId=message_id, timestamp=timestamp)


def stored(fake: FakePlatform, to: str) -> list[tuple[str, str]]:
    """(customer or subscription, idempotency key) of every event the platform holds."""
    if to == "lago":
        return sorted((event["external_subscription_id"], event["transaction_id"]) for event in fake.events("lago"))
    return sorted((event["customer_id"], event["record"]["id"]) for event in fake.events("hyperline"))


def assert_absorbed(fake: FakePlatform, to: str, store: str, summary: dict[str, Any], keys: list[str]) -> None:
    """`keys` were resent, and the platform holds each once: Lago's Postgres store answered that
    it holds them already; ClickHouse and Hyperline replaced each with itself."""
    writes = fake.writes(to)
    if (to, store) == ("lago", "postgres"):
        assert summary["already_delivered"] == len(keys) and all(writes[key] == 1 for key in keys)
    else:
        assert summary["already_delivered"] == 0 and all(writes[key] == 2 for key in keys)


def others(tmp_path: Path, *names: str) -> list[str]:
    """Files of new events (one customer each), so a run reads several files (`--jobs`)."""
    for name in names:
        write(tmp_path / name, jsonl(*(api_call(f"cust-{name[0]}", f"{name[0]}{i}") for i in range(3))))
    return list(names)


@pytest.mark.parametrize("jobs", ["1", "3"])
@pytest.mark.parametrize(("to", "store"), PLATFORMS, ids=IDS)
def test_a_lost_answer_is_resent_for_its_customer_and_never_for_another(
    tmp_path: Path, segbill, to: str, store: str, jobs: str
) -> None:
    """cust-A's m1 is stored, its answer lost (with the rest of its request). A later run reads
    cust-B's m1: a duplicate (one run over both bills cust-A's alone), not a resend that bills
    cust-B too. A dry run says so first; replaying the dead letters resends cust-A's m1 and the
    rest, and the platform absorbs them."""
    write(tmp_path / "a.jsonl", jsonl(api_call("cust-A")))
    write(tmp_path / "b.jsonl", jsonl(api_call("cust-B")))
    with FakePlatform(api_key=KEY, lago_store=store, retry_after=0) as fake:
        fake.script(["lost"])
        files = ["a.jsonl", *others(tmp_path, "g.jsonl")]
        lost, summary = send(segbill, fake.url, *files, "--state", "s.db", "--max-retries", "0", "--jobs", jobs, to=to)
        assert lost.exit_code == 1 and summary is not None and summary["dead_lettered_by_reason"] == {"unreachable": 4}
        assert stored(fake, to) == [("cust-A", "m1"), *(("cust-g", f"g{i}") for i in range(3))]

        preview = segbill(
            "send", "b.jsonl", "dead.jsonl", "--to", to, "--dry-run", "--state", "s.db", "--jobs", jobs, dead_letter="x.jsonl"
        )
        customers = [event.get("customer_id", event.get("external_subscription_id")) for event in preview.events]
        assert customers == ["cust-A", "cust-g", "cust-g", "cust-g"]

        files = ["b.jsonl", *others(tmp_path, "c.jsonl", "d.jsonl")]
        other, summary = send(segbill, fake.url, *files, "--state", "s.db", "--jobs", jobs, to=to)
        assert other.exit_code == 0 and summary is not None
        assert summary["skipped_by_reason"] == {"duplicate": 1} and summary["delivered"] == 6
        assert [key for key in stored(fake, to) if key[1] == "m1"] == [("cust-A", "m1")]

        (tmp_path / "dead.jsonl").rename(tmp_path / "retry.jsonl")
        files = ["retry.jsonl", *others(tmp_path, "e.jsonl", "f.jsonl")]
        replay, summary = send(segbill, fake.url, *files, "--state", "s.db", "--jobs", jobs, to=to)
        assert replay.exit_code == 0 and summary is not None and summary["delivered"] == 10
        assert [key for key in stored(fake, to) if key[1] == "m1"] == [("cust-A", "m1")]
        assert_absorbed(fake, to, store, summary, ["m1", "g0", "g1", "g2"])


@pytest.mark.parametrize(("to", "store"), PLATFORMS, ids=IDS)
def test_a_send_killed_with_its_request_in_flight_resends_only_for_that_customer(tmp_path: Path, to: str, store: str) -> None:
    write(tmp_path / "a.jsonl", jsonl(api_call("cust-A")))
    write(tmp_path / "b.jsonl", jsonl(api_call("cust-B")))
    command = [sys.executable, "-m", "segbill", "send", "--to", to, "--quiet", "--json", "--state", "s.db"]
    with FakePlatform(api_key=KEY, lago_store=store, latency=60) as fake:
        env = process_env(fake.url)
        process = subprocess.Popen([*command, "a.jsonl"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert fake.wait_until(lambda: stored(fake, to) == [("cust-A", "m1")])  # stored, its answer a minute away
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
        fake.latency = 0
        other = subprocess.run([*command, "b.jsonl"], cwd=tmp_path, env=env, capture_output=True, check=False)
        assert other.returncode == 0, other.stderr
        assert orjson.loads(other.stdout)["skipped_by_reason"] == {"duplicate": 1}
        assert stored(fake, to) == [("cust-A", "m1")]
        again = subprocess.run([*command, "a.jsonl"], cwd=tmp_path, env=env, capture_output=True, check=False)
        assert again.returncode == 0, again.stderr
        assert stored(fake, to) == [("cust-A", "m1")]
        assert_absorbed(fake, to, store, orjson.loads(again.stdout), ["m1"])


@pytest.mark.parametrize(("to", "store"), PLATFORMS, ids=IDS)
def test_following_the_outage_advice_word_for_word_bills_each_message_once(tmp_path: Path, segbill, to: str, store: str) -> None:
    """Three requests stored with their answers lost stop the run; the same command again, then
    the dead-letter replay it advises: cust-B's copy of m1, read after the stop, is never billed."""
    messages = [api_call("cust-A", f"m{i}", f"2024-01-05T10:00:0{i}.000Z") for i in range(1, 5)]
    write(tmp_path / "c.jsonl", jsonl(*messages, api_call("cust-B", "m1", "2024-01-05T10:00:01.000Z")))
    options = ("--state", "s.db", "--max-retries", "0", "--batch-size", "1", "--concurrency", "1")
    with FakePlatform(api_key=KEY, lago_store=store, retry_after=0) as fake:
        fake.script(["lost"] * 3)
        stopped, _ = send(segbill, fake.url, "c.jsonl", *options, to=to, human=True)
        assert stopped.exit_code == 3 and "unreachable 3" in stopped.stderr
        advice = re.search(r"mv (\S+) (\S+) && segbill send \S+ --to (\S+) --state s\.db \.\.\.", stopped.stderr)
        assert advice is not None and advice[1] == "dead.jsonl" and advice[3] == to
        rerun, _ = send(segbill, fake.url, "c.jsonl", *options, to=to)
        assert rerun.exit_code == 0
        (tmp_path / advice[1]).rename(tmp_path / advice[2])
        replay, _ = send(segbill, fake.url, advice[2], *options, to=to)
        assert replay.exit_code == 0
        assert stored(fake, to) == [("cust-A", f"m{i}") for i in range(1, 5)]
    with FakePlatform(api_key=KEY, lago_store=store) as clean:  # one run over everything bills the same
        send(segbill, clean.url, "c.jsonl", "--dead-letter", "clean-dead.jsonl", to=to)
        assert stored(clean, to) == [("cust-A", f"m{i}") for i in range(1, 5)]


def test_a_state_from_before_scopes_were_kept_resends_on_key_and_time_and_keeps_them_from_now_on(tmp_path: Path, segbill) -> None:
    """Its unanswered rows say nothing of where they went: a copy with their key and time is
    resent, as before. A send adds the column (a dry run reads it as empty, writing nothing),
    and the requests it leaves unanswered keep theirs."""
    with closing(sqlite3.connect(tmp_path / "s.db")) as db:
        db.execute(
            "CREATE TABLE ledger (target TEXT NOT NULL, key TEXT NOT NULL, millis INTEGER NOT NULL,"
            " delivered INTEGER NOT NULL, PRIMARY KEY (target, key)) WITHOUT ROWID"
        )
        db.execute("INSERT INTO ledger VALUES ('lago', 'm0', ?, -7)", (parse_time(TIME),))
        db.commit()
    write(tmp_path / "old.jsonl", jsonl(api_call("cust-B", "m0")))
    before = (tmp_path / "s.db").read_bytes()
    preview = segbill("send", "old.jsonl", "--to", "lago", "--dry-run", "--state", "s.db")
    assert [event["transaction_id"] for event in preview.events] == ["m0"]
    assert (tmp_path / "s.db").read_bytes() == before
    write(tmp_path / "a.jsonl", jsonl(api_call("cust-A")))
    write(tmp_path / "b.jsonl", jsonl(api_call("cust-B")))
    with FakePlatform(api_key=KEY, retry_after=0) as fake:
        _, summary = send(segbill, fake.url, "old.jsonl", "--state", "s.db")
        assert summary is not None and summary["delivered"] == 1
        fake.script(["lost"])
        send(segbill, fake.url, "a.jsonl", "--state", "s.db", "--max-retries", "0")
        _, summary = send(segbill, fake.url, "b.jsonl", "--state", "s.db")
        assert summary is not None and summary["skipped_by_reason"] == {"duplicate": 1}
        assert stored(fake, "lago") == [("cust-A", "m1"), ("cust-B", "m0")]


def test_the_ledger_resends_only_in_the_scope_a_request_went_to(tmp_path: Path, claim_method: None) -> None:
    """Both ways of claiming, and a dry run's claims in memory, give the same verdicts: a copy
    in the same scope is resent once, in another it is a repeat and leaves the resend to a
    later copy in the same, and a row kept without a scope is resent on key and time."""
    ledger = State(tmp_path / "s.db", "lago")
    ledger.claim([("a", 1), ("b", 2)], scopes=[b"scope-A1", b"scope-A2"])
    ledger.sending(["a", "b"])
    ledger.close()
    with closing(sqlite3.connect(tmp_path / "s.db")) as db, db:
        db.execute("UPDATE ledger SET scope = NULL WHERE key = 'b'")  # as a state from before scopes were kept
    for read_only in (False, True):
        run = State(tmp_path / "s.db", "lago", read_only=read_only)
        verdicts = run.claim([("a", 1), ("a", 1), ("b", 2)], scopes=[b"scope-B1", b"scope-A1", b"scope-B2"])
        assert verdicts == [Claim.DUPLICATE, Claim.RESEND, Claim.RESEND]
        assert run.claim([("a", 1)], scopes=[b"scope-A1"]) == [Claim.DUPLICATE]
        run.close(save=False)

"""A window (--since/--until) or a shard (--shard K/N) never changes which copy of a repeated
messageId is billed: every record that converts to an event claims its key, in input order,
whatever the selection, so consecutive windows (or the N shards) together are exactly one run
over everything, on Lago's ClickHouse store (where a shifted repeat would bill twice) too."""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import orjson
import pytest

from segbill.pipeline import shard_of
from segbill.segment import iso_millis, parse_time
from segbill.testing.fake_platform import FakePlatform

from .conftest import KEY, jsonl, platform_env, process_env, send, track, write

pytestmark = pytest.mark.usefixtures("fast_backoff")

BOUNDARY = parse_time("2024-02-01T00:00:00Z") or 0
HOUR = 3_600_000
# Consecutive windows that cover everything, the first boundary at `BOUNDARY`.
WINDOWS = [("--until", "2024-02-01"), ("--since", "2024-02-01", "--until", "2024-02-02"), ("--since", "2024-02-02")]
# The new-user trial: a Segment repeat of m1 with a time shifted across the month's boundary.
TRIAL = [
    track(messageId="m1", userId="cus_1", timestamp="2024-01-31T23:59:59.900Z"),
    track(messageId="m2", userId="cus_1", timestamp="2024-02-01T10:00:00Z"),
    track(messageId="m1", userId="cus_1", timestamp="2024-02-01T00:00:00.100Z"),
]


def straddling_export(folder: Path, files: int = 3, count: int = 240, seed: int = 5) -> None:
    """Messages within a day of `BOUNDARY` and of the next midnight, a third repeated later (in
    this file or a later one): at the same time (a duplicate), a few ms to hours away (across a
    boundary or not), or for another customer (across shards), the trial's three first."""
    rng = random.Random(seed)
    originals = [
        track(
            messageId=f"msg-{i:04d}",
            userId=f"cus_{rng.randrange(12)}",
            timestamp=iso_millis(BOUNDARY + rng.randrange(-24 * HOUR, 48 * HOUR)),
            properties={"n": i},
        )
        for i in range(count)
    ]
    parts: list[list[dict[str, Any]]] = [[] for _ in range(files)]
    parts[0] += TRIAL
    for at, message in enumerate(originals):
        part = at * files // count
        parts[part].append(message)
        if rng.random() < 0.35:
            repeat = dict(message)
            kind = rng.choice(["same", "ms", "hours", "customer"])
            millis = parse_time(message["timestamp"]) or 0
            if kind == "ms":
                repeat["timestamp"] = iso_millis(millis + rng.choice([-1, 1]) * rng.randrange(1, 500))
            elif kind == "hours":
                repeat["timestamp"] = iso_millis(millis + rng.choice([-1, 1]) * rng.randrange(1, 30) * HOUR)
            elif kind == "customer":
                repeat["userId"] = f"cus_{rng.randrange(12, 24)}"
            parts[rng.randrange(part, files)].append(repeat)
    for number, part in enumerate(parts):
        write(folder / f"part-{number}.jsonl", jsonl(*part))


def stored(fake: FakePlatform) -> list[tuple[Any, ...]]:
    """What Lago holds, each stored event as (transaction id, subscription, code, timestamp)."""
    return sorted(
        (event["transaction_id"], event["external_subscription_id"], event["code"], event["timestamp"])
        for event in fake.events("lago")
    )


def ledger(path: Path) -> list[tuple[str, int]]:
    """(key, delivered) of each row of a state's ledger."""
    with closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT key, delivered FROM ledger ORDER BY key").fetchall()


def everything(segbill, inputs: str, *args: str) -> tuple[list[tuple[Any, ...]], dict[str, Any]]:
    """The reference: one run over everything, to a ClickHouse store of its own."""
    with FakePlatform(api_key=KEY, lago_store="clickhouse") as alone:
        _, summary = send(segbill, alone.url, inputs, *args)
        assert summary is not None and summary["delivered"] > 0
        return stored(alone), summary


def test_the_trials_consecutive_windows_bill_the_repeat_once(segbill, tmp_path: Path) -> None:
    """The second window's m1 is a shifted repeat of the first window's: skipped with the
    notice, as one run over everything skips it (it used to be sent: ClickHouse billed m1 twice)."""
    write(tmp_path / "ex.jsonl", jsonl(*TRIAL))
    with FakePlatform(api_key=KEY, lago_store="clickhouse") as fake:
        _, january = send(segbill, fake.url, "ex.jsonl", "--since", "2024-01-01", "--until", "2024-02-01")
        run, _ = send(segbill, fake.url, "ex.jsonl", "--since", "2024-02-01", "--until", "2024-03-01", human=True)
        assert january is not None and january["delivered"] == 1
        assert january["skipped_by_reason"] == {"after_until": 2}
        assert run.exit_code == 0
        assert "ex.jsonl:3: m1 was already sent with another event time; not sent again" in run.stderr
        assert "skipped          2  (before_since 1, duplicate_shifted 1)" in run.stderr
        assert fake.counts("lago") == {"m1": 1, "m2": 1}
        assert stored(fake) == everything(segbill, "ex.jsonl")[0]


@pytest.mark.usefixtures("claim_method")
@pytest.mark.parametrize("jobs", ["1", "3"])
@pytest.mark.parametrize("state", [True, False], ids=["shared-state", "no-state"])
def test_consecutive_windows_are_one_run_over_everything(segbill, tmp_path: Path, jobs: str, state: bool) -> None:
    straddling_export(tmp_path / "export")
    reference, whole = everything(segbill, "export", "--jobs", jobs)
    assert whole["skipped_by_reason"]["duplicate_shifted"] > 10 and whole["skipped_by_reason"]["duplicate"] > 10
    shared = ("--state", "s.db") if state else ()
    with FakePlatform(api_key=KEY, lago_store="clickhouse") as fake:
        delivered, repeats = 0, 0
        for window in WINDOWS:
            _, summary = send(segbill, fake.url, "export", "--jobs", jobs, *window, *shared)
            assert summary is not None and summary["exit_code"] == 0
            delivered += summary["delivered"]
            repeats += summary["skipped_by_reason"]["duplicate"] + summary["skipped_by_reason"]["duplicate_shifted"]
            if state:  # out-of-window claims never outlive the run: the ledger holds what was delivered
                assert ledger(tmp_path / "s.db") == sorted((key, 1) for key in fake.counts("lago"))
        assert stored(fake) == reference
        assert set(fake.counts("lago").values()) == {1}
        assert delivered == whole["delivered"]
        assert repeats == whole["skipped_by_reason"]["duplicate"] + whole["skipped_by_reason"]["duplicate_shifted"]


def test_shards_of_one_message_id_print_it_once(segbill, tmp_path: Path) -> None:
    """40 lines with one messageId and 40 customers: the first line's shard prints it, the
    other shard prints nothing, as one run over everything prints it once."""
    write(tmp_path / "a.jsonl", jsonl(*(track(messageId="same", userId=f"cus_{i}") for i in range(40))))
    whole = segbill("send", "a.jsonl", "--to", "lago", "--dry-run").events
    shards = [segbill("send", "a.jsonl", "--to", "lago", "--dry-run", "--shard", f"{k}/2").events for k in range(2)]
    assert whole == [event for events in shards for event in events]
    assert len(whole) == 1 and whole[0]["external_subscription_id"] == "cus_0"


@pytest.mark.parametrize("jobs", ["1", "3"])
@pytest.mark.parametrize("shards", [2, 3])
def test_shards_together_are_one_run_over_everything(segbill, tmp_path: Path, jobs: str, shards: int) -> None:
    straddling_export(tmp_path / "export")
    reference, whole = everything(segbill, "export", "--jobs", jobs)
    with FakePlatform(api_key=KEY, lago_store="clickhouse") as fake:
        delivered = 0
        for k in range(shards):
            _, summary = send(segbill, fake.url, "export", "--jobs", jobs, "--shard", f"{k}/{shards}", "--state", f"{k}.db")
            assert summary is not None
            delivered += summary["delivered"]
        assert stored(fake) == reference and delivered == whole["delivered"]


@pytest.mark.usefixtures("claim_method")
def test_a_shards_claim_is_never_a_resend_of_another_runs_request(segbill, tmp_path: Path, fake: FakePlatform) -> None:
    """The ledger says m1 was sent in a request that never got its answer. A copy of m1 for a
    customer of another shard comes first: it claims the key and leaves the request alone, so
    this shard's own copy is the one resent (a claim that took the resend skipped it as a
    duplicate: maybe never stored)."""
    first = "cus_1"
    mine = next(f"cus_{i}" for i in range(2, 99) if shard_of(f"cus_{i}", 2) != shard_of(first, 2))
    shard = shard_of(mine, 2)
    write(tmp_path / "a.jsonl", jsonl(track(messageId="m1", userId=first), track(messageId="m1", userId=mine)))
    millis = parse_time(track()["timestamp"])
    with closing(sqlite3.connect(tmp_path / "s.db")) as db:
        db.execute(
            "CREATE TABLE ledger (target TEXT NOT NULL, key TEXT NOT NULL, millis INTEGER NOT NULL,"
            " delivered INTEGER NOT NULL, PRIMARY KEY (target, key)) WITHOUT ROWID"
        )
        db.execute("INSERT INTO ledger VALUES ('lago', 'm1', ?, -7)", (millis,))
        db.commit()
    _, summary = send(segbill, fake.url, "a.jsonl", "--state", "s.db", "--shard", f"{shard}/2")
    assert summary is not None and summary["delivered"] == 1 and summary["skipped_by_reason"] == {"other_shard": 1}
    assert [(event["transaction_id"], event["external_subscription_id"]) for event in fake.events("lago")] == [("m1", mine)]
    assert ledger(tmp_path / "s.db") == [("m1", 1)]


def test_a_windowed_send_killed_mid_file_and_rerun_stores_each_event_once(tmp_path: Path) -> None:
    """Killed while sending February: the rerun reads the file again from its start (a window
    keeps no checkpoint), so January's m1 claims its key again and February's shifted repeat
    is never sent, which a resume past line 1 would have sent."""
    february = [track(messageId=f"f{i}", userId=f"cus_{i % 7}", timestamp=iso_millis(BOUNDARY + i * 1000)) for i in range(2000)]
    write(tmp_path / "a.jsonl", jsonl(TRIAL[0], *february, TRIAL[2]))
    with FakePlatform(api_key=KEY, lago_store="clickhouse", latency=0.02) as fake:
        command = [sys.executable, "-m", "segbill", "send", "a.jsonl", "--to", "lago", "--json", "--quiet"]
        command += ["--state", "s.db", "--since", "2024-02-01", "--batch-size", "20", "--concurrency", "1"]
        process = subprocess.Popen(command, cwd=tmp_path, env=process_env(fake.url), stdout=subprocess.PIPE)
        assert fake.wait_until(lambda: len(fake.counts("lago")) >= 500)
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
        rerun = subprocess.run(command, cwd=tmp_path, env=process_env(fake.url), capture_output=True, check=False)
        assert rerun.returncode == 0, rerun.stderr
        assert fake.counts("lago") == {message["messageId"]: 1 for message in february}
        summary = orjson.loads(rerun.stdout)
        assert summary["resumed_at"] == [] and summary["read"] == 2002
        assert summary["skipped_by_reason"]["before_since"] == 1 and summary["skipped_by_reason"]["duplicate_shifted"] == 1


def reconcile(segbill, fake: FakePlatform, *args: str) -> tuple[int, dict[str, Any]]:
    run = segbill("reconcile", "ex.jsonl", *args, "--to", "lago", "--json", env=platform_env(fake.url))
    assert KEY not in run.stdout + run.stderr
    return run.exit_code, orjson.loads(run.stdout)


@pytest.mark.parametrize("state", [True, False], ids=["shared-state", "no-state"])
def test_reconcile_per_window_after_per_window_sends_finds_nothing_missing_or_extra(segbill, tmp_path: Path, state: bool) -> None:
    """Reconcile and check expect what the window's send delivers: February's shifted m1 is a
    repeat of January's in both (it used to be expected: a missing event that never went away,
    and a --missing file whose replay billed m1 a second time)."""
    write(tmp_path / "ex.jsonl", jsonl(*TRIAL))
    windows = [("--since", "2024-01-01", "--until", "2024-02-01"), ("--since", "2024-02-01", "--until", "2024-03-01")]
    shared = ("--state", "s.db") if state else ()
    with FakePlatform(api_key=KEY, lago_store="clickhouse") as fake:
        for window in windows:
            _, summary = send(segbill, fake.url, "ex.jsonl", *window, *shared)
            assert summary is not None and summary["exit_code"] == 0
        for window in windows:
            for reading in ((), shared):
                code, result = reconcile(segbill, fake, *window, *reading, "--missing", "missing.jsonl")
                assert (code, result["missing"], result["extra"], result["expected"]) == (0, 0, 0, 1)
            check = segbill("check", "ex.jsonl", "--to", "lago", "--json", *window, env=platform_env(fake.url))
            assert orjson.loads(check.stdout)["checked"] == 1
        assert not (tmp_path / "missing.jsonl").exists()
        assert fake.counts("lago") == {"m1": 1, "m2": 1}

"""`segbill reconcile --to lago`: expected against found, by counts first, and a --missing file
that `segbill send` replays to complete the backfill."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import orjson
import pytest

from segbill.segment import iso_millis, parse_time
from segbill.state import State
from segbill.testing.fake_platform import FakePlatform

from .conftest import jsonl, spread_export, track, write

KEY = "sk-reconcile-do-not-print"
DAY = 86_400_000
START = parse_time("2024-03-01T00:00:00Z") or 0
SUBSCRIPTIONS = [f"sub-{i:02d}" for i in range(30)]
CODES = ["api_calls", "seats"]


def export(count: int, *, days: int = 10, seed: int = 1) -> list[dict[str, Any]]:
    return spread_export(count, SUBSCRIPTIONS, CODES, start=START, days=days, seed=seed)


def env(fake: FakePlatform) -> dict[str, str]:
    return {"LAGO_API_URL": fake.url, "LAGO_API_KEY": KEY}


def reconcile(segbill, fake: FakePlatform, *args: str) -> tuple[int, dict[str, Any]]:
    run = segbill("reconcile", *args, "--to", "lago", "--json", env=env(fake))
    assert KEY not in run.stdout + run.stderr
    assert run.exit_code in (0, 1), run.stdout + run.stderr
    return run.exit_code, orjson.loads(run.stdout)


def store_foreign(fake: FakePlatform, events: list[tuple[str, str, int]]) -> None:
    """Events from another source: (subscription, code, ms) each, ids the export does not have."""
    foreign = [
        {
            "transaction_id": f"foreign-{i}",
            "external_subscription_id": s,
            "code": c,
            "timestamp": f"{ms // 1000}.{ms % 1000:03d}",
        }
        for i, (s, c, ms) in enumerate(events)
    ]
    with httpx.Client(base_url=fake.url, headers={"Authorization": f"Bearer {KEY}"}) as client:
        for at in range(0, len(foreign), 100):  # Lago's batch limit
            assert client.post("/api/v1/events/batch", json={"events": foreign[at : at + 100]}).status_code == 200


def test_a_lossy_send_plus_foreign_events_is_reconciled_exactly_and_the_missing_file_completes_it(
    segbill, tmp_path: Path
) -> None:
    messages = export(3000)
    path = write(tmp_path / "export.jsonl", jsonl(*messages))
    with FakePlatform(api_key=KEY, lago_event_loss=0.01, seed=3, lago_read_rate_limit=50) as fake:
        sent = segbill("send", str(path), "--to", "lago", env=env(fake))
        assert sent.exit_code == 0, sent.stderr  # every batch answered 200
        lost = {event["transaction_id"] for event in fake.lost()}
        assert 15 <= len(lost) <= 50
        fake.lago_event_loss = 0.0  # from here on the platform keeps what it accepts
        # 30 foreign events in scope, on (subscription, code) pairs that lost nothing: a missing
        # and an extra event of one pair cancel out in its counts (the README says so).
        by_id = {m["messageId"]: m for m in messages}
        lossy = {(by_id[i]["userId"], by_id[i]["event"]) for i in lost}
        rng = random.Random(5)
        intact = sorted({(m["userId"], m["event"]) for m in messages} - lossy)
        assert len(intact) >= 5
        times = [parse_time(m["timestamp"]) or 0 for m in messages]
        foreign = [(*rng.choice(intact), rng.randrange(min(times), max(times) + 1)) for _ in range(30)]  # in the range
        store_foreign(fake, foreign)
        before = len(fake.requests("lago"))

        code, result = reconcile(segbill, fake, str(path), "--missing", "missing.jsonl")
        assert code == 1
        assert (result["expected"], result["found"], result["missing"], result["extra"]) == (
            3000,
            3000 - len(lost),
            len(lost),
            30,
        )
        assert result["pairs"] == len(SUBSCRIPTIONS) * len(CODES)
        assert result["requests"] == len(fake.requests("lago")) - before
        assert result["requests"] <= 3000 // 25  # a count per pair; a listing where one page holds a pair's range
        assert fake.throttled("lago") == 0 and result["retries"] == 0  # paced under Cloud's 50 reads/s
        breakdown = result["breakdown"]
        assert (
            sum(row["missing"] for row in breakdown["subscriptions"].values())
            == sum(row["missing"] for row in breakdown["days"].values())
            == len(lost)
        )
        assert sum(row["extra"] for row in breakdown["codes"].values()) == 30
        entries = [orjson.loads(line) for line in Path("missing.jsonl").read_bytes().splitlines()]
        assert {e["record"]["messageId"] for e in entries} == lost
        assert {e["reason"] for e in entries} == {"missing on the platform"}
        assert entries[0]["record"] == by_id[entries[0]["record"]["messageId"]] and "line" in entries[0]["source"]

        replay = segbill("send", "missing.jsonl", "--to", "lago", env=env(fake))
        assert replay.exit_code == 0, replay.stderr
        assert set(fake.counts("lago")) == set(by_id) | {f"foreign-{i}" for i in range(30)}
        assert set(fake.counts("lago").values()) == {1}

        code, again = reconcile(segbill, fake, str(path))
        assert (again["found"], again["missing"], again["extra"]) == (3000, 0, 30)
        assert code == 1  # the foreign events are still there


def test_a_complete_backfill_exits_0_with_one_count_per_pair(segbill, tmp_path: Path) -> None:
    path = write(tmp_path / "export.jsonl", jsonl(*export(500)))
    with FakePlatform(api_key=KEY) as fake:
        assert segbill("send", str(path), "--to", "lago", env=env(fake)).exit_code == 0
        before = len(fake.requests("lago"))
        code, result = reconcile(segbill, fake, str(path), "--missing", "missing.jsonl")
        assert code == 0 and (result["expected"], result["found"], result["missing"], result["extra"]) == (500, 500, 0, 0)
        assert result["requests"] == len(fake.requests("lago")) - before == result["pairs"]
        assert not Path("missing.jsonl").exists() and result["missing_file"] is None
        run = segbill("reconcile", str(path), "--to", "lago", env=env(fake))
        assert run.exit_code == 0 and "missing" in run.stdout and "expected" in run.stdout


def test_listing_a_busy_day_pages_through_its_events(segbill, tmp_path: Path) -> None:
    """One pair, one day, 250 events: three lost ones are found by listing three pages."""
    messages = [
        track(messageId=f"m{i}", userId="sub-00", event="api_calls", timestamp=iso_millis(START + i * 1000)) for i in range(250)
    ]
    path = write(tmp_path / "export.jsonl", jsonl(*messages))
    with FakePlatform(api_key=KEY) as fake:
        keep = write(tmp_path / "kept.jsonl", jsonl(*(m for m in messages if m["messageId"] not in ("m0", "m100", "m249"))))
        assert segbill("send", str(keep), "--to", "lago", env=env(fake)).exit_code == 0
        before = len(fake.requests("lago"))
        _, result = reconcile(segbill, fake, str(path), "--missing", "missing.jsonl")
        assert (result["missing"], result["extra"]) == (3, 0)
        paths = [r.path for r in fake.requests("lago")[before:]]
        assert sum("per_page=100" in p for p in paths) == 3 and len(paths) == 4  # one count, three pages


def test_whole_ranges_missing_or_extra_are_counted_without_listing(segbill, tmp_path: Path) -> None:
    """Eight days of 150 events but none on day 3; day 6 never sent; one foreign event on day 3,
    one a millisecond after the export's last event: counts alone find both differences."""
    days = [
        track(messageId=f"d{day}-{i}", userId="sub-00", event="api_calls", timestamp=iso_millis(START + day * DAY + i))
        for day in range(8)
        if day != 3
        for i in range(150)
    ]
    path = write(tmp_path / "export.jsonl", jsonl(*days))
    with FakePlatform(api_key=KEY) as fake:
        sent = write(tmp_path / "sent.jsonl", jsonl(*(m for m in days if not m["messageId"].startswith("d6-"))))
        assert segbill("send", str(sent), "--to", "lago", env=env(fake)).exit_code == 0
        store_foreign(fake, [("sub-00", "api_calls", START + 3 * DAY + 7), ("sub-00", "api_calls", START + 7 * DAY + 150)])
        before = len(fake.requests("lago"))
        _, result = reconcile(segbill, fake, str(path), "--missing", "missing.jsonl")
        assert (result["expected"], result["missing"], result["extra"]) == (1050, 150, 1)  # +150 ms is past the range
        assert result["to"] == iso_millis(START + 7 * DAY + 149)
        assert not any("per_page=100" in r.path for r in fake.requests("lago")[before:])
        assert result["breakdown"]["days"] == {
            "2024-03-07": {"missing": 150, "extra": 0},
            "2024-03-04": {"missing": 0, "extra": 1},
        }
        assert len(Path("missing.jsonl").read_bytes().splitlines()) == 150
        _, wider = reconcile(segbill, fake, str(path), "--until", "2024-03-12")  # the range runs to --until
        assert (wider["missing"], wider["extra"]) == (150, 2) and wider["to"] == "2024-03-11T23:59:59.999Z"


def test_extra_events_only_a_count_found_are_reported_under_the_range_it_covered(segbill, tmp_path: Path) -> None:
    """The export bills March 1st and 31st; 150 foreign events on the 20th. Halving finds them by
    counting, in the 17th to the 24th, where nothing is expected: no listing says which day, so
    the breakdown names that range (both days included), never a day that holds none of them."""
    times = (parse_time("2024-03-01T12:00:00Z") or 0, parse_time("2024-03-31T12:00:00Z") or 0)
    path = write(
        tmp_path / "export.jsonl",
        jsonl(
            *(track(messageId=f"m{i}", userId="sub-00", event="api_calls", timestamp=iso_millis(t)) for i, t in enumerate(times))
        ),
    )
    with FakePlatform(api_key=KEY) as fake:
        assert segbill("send", str(path), "--to", "lago", env=env(fake)).exit_code == 0
        store_foreign(fake, [("sub-00", "api_calls", parse_time("2024-03-20T12:00:00Z") or 0)] * 150)
        code, result = reconcile(segbill, fake, str(path))
        assert code == 1 and (result["expected"], result["found"], result["missing"], result["extra"]) == (2, 2, 0, 150)
        assert result["breakdown"]["days"] == {"2024-03-17/2024-03-24": {"missing": 0, "extra": 150}}
        assert not any("per_page=100" in r.path for r in fake.requests("lago"))  # counted, never listed
        human = segbill("reconcile", str(path), "--to", "lago", env=env(fake))
        assert human.exit_code == 1 and "2024-03-17/2024-03-24" in human.stdout


def test_stdin_is_refused_and_an_existing_missing_file_too(segbill, tmp_path: Path) -> None:
    run = segbill("reconcile", "-", "--to", "lago", input=jsonl(track()), env={"LAGO_API_KEY": KEY})
    assert run.exit_code == 2 and "reads its input twice" in run.stderr
    path = write(tmp_path / "e.jsonl", jsonl(track()))
    Path("missing.jsonl").write_text("")
    run = segbill("reconcile", str(path), "--to", "lago", "--missing", "missing.jsonl", env={"LAGO_API_KEY": KEY})
    assert run.exit_code == 2 and "already exists" in run.stderr


def test_a_read_that_keeps_failing_stops_with_exit_3_and_no_missing_file(segbill, tmp_path: Path) -> None:
    one_pair = [track(messageId=f"m{i}", userId="sub-00", event="api_calls", timestamp=iso_millis(START + i)) for i in range(10)]
    path = write(tmp_path / "export.jsonl", jsonl(*one_pair))
    with FakePlatform(api_key=KEY, retry_after=0) as fake:
        fake.script(["503", "503"])  # the pair's count read, and its one retry
        run = segbill("reconcile", str(path), "--to", "lago", "--max-retries", "1", "--missing", "missing.jsonl", env=env(fake))
        assert run.exit_code == 3, run.stdout + run.stderr
        assert "still failed after 1 retries" in run.stdout and KEY not in run.stdout + run.stderr
        assert not Path("missing.jsonl").exists()


def test_a_repeat_with_a_shifted_time_on_clickhouse_is_extra(segbill, tmp_path: Path) -> None:
    """Lago's ClickHouse store keeps the same transaction_id twice when its time differs: billed twice."""
    messages = export(400)
    path = write(tmp_path / "export.jsonl", jsonl(*messages))
    shifted = [{**m, "timestamp": iso_millis((parse_time(m["timestamp"]) or 0) + 1)} for m in messages[:5]]
    with FakePlatform(api_key=KEY, lago_store="clickhouse") as fake:
        assert segbill("send", str(path), "--to", "lago", env=env(fake)).exit_code == 0
        assert (
            segbill("send", str(write(tmp_path / "again.jsonl", jsonl(*shifted))), "--to", "lago", env=env(fake)).exit_code == 0
        )
        _, result = reconcile(segbill, fake, str(path))
        assert (result["found"], result["missing"], result["extra"]) == (400, 0, 5)


def test_shards_reconcile_their_own_customers(segbill, tmp_path: Path) -> None:
    path = write(tmp_path / "export.jsonl", jsonl(*export(300)))
    with FakePlatform(api_key=KEY) as fake:
        assert segbill("send", str(path), "--to", "lago", "--shard", "0/2", env=env(fake)).exit_code == 0
        _, mine = reconcile(segbill, fake, str(path), "--shard", "0/2")
        _, theirs = reconcile(segbill, fake, str(path), "--shard", "1/2")
        assert (mine["missing"], mine["extra"]) == (0, 0)
        assert theirs["missing"] == theirs["expected"] == 300 - mine["expected"] > 0


def lossy_backfill(segbill, fake: FakePlatform, path: Path, *args: str) -> set[str]:
    """A send with `args` that Lago answers 200 throughout while losing ~5%: the lost ids."""
    assert segbill("send", str(path), "--to", "lago", *args, env=env(fake)).exit_code == 0
    fake.lago_event_loss = 0.0
    lost = {event["transaction_id"] for event in fake.lost()}
    assert lost
    return lost


def send_json(segbill, fake: FakePlatform, *args: str) -> tuple[int, dict[str, Any]]:
    run = segbill("send", *args, "--to", "lago", "--json", env=env(fake))
    assert KEY not in run.stdout + run.stderr
    return run.exit_code, orjson.loads(run.stdout)


def ledger(path: str) -> list[tuple[str, int, int]]:
    """(key, event time, delivered) of each row of a state's ledger."""
    with closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT key, millis, delivered FROM ledger ORDER BY key").fetchall()


def test_reconcile_with_the_backfills_state_lets_a_replay_with_that_state_complete_it(segbill, tmp_path: Path) -> None:
    """The natural repair: the state the backfill used, for reconcile and for the replay."""
    path = write(tmp_path / "export.jsonl", jsonl(*export(500)))
    with FakePlatform(api_key=KEY, lago_event_loss=0.05, seed=2) as fake:
        lost = lossy_backfill(segbill, fake, path, "--state", "backfill.db")
        delivered = {key for key, _, delivered in ledger("backfill.db") if delivered == 1}
        assert lost <= delivered  # Lago answered 200: the ledger has them as delivered

        code, result = reconcile(segbill, fake, str(path), "--state", "backfill.db", "--missing", "missing.jsonl")
        assert code == 1 and (result["missing"], result["forgotten"], result["state"]) == (len(lost), len(lost), "backfill.db")
        assert {key for key, _, _ in ledger("backfill.db")} == delivered - lost  # nothing else changed
        entries = [orjson.loads(line) for line in Path("missing.jsonl").read_bytes().splitlines()]
        assert {e["record"]["messageId"] for e in entries if e["missing_on_platform"] is True} == lost

        code, summary = send_json(segbill, fake, "missing.jsonl", "--state", "backfill.db")
        assert code == 0 and (summary["delivered"], summary["missing_resent"], summary["skipped"]) == (len(lost), 0, 0)
        assert len(fake.counts("lago")) == 500 and set(fake.counts("lago").values()) == {1}

        run = segbill("reconcile", str(path), "--to", "lago", "--state", "backfill.db", env=env(fake))
        assert run.exit_code == 0 and "forgotten" in run.stdout and "backfill.db left as it was: nothing is missing" in run.stdout
        assert {key for key, _, delivered in ledger("backfill.db") if delivered == 1} == delivered


def test_after_reconcile_with_the_state_the_backfills_own_commands_send_what_it_forgot(segbill, tmp_path: Path) -> None:
    """The send commands themselves, run again, finish the backfill: reconcile (under a selection
    neither send used) drops every checkpoint of the state, so each rereads its files, and the
    ledger lets through only the forgotten events."""
    path = write(tmp_path / "export.jsonl", jsonl(*export(500)))
    windows = [("--event", CODES[0]), ("--event", CODES[1])]  # selections that resume (not --since/--until)
    with FakePlatform(api_key=KEY, lago_event_loss=0.05, seed=2) as fake:
        for window in windows:
            assert send_json(segbill, fake, str(path), "--state", "f.db", *window)[0] == 0
        fake.lago_event_loss = 0.0
        lost = {event["transaction_id"] for event in fake.lost()}
        run = segbill("reconcile", str(path), "--to", "lago", "--state", "f.db", env=env(fake))
        note = " ".join(run.stdout.split())
        assert run.exit_code == 1 and f"{len(lost)} missing events f.db had as delivered" in note
        assert "a send with it reads its files again and sends them" in note

        resent = 0
        for window in windows:
            code, summary = send_json(segbill, fake, str(path), "--state", "f.db", *window)
            assert code == 0 and summary["files_already_done"] == 0 and summary["read"] == 500
            assert set(summary["skipped_by_reason"]) == {"duplicate", "not_included"}
            resent += summary["delivered"]
        assert resent == len(lost) and len(fake.counts("lago")) == 500 and set(fake.counts("lago").values()) == {1}
        code, again = send_json(segbill, fake, str(path), "--state", "f.db", *windows[0])
        assert (code, again["files_already_done"], again["read"]) == (0, 1, 0)  # checkpoints again once it is done
        assert reconcile(segbill, fake, str(path), "--state", "f.db")[1]["missing"] == 0


def test_a_reconcile_that_forgets_nothing_leaves_the_states_checkpoints_and_says_so(segbill, tmp_path: Path) -> None:
    """Missing events the ledger never had as delivered (here: left out by the send's --event) are
    not the state's to forget: it is left as it was, checkpoints included."""
    path = write(tmp_path / "export.jsonl", jsonl(*export(100)))
    window = ("--event", CODES[0])
    with FakePlatform(api_key=KEY) as fake:
        assert send_json(segbill, fake, str(path), "--state", "f.db", *window)[0] == 0
        run = segbill("reconcile", str(path), "--to", "lago", "--state", "f.db", env=env(fake))
        note = " ".join(run.stdout.split())
        assert run.exit_code == 1 and "f.db left as it was: it has none of the missing as delivered" in note
        code, again = send_json(segbill, fake, str(path), "--state", "f.db", *window)
        assert (code, again["files_already_done"], again["read"]) == (0, 1, 0)


@pytest.mark.parametrize("store", ["postgres", "clickhouse"])
def test_a_replay_with_a_state_that_has_the_missing_as_delivered_resends_them(segbill, tmp_path: Path, store: str) -> None:
    """Reconcile without --state changes nothing; the replay's entries, marked missing on the
    platform, override the ledger, and a resend of what the platform holds is absorbed."""
    path = write(tmp_path / "export.jsonl", jsonl(*export(500)))
    with FakePlatform(api_key=KEY, lago_event_loss=0.05, seed=2, lago_store=store) as fake:
        lost = lossy_backfill(segbill, fake, path, "--state", "backfill.db")
        before = (ledger("backfill.db"), sorted(p.name for p in tmp_path.iterdir()))
        code, result = reconcile(segbill, fake, str(path), "--missing", "missing.jsonl")
        assert code == 1 and (result["missing"], result["forgotten"], result["state"]) == (len(lost), 0, None)
        assert (ledger("backfill.db"), sorted(p.name for p in tmp_path.iterdir() if p.name != "missing.jsonl")) == before

        preview = segbill("send", "missing.jsonl", "--to", "lago", "--state", "backfill.db", "--dry-run", env=env(fake))
        assert {event["transaction_id"] for event in preview.events} == lost
        assert ledger("backfill.db") == before[0]  # a dry run keeps nothing

        code, summary = send_json(segbill, fake, "missing.jsonl", "--state", "backfill.db")
        assert code == 0 and (summary["delivered"], summary["missing_resent"], summary["skipped"]) == (len(lost), len(lost), 0)
        assert len(fake.counts("lago")) == 500 and set(fake.counts("lago").values()) == {1}
        # A copy (its own checkpoint) stands for events that were on the platform after all.
        Path("again.jsonl").write_bytes(Path("missing.jsonl").read_bytes())
        run = segbill("send", "again.jsonl", "--to", "lago", "--state", "backfill.db", env=env(fake))
        assert run.exit_code == 0 and f"\n  missing resent   {len(lost)}  (the ledger had them as delivered" in run.stderr
        assert set(fake.counts("lago").values()) == {1}  # Postgres: value_already_exist; ClickHouse: replaced
        assert ("already delivered" in run.stderr) == (store == "postgres")
        # Writes of each: the lost one, the replay's, and ClickHouse's replacement (Postgres refused it).
        assert {fake.writes("lago")[i] for i in lost} == {3 if store == "clickhouse" else 2}
        code, again = reconcile(segbill, fake, str(path))
        assert code == 0 and (again["found"], again["missing"], again["extra"]) == (500, 0, 0)


def test_an_entry_marked_missing_is_not_resent_over_a_delivery_at_another_time(segbill, tmp_path: Path) -> None:
    """The ledger's delivery of that id at another time may be what the platform holds: a
    resend would be billed twice on ClickHouse. It stays a shifted repeat, said on stderr."""
    message = track(messageId="m1", userId="sub-00", event="api_calls", timestamp=iso_millis(START))
    path = write(tmp_path / "export.jsonl", jsonl(message))
    entry = {
        "segbill_dead_letter": 1,
        "reason": "missing on the platform",
        "missing_on_platform": True,
        "target": "lago",
        "source": {"path": "other.jsonl", "line": 1},
        "record": {**message, "timestamp": iso_millis(START + 1)},
    }
    replay = write(tmp_path / "missing.jsonl", orjson.dumps(entry) + b"\n")
    with FakePlatform(api_key=KEY, lago_store="clickhouse") as fake:
        assert segbill("send", str(path), "--to", "lago", "--state", "s.db", env=env(fake)).exit_code == 0
        run = segbill("send", str(replay), "--to", "lago", "--state", "s.db", "--json", env=env(fake))
        summary = orjson.loads(run.stdout)
        assert (summary["missing_resent"], summary["skipped_by_reason"]) == (0, {"duplicate_shifted": 1})
        assert "m1 was already sent with another event time" in run.stderr
        assert fake.writes("lago") == {"m1": 1}


def test_reconcile_takes_the_states_lock_and_refuses_another_destination_or_no_file(segbill, tmp_path: Path) -> None:
    path = write(tmp_path / "export.jsonl", jsonl(*export(50)))
    with FakePlatform(api_key=KEY) as fake, FakePlatform(api_key=KEY) as other:
        assert segbill("send", str(path), "--to", "lago", "--state", "s.db", env=env(fake)).exit_code == 0
        holder = State(tmp_path / "s.db", "lago")
        try:
            busy = segbill("reconcile", str(path), "--to", "lago", "--state", "s.db", env=env(fake))
        finally:
            holder.close()
        assert busy.exit_code == 2 and "another segbill run is using s.db" in busy.stderr
        elsewhere = segbill("reconcile", str(path), "--to", "lago", "--state", "s.db", env=env(other))
        assert elsewhere.exit_code == 2 and f"holds deliveries to lago at {fake.url}" in elsewhere.stderr
        typo = segbill("reconcile", str(path), "--to", "lago", "--state", "s2.db", env=env(fake))
        assert typo.exit_code == 2 and "--state s2.db: no such file" in typo.stderr and not Path("s2.db").exists()
        assert [r for r in fake.requests("lago") if r.method == "GET"] == [] and other.requests() == []


def test_a_missing_file_that_cannot_be_written_stops_reconcile_with_one_line_and_exit_3(segbill, tmp_path: Path) -> None:
    """RLIMIT_FSIZE (in the child) fails the third entry's write with EFBIG, as a full disk would."""
    path = write(tmp_path / "export.jsonl", jsonl(*export(500)))
    with FakePlatform(api_key=KEY, lago_event_loss=0.05, seed=2) as fake:
        lost = lossy_backfill(segbill, fake, path, "--state", "backfill.db")
        limited = "import resource, runpy; resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000)); runpy.run_module('segbill', run_name='__main__')"
        args = ["reconcile", str(path), "--to", "lago", "--missing", "missing.jsonl", "--json"]
        done = subprocess.run(
            [sys.executable, "-c", limited, *args], env={**os.environ, **env(fake)}, capture_output=True, check=False, timeout=60
        )
        assert done.returncode == 3 and done.stderr == b"", done.stderr
        result = orjson.loads(done.stdout)
        assert "cannot write the dead-letter file missing.jsonl" in result["stopped"] and result["missing"] < len(lost)
        assert 0 < len(Path("missing.jsonl").read_bytes().splitlines()) < len(lost)


def assert_accounted(result: dict[str, Any]) -> None:
    """Every expected event is found, missing or unchecked: never found unless proved."""
    assert result["found"] + result["missing"] + result["unchecked"] == result["expected"]


def test_a_wrong_key_stops_at_once_and_finds_nothing(segbill, tmp_path: Path) -> None:
    path = write(tmp_path / "export.jsonl", jsonl(*export(500)))
    with FakePlatform(api_key=KEY) as fake:
        assert segbill("send", str(path), "--to", "lago", env=env(fake)).exit_code == 0
        before = len(fake.requests("lago"))
        wrong = {"LAGO_API_URL": fake.url, "LAGO_API_KEY": "wrong-key"}
        run = segbill("reconcile", str(path), "--to", "lago", "--json", env=wrong)
        result = orjson.loads(run.stdout)
        assert run.exit_code == 3 and "rejected the API key" in result["stopped"] and result["interrupted"] is False
        assert (result["expected"], result["found"], result["missing"], result["unchecked"]) == (500, 0, 0, 500)
        assert_accounted(result)
        # The 60 pairs' count reads start together; only the 4 in flight when the 401 came were made.
        reads = fake.requests("lago")[before:]
        assert result["requests"] == len(reads) <= 4 and {r.status for r in reads} == {401}
        human = segbill("reconcile", str(path), "--to", "lago", env=wrong)
        assert human.exit_code == 3 and "INCOMPLETE, not a reconciliation" in human.stdout
        assert "  unchecked                     500  " in human.stdout and "wrong-key" not in human.stdout + human.stderr


def answered(reads: list[Any]) -> set[tuple[str, str]]:
    """The (subscription, code) pairs whose count read the fake answered 200."""
    pairs = set()
    for read in reads:
        query = parse_qs(urlsplit(read.path).query)
        if read.status == 200:
            pairs.add((query["external_subscription_id"][0], query["code"][0]))
    return pairs


def expected_of(messages: list[dict[str, Any]], pairs: set[tuple[str, str]]) -> int:
    return sum(1 for m in messages if (m["userId"], m["event"]) in pairs)


def test_a_read_that_exhausts_its_retries_mid_run_leaves_the_rest_unchecked(segbill, tmp_path: Path) -> None:
    messages = export(500)
    path = write(tmp_path / "export.jsonl", jsonl(*messages))
    with FakePlatform(api_key=KEY, seed=4) as fake:
        assert segbill("send", str(path), "--to", "lago", env=env(fake)).exit_code == 0
        before = len(fake.requests("lago"))
        fake.faults = {"503": 0.08}  # some count read, after others agreed, is answered 503
        run = segbill("reconcile", str(path), "--to", "lago", "--max-retries", "0", "--json", env=env(fake))
        result = orjson.loads(run.stdout)
        assert run.exit_code == 3 and "still failed after 0 retries" in result["stopped"]
        assert_accounted(result)
        assert 0 < result["found"] < 500 and result["missing"] == 0 and result["unchecked"] == 500 - result["found"]
        reads = fake.requests("lago")[before:]
        assert any(r.status == 200 for r in reads) and result["requests"] == len(reads)
        assert len(reads) < 20  # the 60 pairs are not all read: only those in flight before the failure came back
        assert result["found"] == expected_of(messages, answered(reads))  # the pairs whose count came back, each agreeing


def test_an_interrupted_reconcile_says_so_and_calls_found_only_what_it_compared(tmp_path: Path) -> None:
    """SIGINT lands while the pairs are being counted (each read answered slowly)."""
    messages = export(500)
    path = write(tmp_path / "export.jsonl", jsonl(*messages))
    with FakePlatform(api_key=KEY) as fake:
        sent = subprocess.run(
            [sys.executable, "-m", "segbill", "send", str(path), "--to", "lago", "--dead-letter", str(tmp_path / "d")],
            env={**os.environ, **env(fake)},
            capture_output=True,
            check=False,
            timeout=60,
        )
        assert sent.returncode == 0, sent.stderr
        before = len(fake.requests("lago"))
        fake.latency = 0.2
        process = subprocess.Popen(  # as a shell's background job: SIGINT ignored, and still it stops
            [sys.executable, "-m", "segbill", "reconcile", str(path), "--to", "lago", "--json"],
            env={**os.environ, **env(fake)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )
        while len(fake.requests("lago")) < before + 8:  # a few pairs counted, most not
            assert process.poll() is None
            threading.Event().wait(0.01)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
        reads = fake.requests("lago")[before:]
    assert process.returncode == 130 and b"Traceback" not in stderr, stderr
    result = orjson.loads(stdout)
    assert result["interrupted"] is True and result["exit_code"] == 130 and result["stopped"] is None
    assert_accounted(result)
    assert 0 < result["found"] < 500 and result["missing"] == 0 and result["unchecked"] > 0
    assert result["found"] <= expected_of(messages, answered(reads))  # answers still on their way when it stopped are not found

"""`segbill reconcile --to lago`: expected against found, by counts first, and a --missing file
that `segbill send` replays to complete the backfill."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import httpx
import orjson

from segbill.segment import parse_time
from segbill.testing.fake_platform import FakePlatform

from .conftest import jsonl, track, write

KEY = "sk-reconcile-do-not-print"
DAY = 86_400_000
START = parse_time("2024-03-01T00:00:00Z") or 0
SUBSCRIPTIONS = [f"sub-{i:02d}" for i in range(30)]
CODES = ["api_calls", "seats"]


def export(count: int, *, days: int = 10, seed: int = 1) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        track(
            messageId=f"msg-{i:05d}",
            userId=rng.choice(SUBSCRIPTIONS),
            event=rng.choice(CODES),
            timestamp=_iso(START + rng.randrange(days * DAY)),
            properties={"n": i},
        )
        for i in range(count)
    ]


def _iso(millis: int) -> str:
    from segbill.segment import iso_millis

    return iso_millis(millis)


def env(fake: FakePlatform) -> dict[str, str]:
    return {"LAGO_API_URL": fake.url, "LAGO_API_KEY": KEY}


def reconcile(segbill, fake: FakePlatform, *args: str) -> tuple[int, dict[str, Any]]:
    run = segbill("reconcile", *args, "--to", "lago", "--json", env=env(fake))
    assert KEY not in run.stdout + run.stderr
    assert run.exit_code in (0, 1), run.stdout + run.stderr
    return run.exit_code, orjson.loads(run.stdout)


def store_foreign(fake: FakePlatform, events: list[tuple[str, str, int]]) -> None:
    """Events from another source: (subscription, code, ms) each, ids the export does not have."""
    body = {"events": [{"transaction_id": f"foreign-{i}", "external_subscription_id": s, "code": c, "timestamp": f"{ms // 1000}.{ms % 1000:03d}"} for i, (s, c, ms) in enumerate(events)]}
    with httpx.Client(base_url=fake.url, headers={"Authorization": f"Bearer {KEY}"}) as client:
        assert client.post("/api/v1/events/batch", json=body).status_code == 200


def test_a_lossy_send_plus_foreign_events_is_reconciled_exactly_and_the_missing_file_completes_it(segbill, tmp_path: Path) -> None:
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
        assert (result["expected"], result["found"], result["missing"], result["extra"]) == (3000, 3000 - len(lost), len(lost), 30)
        assert result["pairs"] == len(SUBSCRIPTIONS) * len(CODES)
        assert result["requests"] == len(fake.requests("lago")) - before
        assert result["requests"] <= 3000 // 25  # a count per pair; a listing where one page holds a pair's range
        assert fake.throttled("lago") == 0 and result["retries"] == 0  # paced under Cloud's 50 reads/s
        breakdown = result["breakdown"]
        assert sum(row["missing"] for row in breakdown["subscriptions"].values()) == sum(row["missing"] for row in breakdown["days"].values()) == len(lost)
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
    messages = [track(messageId=f"m{i}", userId="sub-00", event="api_calls", timestamp=_iso(START + i * 1000)) for i in range(250)]
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
        track(messageId=f"d{day}-{i}", userId="sub-00", event="api_calls", timestamp=_iso(START + day * DAY + i))
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
        assert result["to"] == _iso(START + 7 * DAY + 149)
        assert not any("per_page=100" in r.path for r in fake.requests("lago")[before:])
        assert result["breakdown"]["days"] == {"2024-03-07": {"missing": 150, "extra": 0}, "2024-03-04": {"missing": 0, "extra": 1}}
        assert len(Path("missing.jsonl").read_bytes().splitlines()) == 150
        _, wider = reconcile(segbill, fake, str(path), "--until", "2024-03-12")  # the range runs to --until
        assert (wider["missing"], wider["extra"]) == (150, 2) and wider["to"] == "2024-03-11T23:59:59.999Z"


def test_stdin_is_refused_and_an_existing_missing_file_too(segbill, tmp_path: Path) -> None:
    run = segbill("reconcile", "-", "--to", "lago", input=jsonl(track()), env={"LAGO_API_KEY": KEY})
    assert run.exit_code == 2 and "reads its input twice" in run.stderr
    path = write(tmp_path / "e.jsonl", jsonl(track()))
    Path("missing.jsonl").write_text("")
    run = segbill("reconcile", str(path), "--to", "lago", "--missing", "missing.jsonl", env={"LAGO_API_KEY": KEY})
    assert run.exit_code == 2 and "already exists" in run.stderr


def test_a_read_that_keeps_failing_stops_with_exit_3_and_no_missing_file(segbill, tmp_path: Path) -> None:
    one_pair = [track(messageId=f"m{i}", userId="sub-00", event="api_calls", timestamp=_iso(START + i)) for i in range(10)]
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
    shifted = [{**m, "timestamp": _iso((parse_time(m["timestamp"]) or 0) + 1)} for m in messages[:5]]
    with FakePlatform(api_key=KEY, lago_store="clickhouse") as fake:
        assert segbill("send", str(path), "--to", "lago", env=env(fake)).exit_code == 0
        assert segbill("send", str(write(tmp_path / "again.jsonl", jsonl(*shifted))), "--to", "lago", env=env(fake)).exit_code == 0
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


def test_the_repair_of_a_backfill_sent_with_a_state_goes_without_that_state(segbill, tmp_path: Path) -> None:
    """Lago answered 200 for the lost events: the backfill's ledger has them as delivered."""
    messages = export(500)
    path = write(tmp_path / "export.jsonl", jsonl(*messages))
    with FakePlatform(api_key=KEY, lago_event_loss=0.05, seed=2) as fake:
        assert segbill("send", str(path), "--to", "lago", "--state", "backfill.db", env=env(fake)).exit_code == 0
        fake.lago_event_loss = 0.0
        lost = {event["transaction_id"] for event in fake.lost()}
        run = segbill("reconcile", str(path), "--to", "lago", "--missing", "missing.jsonl", env=env(fake))
        assert run.exit_code == 1 and "not the backfill's --state" in run.stdout
        with_state = segbill("send", "missing.jsonl", "--to", "lago", "--state", "backfill.db", "--json", env=env(fake))
        assert orjson.loads(with_state.stdout)["skipped_by_reason"] == {"duplicate": len(lost)}  # the README's warning
        assert segbill("send", "missing.jsonl", "--to", "lago", env=env(fake)).exit_code == 0
        code, result = reconcile(segbill, fake, str(path))
        assert code == 0 and (result["found"], result["missing"], result["extra"]) == (500, 0, 0)

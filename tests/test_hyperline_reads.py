"""`segbill check` and `segbill reconcile` with `--to hyperline`, against the fake's read API
(GET /v1/events on the ingest host, GET /v1/customers/{id})."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import httpx
import orjson

from segbill.segment import iso_millis, parse_time
from segbill.targets.hyperline_api import api_url
from segbill.testing.fake_platform import FakePlatform

from .conftest import jsonl, spread_export, track, write

KEY = "hl-reads-do-not-print"
DAY = 86_400_000
START = parse_time("2024-03-01T00:00:00Z") or 0
CUSTOMERS = [f"cus-{i:02d}" for i in range(20)]
EVENTS = ["api_calls", "seats"]


def export(count: int, *, days: int = 10, seed: int = 1) -> list[dict[str, Any]]:
    return spread_export(count, CUSTOMERS, EVENTS, start=START, days=days, seed=seed)


def env(fake: FakePlatform) -> dict[str, str]:
    return {"HYPERLINE_API_URL": fake.url, "HYPERLINE_API_KEY": KEY}


def run_json(segbill, fake: FakePlatform, command: str, *args: str) -> tuple[int, dict[str, Any]]:
    run = segbill(command, *args, "--to", "hyperline", "--json", env=env(fake))
    assert KEY not in run.stdout + run.stderr
    assert run.exit_code in (0, 1), run.stdout + run.stderr
    return run.exit_code, orjson.loads(run.stdout)


def test_the_fake_lists_events_by_type_customer_ids_and_time_with_take_and_skip() -> None:
    with (
        FakePlatform(api_key=KEY, hyperline_customers={"c1", "c2"}) as fake,
        httpx.Client(base_url=fake.url, headers={"Authorization": f"Bearer {KEY}"}) as client,
    ):
        events = [
            {"customer_id": f"c{1 + i % 2}", "event_type": "api", "timestamp": iso_millis(START + i), "record": {"id": f"r{i}"}}
            for i in range(7)
        ]
        assert client.post("/v1/events/batch", json=events).status_code == 201
        page = client.get("/v1/events", params={"event_type": "api", "take": 3, "skip": 2, "order": "asc"}).json()
        assert page["meta"] == {"total": 7, "taken": 3, "skipped": 2}
        assert [e["record_id"] for e in page["data"]] == ["r2", "r3", "r4"]
        assert page["data"][0] == {
            "id": "evt_r2",
            "event_type": "api",
            "timestamp": iso_millis(START + 2),
            "customer_id": "c1",
            "record_id": "r2",
            "record": {"id": "r2"},
        }
        scoped = {"event_type": "api", "customer_id": "c1", "timestamp_gte": iso_millis(START + 2)}
        assert client.get("/v1/events", params={**scoped, "timestamp_lte": iso_millis(START + 4), "take": 0}).json() == {
            "meta": {"total": 2, "taken": 0, "skipped": 0},
            "data": [],
        }
        by_id = client.get("/v1/events", params={"event_type": "api", "record_id__in": "r1,r5,nope"}).json()
        assert {e["record_id"] for e in by_id["data"]} == {"r1", "r5"}
        assert client.get("/v1/events", params={"event_type": "other"}).json()["meta"]["total"] == 0
        assert client.get("/v1/events").status_code == 400  # event_type is required
        assert client.get("/v1/events", params={"event_type": "api", "take": 101}).status_code == 400
        assert client.get("/v1/customers/c1").status_code == 200
        missing = client.get("/v1/customers/ghost")
        assert missing.status_code == 404 and missing.json() == {"message": "Customer not found"}
        assert "X-RateLimit-Remaining" in missing.headers


def test_check_names_the_unknown_customers_with_one_read_per_customer_and_sends_nothing(segbill, tmp_path: Path) -> None:
    messages = export(400)
    ghosts = [
        track(messageId=f"ghost-{i}", userId="cus ghost/1", event="seats", timestamp=iso_millis(START + i)) for i in range(7)
    ]
    path = write(tmp_path / "export.jsonl", jsonl(*messages, *ghosts))
    with FakePlatform(api_key=KEY, hyperline_customers=CUSTOMERS) as fake:
        code, result = run_json(segbill, fake, "check", str(path))
        assert code == 1
        assert result["verdicts"] == {"billable": 400, "unknown_customer": 7}
        assert result["top"]["unknown_customer"] == [
            {
                "event_type": "seats",
                "customer_id": "cus ghost/1",
                "events": 7,
                "first": iso_millis(START),
                "last": iso_millis(START + 6),
            }
        ]
        requests = fake.requests("hyperline")
        assert result["requests"] == len(requests) == len(CUSTOMERS) + 1
        assert all(r.method == "GET" and r.path.startswith("/v1/customers/") for r in requests)
        assert fake.events("hyperline") == []

        known = write(tmp_path / "known.jsonl", jsonl(*messages))
        code, clean = run_json(segbill, fake, "check", str(known))
        assert code == 0 and clean["verdicts"] == {"billable": 400, "unknown_customer": 0} and clean["not_billed"] == 0
        table = segbill("check", str(path), "--to", "hyperline", env=env(fake))
        assert table.exit_code == 1 and "unknown_customer" in table.stdout and "seats on cus ghost/1" in table.stdout


def test_a_lossy_send_plus_foreign_events_is_reconciled_exactly_and_the_missing_file_completes_it(
    segbill, tmp_path: Path
) -> None:
    messages = export(2000)
    path = write(tmp_path / "export.jsonl", jsonl(*messages))
    with FakePlatform(api_key=KEY, hyperline_event_loss=0.01, seed=3) as fake:
        sent = segbill("send", str(path), "--to", "hyperline", env=env(fake))
        assert sent.exit_code == 0, sent.stderr  # every event answered as created
        lost = {event["record"]["id"] for event in fake.lost("hyperline")}
        assert 8 <= len(lost) <= 40
        fake.hyperline_event_loss = 0.0
        # 30 foreign events in scope on (customer, event type) pairs that lost nothing: a missing
        # and an extra event of one pair cancel out in its counts (the README says so).
        stored = fake.events("hyperline")
        lossy = {(e["customer_id"], e["event_type"]) for e in fake.lost("hyperline")}
        intact = sorted({(e["customer_id"], e["event_type"]) for e in stored} - lossy)
        rng = random.Random(5)
        times = [parse_time(m["timestamp"]) or 0 for m in messages]
        foreign = [
            {
                "customer_id": customer,
                "event_type": event_type,
                "timestamp": iso_millis(rng.randrange(min(times), max(times) + 1)),
                "record": {"id": f"foreign-{i}"},
            }
            for i, (customer, event_type) in enumerate(rng.choice(intact) for _ in range(30))
        ]
        with httpx.Client(base_url=fake.url, headers={"Authorization": f"Bearer {KEY}"}) as client:
            assert client.post("/v1/events/batch", json=foreign).status_code == 201
        before = len(fake.requests("hyperline"))

        code, result = run_json(segbill, fake, "reconcile", str(path), "--missing", "missing.jsonl")
        assert code == 1
        assert (result["expected"], result["found"], result["missing"], result["extra"]) == (
            2000,
            2000 - len(lost),
            len(lost),
            30,
        )
        assert result["pairs"] == len(CUSTOMERS) * len(EVENTS)
        assert result["requests"] == len(fake.requests("hyperline")) - before
        assert result["requests"] <= 2000 // 10  # a count per pair; listings only where counts differ
        assert sum(row["missing"] for row in result["breakdown"]["customers"].values()) == len(lost)
        assert sum(row["extra"] for row in result["breakdown"]["event_types"].values()) == 30
        entries = [orjson.loads(line) for line in Path("missing.jsonl").read_bytes().splitlines()]
        assert {e["record"]["messageId"] for e in entries} == lost
        table = segbill("reconcile", str(path), "--to", "hyperline", "--missing", "again.jsonl", env=env(fake))
        assert "replay: segbill send again.jsonl --to hyperline, with the backfill's mapping" in table.stdout

        replay = segbill("send", "missing.jsonl", "--to", "hyperline", env=env(fake))
        assert replay.exit_code == 0, replay.stderr
        assert set(fake.counts("hyperline")) == {m["messageId"] for m in messages} | {f"foreign-{i}" for i in range(30)}

        code, again = run_json(segbill, fake, "reconcile", str(path))
        assert (again["found"], again["missing"], again["extra"]) == (2000, 0, 30)
        table = segbill("reconcile", str(path), "--to", "hyperline", env=env(fake))
        assert "(customer, event_type) pairs" in table.stdout and "worst event_types" in table.stdout


def test_a_customer_id_of_dots_is_read_as_that_customer_not_as_the_list(segbill, tmp_path: Path) -> None:
    """httpx resolves the dot segments of a path: /v1/customers/. was read as /v1/customers
    (the list of customers on Hyperline, answered 200: billable), and .. as /v1."""
    messages = [track(messageId=f"m{i}", userId=customer) for i, customer in enumerate([".", "..", "ok"])]
    path = write(tmp_path / "export.jsonl", jsonl(*messages))
    with FakePlatform(api_key=KEY, hyperline_customers=[".", "ok"]) as fake:
        code, result = run_json(segbill, fake, "check", str(path))
        assert code == 1 and result["stopped"] is None
        assert result["verdicts"] == {"billable": 2, "unknown_customer": 1}
        assert [top["customer_id"] for top in result["top"]["unknown_customer"]] == [".."]
        paths = sorted(r.path for r in fake.requests("hyperline"))
        assert paths == ["/v1/customers/%2E", "/v1/customers/%2E%2E", "/v1/customers/ok"]


def test_a_complete_hyperline_backfill_reconciles_with_one_count_per_pair(segbill, tmp_path: Path) -> None:
    path = write(tmp_path / "export.jsonl", jsonl(*export(300)))
    with FakePlatform(api_key=KEY) as fake:
        assert segbill("send", str(path), "--to", "hyperline", env=env(fake)).exit_code == 0
        before = len(fake.requests("hyperline"))
        code, result = run_json(segbill, fake, "reconcile", str(path))
        assert code == 0 and (result["expected"], result["found"], result["missing"], result["extra"]) == (300, 300, 0, 0)
        assert result["requests"] == len(fake.requests("hyperline")) - before == result["pairs"]
        assert all("take=0" in r.path for r in fake.requests("hyperline")[before:])


def test_a_rejected_key_stops_check_and_reconcile_at_the_first_read(segbill, tmp_path: Path) -> None:
    path = write(tmp_path / "export.jsonl", jsonl(*export(5)))
    with FakePlatform(api_key="the-right-key") as fake:
        run = segbill("check", str(path), "--to", "hyperline", env=env(fake))
        assert run.exit_code == 3 and KEY not in run.stdout + run.stderr
        assert "rejected the API key" in run.stdout and "INCOMPLETE" in run.stdout
        assert len(fake.requests("hyperline")) == 1  # the first failed read stops the run
        reconciled = segbill("reconcile", str(path), "--to", "hyperline", env=env(fake))
        assert reconciled.exit_code == 3 and KEY not in reconciled.stdout + reconciled.stderr


def test_a_wrong_url_stops_check_as_it_stops_reconcile_and_send_rather_than_making_customers_unknown(
    segbill, tmp_path: Path
) -> None:
    """Only Hyperline's own `{"message": ...}` 404 says a customer does not exist; the 404 of a
    path no server has (here the fake's, in another shape) is a wrong --api-url."""
    path = write(tmp_path / "export.jsonl", jsonl(*export(5)))
    with FakePlatform(api_key=KEY, hyperline_customers=CUSTOMERS) as fake:
        wrong = {**env(fake), "HYPERLINE_API_URL": f"{fake.url}/wrong"}
        run = segbill("check", str(path), "--to", "hyperline", "--json", env=wrong)
        result = orjson.loads(run.stdout)
        assert run.exit_code == 3 and (result["verdicts"]["unknown_customer"], result["requests"]) == (0, 1)
        assert "has no such endpoint (HTTP 404 for /wrong/v1/customers/" in result["stopped"]
        for command in ("reconcile", "send"):
            run = segbill(command, str(path), "--to", "hyperline", env=wrong)
            assert run.exit_code == 3 and "has no such endpoint" in run.stdout + run.stderr, command
        assert fake.events("hyperline") == []


def test_a_throttled_read_is_paced_and_retried_then_answers_the_same(segbill, tmp_path: Path) -> None:
    path = write(tmp_path / "export.jsonl", jsonl(*export(50)))
    with FakePlatform(api_key=KEY, hyperline_customers=CUSTOMERS, retry_after=0) as fake:
        fake.script(["429"])
        code, result = run_json(segbill, fake, "check", str(path))
        assert code == 0 and result["verdicts"]["billable"] == 50
        assert result["retries"] == 1 and fake.throttled("hyperline") == 1
        assert result["requests"] == len(fake.requests("hyperline")) == len({r.path for r in fake.requests("hyperline")}) + 1


def test_customers_are_read_from_the_api_host_next_to_the_ingest_host() -> None:
    assert api_url("https://ingest.hyperline.co") == "https://api.hyperline.co"
    assert api_url("https://sandbox.ingest.hyperline.co/") == "https://sandbox.api.hyperline.co/"
    assert api_url("http://127.0.0.1:8080") == "http://127.0.0.1:8080"  # a proxy or the fake serves both

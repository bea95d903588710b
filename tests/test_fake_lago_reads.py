"""The fake's Lago read API must answer like lago-api, or check and reconcile prove nothing."""

from __future__ import annotations

import httpx

from segbill.testing.fake_platform import FakePlatform

from . import test_fake_platform as writes

AUTH = writes.AUTH
fake, client = writes.fake, writes.client  # the same fixtures as the write tests


def store(client: httpx.Client, *events: tuple[str, str, str, str]) -> None:
    """(transaction id, subscription, code, Unix seconds) each."""
    body = {
        "events": [{"transaction_id": t, "external_subscription_id": s, "code": c, "timestamp": ts} for t, s, c, ts in events]
    }
    assert client.post("/api/v1/events/batch", json=body).status_code == 200


def test_pages_carry_kaminari_meta_and_default_to_100(fake: FakePlatform, client: httpx.Client) -> None:
    for i in range(205):
        fake.add_subscription(f"sub-{i:03d}")
    first = client.get("/api/v1/subscriptions").json()
    assert len(first["subscriptions"]) == 100
    assert first["meta"] == {"current_page": 1, "next_page": 2, "prev_page": None, "total_pages": 3, "total_count": 205}
    last = client.get("/api/v1/subscriptions", params={"page": 3}).json()
    assert [s["external_id"] for s in last["subscriptions"]] == ["sub-200", "sub-201", "sub-202", "sub-203", "sub-204"]
    assert last["meta"] == {"current_page": 3, "next_page": None, "prev_page": 2, "total_pages": 3, "total_count": 205}
    nothing = client.get("/api/v1/billable_metrics").json()
    assert nothing == {
        "billable_metrics": [],
        "meta": {"current_page": 1, "next_page": None, "prev_page": None, "total_pages": 0, "total_count": 0},
    }


def test_subscriptions_are_only_active_unless_status_says_otherwise(fake: FakePlatform, client: httpx.Client) -> None:
    fake.add_subscription("a")
    fake.add_subscription("p", status="pending")
    fake.add_subscription(
        "t", status="terminated", started_at="2023-01-01T10:00:00.123456Z", terminated_at="2024-01-10T00:00:00.999Z"
    )
    fake.add_subscription("c", status="canceled")
    listed = client.get("/api/v1/subscriptions").json()["subscriptions"]
    assert [s["external_id"] for s in listed] == ["a"]
    every = client.get("/api/v1/subscriptions", params={"status[]": ["active", "pending", "terminated", "canceled"]}).json()[
        "subscriptions"
    ]
    assert {s["external_id"]: (s["status"], s["started_at"], s["terminated_at"]) for s in every} == {
        "a": ("active", "2023-01-01T00:00:00.000Z", None),  # lago-api: started_at.iso8601(3)
        "p": ("pending", None, None),
        "t": ("terminated", "2023-01-01T10:00:00.123Z", "2024-01-10T00:00:00Z"),  # terminated_at.iso8601: cut, not rounded
        "c": ("canceled", None, None),
    }
    assert client.get("/api/v1/subscriptions/t", params={"status": "terminated"}).json()["subscription"]["external_id"] == "t"
    missing = client.get("/api/v1/subscriptions/t")
    assert missing.status_code == 404
    assert missing.json() == {"status": 404, "error": "Not Found", "code": "subscription_not_found"}


def test_invoices_show_their_billing_periods_only_one_by_one(fake: FakePlatform, client: httpx.Client) -> None:
    fake.add_subscription("s", external_customer_id="acme")
    fake.add_subscription("other", external_customer_id="globex")
    final = fake.add_invoice("finalized", [("s", "2024-01-01T00:00:00Z", "2024-01-31T23:59:59Z")])
    fake.add_invoice("draft", [("s", "2024-02-01T00:00:00Z", "2024-02-29T23:59:59Z")])
    fake.add_invoice("finalized", [("other", "2024-01-01T00:00:00Z", "2024-01-31T23:59:59Z")])
    listed = client.get("/api/v1/invoices", params={"external_customer_id": "acme", "statuses[]": ["finalized"]}).json()
    assert [(i["lago_id"], i["status"], i["customer"]["external_id"]) for i in listed["invoices"]] == [
        (final["lago_id"], "finalized", "acme")
    ]
    assert "billing_periods" not in listed["invoices"][0]
    shown = client.get(f"/api/v1/invoices/{final['lago_id']}").json()["invoice"]
    assert [
        (p["external_subscription_id"], p["charges_from_datetime"], p["charges_to_datetime"]) for p in shown["billing_periods"]
    ] == [("s", "2024-01-01T00:00:00Z", "2024-01-31T23:59:59Z")]
    assert client.get("/api/v1/invoices/nope").json()["code"] == "invoice_not_found"
    assert client.get("/api/v1/customers/nope").json()["code"] == "customer_not_found"


def test_events_are_listed_newest_first_with_inclusive_bounds_and_counted(client: httpx.Client) -> None:
    store(
        client,
        ("early", "s", "api", "1704067199.999"),  # 2023-12-31T23:59:59.999Z
        ("first", "s", "api", "1704067200"),  # 2024-01-01T00:00:00.000Z
        ("last", "s", "api", "1704153599.999"),  # 2024-01-01T23:59:59.999Z
        ("other-code", "s", "seats", "1704100000"),
        ("other-sub", "t", "api", "1704100000"),
    )
    scope = {
        "external_subscription_id": "s",
        "code": "api",
        "timestamp_from": "2024-01-01T00:00:00Z",
        "timestamp_to": "2024-01-01T23:59:59.999Z",
    }
    listed = client.get("/api/v1/events", params=scope).json()
    assert [(e["transaction_id"], e["timestamp"]) for e in listed["events"]] == [
        ("last", "2024-01-01T23:59:59.999Z"),
        ("first", "2024-01-01T00:00:00.000Z"),
    ]
    counted = client.get("/api/v1/events", params={**scope, "per_page": 1}).json()
    assert len(counted["events"]) == 1 and counted["meta"]["total_count"] == 2 and counted["meta"]["total_pages"] == 2
    assert client.get("/api/v1/events/other-sub").json()["event"]["external_subscription_id"] == "t"
    assert client.get("/api/v1/events/nope").json() == {"status": 404, "error": "Not Found", "code": "event_not_found"}


def test_reads_need_the_key(fake: FakePlatform) -> None:
    answer = httpx.get(f"{fake.url}/api/v1/subscriptions")
    assert answer.status_code == 401 and answer.json() == {"status": 401, "error": "Unauthorized"}


def test_event_loss_answers_200_and_stores_a_seeded_share() -> None:
    def lost_ids(seed: int) -> list[str]:
        with FakePlatform(lago_event_loss=0.1, seed=seed) as lossy, httpx.Client(base_url=lossy.url, headers=AUTH) as http:
            for batch in range(10):
                store(http, *((f"t{batch}-{i}", "s", "api", "1704067200") for i in range(100)))
            assert len(lossy.counts("lago")) + len(lossy.lost()) == 1000
            count = http.get("/api/v1/events", params={"per_page": 1}).json()["meta"]["total_count"]
            assert count == len(lossy.counts("lago"))
            return [event["transaction_id"] for event in lossy.lost()]

    lost = lost_ids(7)
    assert 60 <= len(lost) <= 140
    assert lost == lost_ids(7) and lost != lost_ids(8)


def test_reads_are_rate_limited_like_lago_cloud_when_the_limit_is_on() -> None:
    with FakePlatform(lago_rate_limit=100) as limited, httpx.Client(base_url=limited.url, headers=AUTH) as http:
        answers = [http.get("/api/v1/billable_metrics") for _ in range(51)]
        assert [a.status_code for a in answers] == [200] * 50 + [429]
        assert answers[0].headers["X-RateLimit-Limit"] == "50" and answers[0].headers["X-RateLimit-Remaining"] == "49"
        assert answers[-1].headers["X-RateLimit-Remaining"] == "0" and int(answers[-1].headers["X-RateLimit-Reset"]) <= 1
        assert "Retry-After" not in answers[-1].headers
        # Writes have their own window.
        store(http, ("t", "s", "api", "1704067200"))
    with FakePlatform() as unlimited, httpx.Client(base_url=unlimited.url, headers=AUTH) as http:
        assert "X-RateLimit-Limit" not in http.get("/api/v1/billable_metrics").headers  # self-hosted: no limiter

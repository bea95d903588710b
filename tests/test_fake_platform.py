"""The fake Lago/Hyperline server must behave like the real platforms, or delivery tests prove nothing."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import pytest

from segbill.testing.fake_platform import (
    POISON_ERROR,
    RESET_FORMATS,
    STATUS_FAULTS,
    FakePlatform,
    ResetFormat,
    main,
)

AUTH = {"Authorization": "Bearer test-key"}
LAGO = "/api/v1/events/batch"
HYPERLINE = "/v1/events/batch"


def lago_event(transaction_id: str = "t-0", **fields: Any) -> dict[str, Any]:
    event = {
        "transaction_id": transaction_id,
        "external_subscription_id": "sub-1",
        "code": "api_calls",
        "timestamp": "1704067200.123",
        "properties": {"n": 1},
    }
    event.update(fields)
    return event


def hyperline_event(record_id: str = "r-0", **fields: Any) -> dict[str, Any]:
    event = {
        "customer_id": "cus-1",
        "event_type": "api_call",
        "timestamp": "2024-01-01T00:00:00.123Z",
        "record": {"id": record_id, "n": 1},
    }
    event.update(fields)
    return event


@pytest.fixture
def fake() -> Iterator[FakePlatform]:
    with FakePlatform() as platform:
        yield platform


@pytest.fixture
def client(fake: FakePlatform) -> Iterator[httpx.Client]:
    with connect(fake) as http:
        yield http


def connect(fake: FakePlatform, *, timeout: float = 2.0, authorized: bool = True) -> httpx.Client:
    """A client for the fake; verify=False since it is plain HTTP, and loading the CA bundle
    would cost 40 ms per client."""
    return httpx.Client(base_url=fake.url, headers=AUTH if authorized else {}, timeout=timeout, verify=False)


def send_lago(client: httpx.Client, *events: dict[str, Any], path: str = LAGO) -> httpx.Response:
    return client.post(path, json={"events": list(events)})


# -- auth and routing ----------------------------------------------------------------------------


def test_missing_or_wrong_key_is_401_in_each_platform_format(fake: FakePlatform) -> None:
    with connect(fake, authorized=False) as anonymous:
        lago = anonymous.post(LAGO, json={"events": [lago_event()]})
        hyperline = anonymous.post(HYPERLINE, json=[hyperline_event()], headers={"Authorization": "Bearer wrong"})
    assert (lago.status_code, lago.json()) == (401, {"status": 401, "error": "Unauthorized"})
    assert (hyperline.status_code, hyperline.json()) == (401, {"message": "Missing authentication token"})
    assert fake.events("lago") == [] and fake.events("hyperline") == []


def test_unknown_path_is_404(client: httpx.Client) -> None:
    response = client.post("/api/v2/events", json={})
    assert (response.status_code, response.json()) == (404, {"status": 404, "error": "Not Found", "code": "resource_not_found"})
    assert client.get(LAGO).status_code == 404


def test_lago_path_prefix_is_served_and_recorded(fake: FakePlatform, client: httpx.Client) -> None:
    assert send_lago(client, lago_event(), path="/lago/api/v1/events/batch").status_code == 200
    single = client.post("/lago/api/v1/events", json={"event": lago_event("t-1")})
    assert (single.status_code, single.json()["event"]["transaction_id"]) == (200, "t-1")
    assert [r.path for r in fake.requests()] == ["/lago/api/v1/events/batch", "/lago/api/v1/events"]
    assert all(r.platform == "lago" for r in fake.requests())


def test_chunked_bodies_are_read(fake: FakePlatform, client: httpx.Client) -> None:
    body = b'{"events": [{"transaction_id": "t-0", "code": "api_calls"}]}'
    response = client.post(LAGO, content=iter([body[:10], body[10:]]))
    assert response.status_code == 200
    assert fake.requests()[0].headers["transfer-encoding"] == "chunked"
    assert send_lago(client, lago_event("t-1")).status_code == 200


def test_requests_are_recorded_with_headers_events_status_and_time(fake: FakePlatform, client: httpx.Client) -> None:
    before = time.monotonic()
    send_lago(client, lago_event("a"), lago_event("b"))
    client.post(HYPERLINE, json=[hyperline_event()], headers={"X-Extra": "1"})
    lago, hyperline = fake.requests()
    assert (lago.method, lago.platform, lago.events, lago.status, lago.fault) == ("POST", "lago", 2, 200, None)
    assert lago.headers["authorization"] == "Bearer test-key"
    assert (hyperline.platform, hyperline.events, hyperline.status, hyperline.headers["x-extra"]) == ("hyperline", 1, 201, "1")
    assert before <= lago.at <= hyperline.at <= time.monotonic()
    assert fake.requests("hyperline") == [hyperline]


# -- Lago ----------------------------------------------------------------------------------------


def test_lago_batch_echoes_known_keys_only(fake: FakePlatform, client: httpx.Client) -> None:
    response = send_lago(client, lago_event(external_customer_id="cus-1", externalSubscriptionId="x"))
    assert response.status_code == 200
    assert response.json() == {"events": [lago_event()]}
    assert fake.events("lago") == [lago_event()]
    assert fake.counts("lago") == {"t-0": 1}


def test_lago_batch_is_all_or_nothing_with_errors_keyed_by_index() -> None:
    with FakePlatform(lago_poison={"poisoned"}) as fake, connect(fake) as client:
        events = [
            lago_event("ok-0"),
            lago_event("bad-1", timestamp="2024-01-01T00:00:00Z"),
            lago_event("ok-2", timestamp=1704067200),
            lago_event("bad-3", code=None),
            lago_event("poisoned"),
            lago_event("", properties={"nested": {"a": 1}}),
            lago_event("ok-6", properties={"flag": True, "nested": {"a": [1, None]}, "big": 2**70}),
        ]
        response = send_lago(client, *events)
        assert response.status_code == 422
        assert response.json() == {
            "status": 422,
            "error": "Unprocessable Entity",
            "code": "validation_errors",
            "error_details": {
                "1": {"timestamp": ["invalid_format"]},
                "3": {"code": ["value_is_mandatory"]},
                "4": POISON_ERROR,
                "5": {"transaction_id": ["value_is_mandatory"]},
            },
        }
        assert fake.events("lago") == []
        # Lago accepts any property shape: no path answers a `properties` error.
        assert send_lago(client, events[0], events[2], events[6]).status_code == 200
        assert fake.counts("lago") == {"ok-0": 1, "ok-2": 1, "ok-6": 1}


def test_lago_batch_size_limits() -> None:
    with FakePlatform(lago_batch_limit=3) as fake, connect(fake) as client:
        empty = send_lago(client)
        too_many = send_lago(client, *(lago_event(str(i)) for i in range(4)))
        assert (empty.status_code, empty.json()["error_details"]) == (422, {"events": ["no_events"]})
        assert (too_many.status_code, too_many.json()["error_details"]) == (422, {"events": ["too_many_events"]})
        assert send_lago(client, *(lago_event(str(i)) for i in range(3))).status_code == 200
        assert client.post(LAGO, content=b"not json").status_code == 400
        for events in ({"0": lago_event()}, "t-0", 7):
            not_an_array = client.post(LAGO, json={"events": events})
            assert (not_an_array.status_code, not_an_array.json()["error_details"]) == (422, {"events": ["no_events"]})


def test_lago_postgres_resend_is_value_already_exist_and_rejects_the_batch(fake: FakePlatform, client: httpx.Client) -> None:
    assert send_lago(client, lago_event("t-0")).status_code == 200
    response = send_lago(client, lago_event("t-new"), lago_event("t-0"))
    assert response.status_code == 422
    assert response.json()["error_details"] == {"1": {"transaction_id": ["value_already_exist"]}}
    assert fake.counts("lago") == {"t-0": 1}
    # Same transaction_id under another subscription is another event.
    assert send_lago(client, lago_event("t-0", external_subscription_id="sub-2")).status_code == 200


def test_lago_duplicates_are_checked_only_after_other_errors_and_within_a_batch(client: httpx.Client) -> None:
    send_lago(client, lago_event("t-0"))
    other_error = send_lago(client, lago_event("t-0"), lago_event("t-1", code=""))
    assert other_error.json()["error_details"] == {"1": {"code": ["value_is_mandatory"]}}
    twice = send_lago(client, lago_event("t-2"), lago_event("t-2", external_subscription_id="sub-2"))
    assert twice.json()["error_details"] == {"1": {"transaction_id": ["value_already_exist"]}}  # by id alone


def test_lago_clickhouse_replaces_same_timestamp_but_counts_a_shifted_one_twice() -> None:
    with FakePlatform(lago_store="clickhouse") as fake, connect(fake) as client:
        assert send_lago(client, lago_event("t-0", timestamp="1704067200.100")).status_code == 200
        assert send_lago(client, lago_event("t-0", timestamp="1704067200.1", properties={"n": 2})).status_code == 200
        assert fake.counts("lago") == {"t-0": 1}
        assert fake.events("lago")[0]["properties"] == {"n": 2}
        assert send_lago(client, lago_event("t-0", timestamp="1704067201.100")).status_code == 200
        assert fake.counts("lago") == {"t-0": 2}
        assert fake.writes("lago") == {"t-0": 3}
        # The key is (subscription, code, timestamp to the millisecond, transaction_id).
        assert send_lago(client, lago_event("t-0", timestamp="1704067201.1009")).status_code == 200
        assert fake.counts("lago") == {"t-0": 2}
        assert send_lago(client, lago_event("t-0", timestamp="1704067201.100", code="other")).status_code == 200
        assert fake.counts("lago") == {"t-0": 3}


def test_lago_before_v1_39_stores_the_rest_of_a_batch_refused_for_a_duplicate() -> None:
    with FakePlatform(lago_pre_v1_39=True) as fake, connect(fake) as client:
        assert send_lago(client, lago_event("t-0")).status_code == 200
        refused = send_lago(client, lago_event("t-1"), lago_event("t-0"), lago_event("t-2"))
        assert (refused.status_code, refused.json()["error_details"]) == (422, {"1": {"transaction_id": ["value_already_exist"]}})
        assert fake.counts("lago") == {"t-0": 1, "t-1": 1, "t-2": 1}
        assert fake.stored_by_refused_batches() == ["t-1", "t-2"]
        invalid = send_lago(client, lago_event("t-3"), lago_event("t-4", code=""))
        assert invalid.status_code == 422 and "t-3" not in fake.counts("lago")  # other errors still store nothing


def test_lago_single_event_endpoint(fake: FakePlatform, client: httpx.Client) -> None:
    ok = client.post("/api/v1/events", json={"event": lago_event()})
    duplicate = client.post("/api/v1/events", json={"event": lago_event()})
    invalid = client.post("/api/v1/events", json={"event": lago_event("t-1", timestamp="yesterday")})
    assert (ok.status_code, ok.json()) == (200, {"event": lago_event()})
    assert (duplicate.status_code, duplicate.json()["error_details"]) == (422, {"transaction_id": ["value_already_exist"]})
    assert (invalid.status_code, invalid.json()["error_details"]) == (422, {"timestamp": ["invalid_format"]})


def test_lago_missing_timestamp_is_the_time_received(fake: FakePlatform, client: httpx.Client) -> None:
    event = lago_event()
    del event["timestamp"]
    send_lago(client, event)
    assert abs(fake.events("lago")[0]["timestamp"] - time.time()) < 5


# -- Hyperline -----------------------------------------------------------------------------------


def test_hyperline_batch_stores_good_events_and_echoes_bad_ones_without_reason() -> None:
    with FakePlatform(hyperline_customers={"cus-1"}) as fake, connect(fake) as client:
        bad = [
            hyperline_event("r-1", customer_id="cus-unknown"),
            hyperline_event("r-2", event_type=""),
            hyperline_event("r-3", timestamp="yesterday"),
            hyperline_event("r-4", record={"id": "r-4", "nested": {"a": 1}}),
            hyperline_event("r-5", record={"id": "r-5", "list": [{"a": 1}]}),
            hyperline_event("r-6", record={"n": 1}),
            hyperline_event("r-7", record={"id": "r-7", "none": None}),
        ]
        good = [
            hyperline_event("r-0", record={"id": "r-0", "tags": ["a", 1, True], "ok": False}),
            hyperline_event("r-8", timestamp=1704067200123),
        ]
        response = client.post(HYPERLINE, json=[good[0], *bad, good[1]])
        assert response.status_code == 201
        assert response.json() == {"events_created": good, "events_failed": bad}
        assert fake.events("hyperline") == good
        v2 = client.post("/v2/events/batch", json=[hyperline_event("r-9"), bad[0]])
        assert v2.json() == {"events_accepted": [hyperline_event("r-9")], "events_failed": [bad[0]]}


def test_hyperline_resend_updates_never_duplicates(fake: FakePlatform, client: httpx.Client) -> None:
    client.post(HYPERLINE, json=[hyperline_event("r-0")])
    client.post(HYPERLINE, json=[hyperline_event("r-0", record={"id": "r-0", "n": 2})])
    assert fake.counts("hyperline") == {"r-0": 1}
    assert fake.writes("hyperline") == {"r-0": 2}
    assert fake.events("hyperline")[0]["record"]["n"] == 2
    single = client.post("/v1/events", json=hyperline_event("r-1"))
    assert (single.status_code, single.json()) == (201, hyperline_event("r-1"))
    assert client.post("/v1/events", json=hyperline_event("r-2", event_type="")).status_code == 400


@pytest.mark.parametrize("body", [b"not json", b"{}", b"[]", b"[" + b"{}," * 5000 + b"{}]"])
def test_hyperline_bad_body_is_400_with_a_message(client: httpx.Client, body: bytes) -> None:
    response = client.post(HYPERLINE, content=body)
    assert response.status_code == 400
    assert set(response.json()) == {"message"}


def test_hyperline_malformed_trigger_fails_the_whole_request() -> None:
    with FakePlatform(hyperline_malformed={"r-bad"}) as fake, connect(fake) as client:
        assert client.post(HYPERLINE, json=[hyperline_event("r-0"), hyperline_event("r-bad")]).status_code == 400
        assert fake.events("hyperline") == []
        assert client.post(HYPERLINE, json=[hyperline_event("r-0")]).status_code == 201


# -- faults --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", sorted(STATUS_FAULTS - {"429"}))
def test_scripted_status_faults_answer_in_the_platform_format_and_store_nothing(
    fake: FakePlatform, client: httpx.Client, fault: str
) -> None:
    fake.script([fault, fault])
    lago = send_lago(client, lago_event())
    hyperline = client.post(HYPERLINE, json=[hyperline_event()])
    assert lago.status_code == hyperline.status_code == int(fault)
    assert lago.json()["status"] == int(fault)
    assert "message" in hyperline.json()
    if fault == "403":
        assert lago.json() == {"status": 403, "error": "Forbidden", "code": "write_action_not_allowed_for_event"}
    assert fake.events("lago") == [] and fake.events("hyperline") == []
    assert send_lago(client, lago_event()).status_code == 200


def test_reset_drops_the_connection_before_storing(fake: FakePlatform, client: httpx.Client) -> None:
    fake.script(["reset"])
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        send_lago(client, lago_event())
    assert fake.events("lago") == []
    assert fake.requests()[0].status is None and fake.requests()[0].fault == "reset"
    assert send_lago(client, lago_event()).status_code == 200


def test_lost_stores_then_drops_the_answer(fake: FakePlatform, client: httpx.Client) -> None:
    fake.script(["lost", "lost"])
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        send_lago(client, lago_event())
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        client.post(HYPERLINE, json=[hyperline_event()])
    assert fake.counts("lago") == {"t-0": 1} and fake.counts("hyperline") == {"r-0": 1}
    resend = send_lago(client, lago_event())
    assert resend.json()["error_details"] == {"0": {"transaction_id": ["value_already_exist"]}}


def test_hang_outlasts_the_client_timeout() -> None:
    with FakePlatform(hang_seconds=5) as fake, connect(fake, timeout=0.2) as client:
        fake.script(["hang"])
        started = time.monotonic()
        with pytest.raises(httpx.TimeoutException):
            send_lago(client, lago_event())
        assert time.monotonic() - started < 2
        assert fake.events("lago") == []
        assert send_lago(client, lago_event()).status_code == 200


def test_scripted_429_carries_each_platform_headers() -> None:
    with FakePlatform(retry_after=3) as fake, connect(fake) as client:
        fake.script(["429", "429"])
        lago = send_lago(client, lago_event())
        hyperline = client.post(HYPERLINE, json=[hyperline_event()])
        assert lago.status_code == 429 and "retry-after" not in lago.headers
        assert (lago.headers["x-ratelimit-limit"], lago.headers["x-ratelimit-remaining"], lago.headers["x-ratelimit-reset"]) == (
            "50",
            "0",
            "3",
        )
        assert (hyperline.status_code, hyperline.text, hyperline.headers["retry-after"]) == (429, "Too many requests", "3")
        assert (hyperline.headers["x-ratelimit-limit"], hyperline.headers["x-ratelimit-remaining"]) == ("1000", "0")
        reset_at = reset_epoch(hyperline.headers["x-ratelimit-reset"], "epoch-seconds")
        assert 2 <= reset_at - time.time() <= 4
        assert fake.throttled() == 2 and fake.throttled("lago") == 1


def test_random_faults_are_deterministic_per_seed() -> None:
    def statuses(seed: int) -> list[int]:
        with FakePlatform(seed=seed, faults={"503": 0.3, "429": 0.2}) as fake, connect(fake) as client:
            return [send_lago(client, lago_event(str(i))).status_code for i in range(40)]

    first = statuses(7)
    assert first == statuses(7)
    assert {200, 429, 503} == set(first)
    assert first != statuses(8)


def test_random_drop_faults_and_reset_method() -> None:
    with FakePlatform(faults={"reset": 0.5}, seed=1) as fake, connect(fake) as client:
        outcomes = []
        for i in range(20):
            try:
                outcomes.append(send_lago(client, lago_event(str(i))).status_code)
            except (httpx.ReadError, httpx.RemoteProtocolError):
                outcomes.append(None)
        assert None in outcomes and 200 in outcomes
        assert len(fake.events("lago")) == outcomes.count(200)
        fake.script(["503"])
        fake.reset()
        assert fake.events("lago") == [] and fake.requests() == []
        # reset() reseeds: the same draws again, and the script is gone.
        replay = []
        for i in range(20):
            try:
                replay.append(send_lago(client, lago_event(str(i))).status_code)
            except (httpx.ReadError, httpx.RemoteProtocolError):
                replay.append(None)
        assert replay == outcomes


def test_latency_delays_each_answer() -> None:
    with FakePlatform(latency=0.15) as fake, connect(fake) as client:
        started = time.monotonic()
        send_lago(client, lago_event())
        assert time.monotonic() - started >= 0.15


def test_unknown_faults_are_refused() -> None:
    with pytest.raises(ValueError):
        FakePlatform(faults={"504": 0.1})
    with pytest.raises(ValueError):
        FakePlatform(faults={"503": 0.7, "429": 0.7})
    with FakePlatform() as fake, pytest.raises(ValueError):
        fake.script(["boom"])


# -- rate limits ---------------------------------------------------------------------------------


class Clock:
    """A clock the fake reads arrival times from, moved by the test instead of sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_lago_rate_limit_fixed_one_second_windows() -> None:
    clock = Clock()
    with FakePlatform(lago_rate_limit=3, clock=clock) as fake, connect(fake) as client:
        responses = [send_lago(client, lago_event(str(i))) for i in range(4)]
        assert [r.status_code for r in responses] == [200, 200, 200, 429]
        assert [r.headers["x-ratelimit-remaining"] for r in responses] == ["2", "1", "0", "0"]
        assert all(r.headers["x-ratelimit-limit"] == "3" and r.headers["x-ratelimit-reset"] == "1" for r in responses)
        assert "retry-after" not in responses[3].headers
        assert fake.throttled("lago") == 1 and fake.counts("lago") == {"0": 1, "1": 1, "2": 1}
        clock.now += 0.999  # still the same window
        assert send_lago(client, lago_event("3")).status_code == 429
        clock.now += 0.001
        again = send_lago(client, lago_event("3"))
        assert (again.status_code, again.headers["x-ratelimit-remaining"]) == (200, "2")
        assert client.post("/nothing").headers.get("x-ratelimit-limit") is None


def test_a_request_served_out_of_arrival_order_is_never_told_a_reset_past_the_window() -> None:
    """Connections are served by threads: a request that arrived just before another opened the
    window may be counted after it. Its reset must still be at most the 1 s window."""
    clock = Clock()
    with FakePlatform(lago_rate_limit=50, clock=clock) as fake, connect(fake) as client:
        assert send_lago(client, lago_event("0")).status_code == 200  # opens the window
        clock.now -= 0.001  # arrived just before, counted after
        late = send_lago(client, lago_event("1"))
        assert late.headers["x-ratelimit-reset"] == "1" and late.headers["x-ratelimit-remaining"] == "48"


def reset_epoch(value: str, form: ResetFormat) -> float:
    """Hyperline's reset date, read in the form it was asked for."""
    if form == "epoch-seconds":
        assert re.fullmatch(r"\d{10}", value)
        return int(value)
    if form == "epoch-ms":
        assert re.fullmatch(r"\d{13}", value)
        return int(value) / 1000
    if form == "http-date":
        return parsedate_to_datetime(value).timestamp()
    assert value.endswith("Z")
    return datetime.fromisoformat(value).timestamp()


@pytest.mark.parametrize("form", RESET_FORMATS)
def test_hyperline_announces_its_ten_second_window_on_every_answer(form: ResetFormat) -> None:
    with FakePlatform(hyperline_rate_limit=2, hyperline_reset_format=form) as fake, connect(fake) as client:
        responses = [
            client.post(HYPERLINE, content=b"not json"),
            *(client.post(HYPERLINE, json=[hyperline_event(str(i))]) for i in range(2)),
        ]
        assert [r.status_code for r in responses] == [400, 201, 429]
        assert [r.headers["x-ratelimit-remaining"] for r in responses] == ["1", "0", "0"]
        assert all(r.headers["x-ratelimit-limit"] == "2" for r in responses)
        for response in responses:
            assert (
                8 <= reset_epoch(response.headers["x-ratelimit-reset"], form) - time.time() <= 11
            )  # rounded to a second at most
        assert responses[2].text == "Too many requests"
        assert 9 <= int(responses[2].headers["retry-after"]) <= 10
        assert fake.throttled("hyperline") == 1 and fake.counts("hyperline") == {"0": 1}
        # Lago is not limited by Hyperline's window, and does not announce it.
        lago = send_lago(client, lago_event())
        assert lago.status_code == 200 and "x-ratelimit-limit" not in lago.headers


def test_the_fake_hyperline_has_the_real_limit_by_default(fake: FakePlatform, client: httpx.Client) -> None:
    response = client.post(HYPERLINE, json=[hyperline_event()])
    assert (response.headers["x-ratelimit-limit"], response.headers["x-ratelimit-remaining"]) == ("1000", "999")


# -- command line --------------------------------------------------------------------------------


def test_cli_refuses_a_non_loopback_host(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--host", "0.0.0.0", "--port", "0"]) == 2
    assert "loopback" in capsys.readouterr().err


def test_cli_serves_until_interrupted_and_prints_the_count() -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "segbill.testing.fake_platform",
            "--port",
            "0",
            "--api-key",
            "k",
            "--hyperline-reset-format",
            "iso8601",
            "--lago-pre-v1-39",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = re.search(r"http://127\.0\.0\.1:\d+", process.stdout.readline())
        assert url
        response = httpx.post(url[0] + LAGO, json={"events": [lago_event()]}, headers={"Authorization": "Bearer k"})
        assert response.status_code == 200
        refused = httpx.post(
            url[0] + LAGO, json={"events": [lago_event("t-1"), lago_event()]}, headers={"Authorization": "Bearer k"}
        )
        assert refused.status_code == 422  # and, as before Lago v1.39, t-1 is stored
        hyperline = httpx.post(url[0] + "/v1/events", json=hyperline_event(), headers={"Authorization": "Bearer k"})
        assert reset_epoch(hyperline.headers["x-ratelimit-reset"], "iso8601") > time.time()
        process.terminate()
        out, _ = process.communicate(timeout=5)
    finally:
        process.kill()
    assert "stored 2 Lago and 1 Hyperline events" in out

"""A fake Lago and Hyperline ingest server on loopback: for segbill's tests, its benchmarks, and for
trying segbill without an account (`python -m segbill.testing.fake_platform --port 8080`).

It imitates what the real platforms do, as their code and references show (Lago: lago-api v1.51,
its OpenAPI spec and Go events-processor; Hyperline: its API reference): validation, all-or-nothing
Lago batches (or, as before Lago v1.39, batches refused for a duplicate that store their other
events), duplicates per Lago store, Hyperline partial failures and idempotent upserts, rate limits
and their headers. It serves Lago's read API over an organization a test loads (billable metrics,
subscriptions, invoices, the events stored). It injects faults, scripted or at seeded random
rates, so a client's "every event stored exactly once" promise can be checked end to end.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import ipaddress
import math
import os
import random
import re
import signal
import socket
import struct
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

import orjson

Platform = Literal["lago", "hyperline"]
Store = Literal["postgres", "clickhouse"]
ResetFormat = Literal["epoch-seconds", "epoch-ms", "http-date", "iso8601"]
RESET_FORMATS: tuple[ResetFormat, ...] = ("epoch-seconds", "epoch-ms", "http-date", "iso8601")
"""Forms of Hyperline's X-RateLimit-Reset, "the date and time when the window resets" (its docs
do not fix one). Epoch seconds are rounded up (as the common Node limiter express-rate-limit
does: the hardest case for a client's pacing), HTTP dates rounded down to the second."""

STATUS_FAULTS = frozenset({"400", "401", "403", "404", "408", "429", "500", "501", "502", "503"})
"""Faults answered with that HTTP status, in the platform's own error format."""
DROP_FAULTS = frozenset({"reset", "lost", "hang"})
"""reset: RST before storing. lost: store, then close without answering. hang: never answer."""
FAULTS = STATUS_FAULTS | DROP_FAULTS

LAGO_CLOUD_BATCH_RATE = 50
"""Lago Cloud's documented limit for "all other endpoints" (the batch endpoint is not named):
the X-RateLimit-Limit of a scripted 429 when no limit is set."""
LAGO_SINGLE_RATE_FACTOR = 10
"""Lago Cloud documents 500/s for `POST /events` against 50/s for all other endpoints."""
LAGO_CLOUD_READ_RATE = 50
"""Cloud's limit per second on "all other endpoints": the read API, when the rate limit is on."""
LAGO_PER_PAGE = 100
"""lago-api's default page size (concerns/pagination.rb)."""
LAGO_FIELDS = ("transaction_id", "external_subscription_id", "code", "timestamp", "properties", "precise_total_amount_cents")
"""The only event keys Lago keeps; the rest (external_customer_id included) are dropped."""
HYPERLINE_MAX_BATCH = 5000
HYPERLINE_WINDOW = 10.0
HYPERLINE_MAX_TAKE = 100
HYPERLINE_RATE_LIMIT = 1000
"""Hyperline ingest: 1,000 requests per 10 s window, announced on every answer."""
POISON_ERROR = "expression_evaluation_failed: undefined variable in expression"

_LAGO_PATH = re.compile(r"(?:/[^/]+)*/api/v1/events(?P<batch>/batch)?/?")
_LAGO_READ_PATH = re.compile(r"(?:/[^/]+)*?/api/v1/(?P<resource>[a-z_]+)(?:/(?P<id>[^/]+)(?:/(?P<sub>[a-z_]+))?)?/?")
_HYPERLINE_PATHS = {"/v1/events/batch": "batch", "/v2/events/batch": "batch_v2", "/v1/events": "single"}
_HYPERLINE_CUSTOMER = re.compile(r"/v1/customers/[^/]+")
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?")
_NOT_JSON = object()
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Request:
    """One request as received, and its answer: `status` None means dropped or hung."""

    method: str
    path: str
    platform: Platform | None
    headers: dict[str, str]
    """Every header, names lower-cased (repeats joined with ", ")."""
    events: int
    status: int | None
    fault: str | None
    at: float
    """The fake's `clock` (time.monotonic unless a test gave its own) at arrival."""


@dataclass
class _Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


class _Window:
    """A fixed window opened by the first request after the previous window ended, so a burst's
    outcome does not depend on where a clock-second boundary happens to fall."""

    def __init__(self, limit: int, length: float) -> None:
        self.limit = limit
        self.length = length
        self.start = -math.inf
        self.used = 0

    def take(self, now: float) -> bool:
        if now >= self.start + self.length:
            self.start, self.used = now, 0
        if self.used >= self.limit:
            return False
        self.used += 1
        return True

    def state(self, now: float) -> tuple[int, float]:
        """(requests left, seconds until the window resets), without using a request."""
        if now >= self.start + self.length:
            return self.limit, self.length
        # A request that arrived just before another one opened the window is served in it: its
        # reset is still at most the window (Lago never announces more).
        return self.limit - self.used, min(self.length, self.start + self.length - now)


class FakePlatform:
    """Lago and Hyperline on one loopback port; use as a context manager or start()/close().

    Public attributes a test may change while it runs: `lago_poison` (codes or transaction ids
    answered with an expression error), `lago_event_loss` (the share of accepted Lago events
    silently never stored, as in lago#637), `hyperline_event_loss` (the same for Hyperline),
    `hyperline_customers` (None accepts any customer id; otherwise the only customers that exist,
    for ingest and for `GET /v1/customers/{id}`), `hyperline_malformed` (record ids that make a whole Hyperline request answer 400),
    `latency`. `clock` gives each request's arrival time (seconds, monotonic), which the rate
    limit windows count in: a test moves it instead of sleeping. The organization Lago's read API serves is loaded with `add_billable_metric`,
    `add_subscription` and `add_invoice`.
    """

    def __init__(
        self,
        api_key: str = "test-key",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        lago_batch_limit: int = 100,
        lago_store: Store = "postgres",
        lago_rate_limit: int | None = None,
        lago_read_rate_limit: int | None = None,
        lago_event_loss: float = 0.0,
        lago_poison: Iterable[str] = (),
        lago_pre_v1_39: bool = False,
        hyperline_rate_limit: int | None = HYPERLINE_RATE_LIMIT,
        hyperline_reset_format: ResetFormat = "epoch-seconds",
        hyperline_customers: Collection[str] | None = None,
        hyperline_event_loss: float = 0.0,
        hyperline_malformed: Iterable[str] = (),
        latency: float = 0.0,
        seed: int = 0,
        faults: Mapping[str, float] | None = None,
        retry_after: int = 1,
        hang_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if lago_store not in ("postgres", "clickhouse"):
            raise ValueError(f"lago_store must be 'postgres' or 'clickhouse', not {lago_store!r}")
        if hyperline_reset_format not in RESET_FORMATS:
            raise ValueError(f"hyperline_reset_format must be one of {RESET_FORMATS}, not {hyperline_reset_format!r}")
        self.faults = dict(faults or {})
        _check_faults(self.faults)
        if sum(self.faults.values()) > 1 or any(p < 0 for p in self.faults.values()):
            raise ValueError("fault rates must be >= 0 and add up to at most 1")
        self.host = _loopback(host)
        self.port = port
        self.api_key = api_key
        self.lago_batch_limit = lago_batch_limit
        self.lago_store = lago_store
        self.lago_rate_limit = lago_rate_limit
        self.lago_read_rate_limit = lago_read_rate_limit
        self.lago_event_loss = lago_event_loss
        self.lago_organization = LagoOrganization()
        self.lago_poison = set(lago_poison)
        self.lago_pre_v1_39 = lago_pre_v1_39
        self.hyperline_rate_limit = hyperline_rate_limit
        self.hyperline_reset_format = hyperline_reset_format
        self.hyperline_customers = None if hyperline_customers is None else set(hyperline_customers)
        self.hyperline_malformed = set(hyperline_malformed)
        self.hyperline_event_loss = hyperline_event_loss
        self.latency = latency
        self.seed = seed
        self.retry_after = retry_after
        self.hang_seconds = hang_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._served = threading.Condition()  # notified after each request is answered
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.reset()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakePlatform:
        self._server = _Server((self.host, self.port), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-platform", daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and cut open keep-alive connections, so clients cannot talk to a stopped fake."""
        server, self._server = self._server, None
        if server is None:
            return
        server.closing.set()
        server.shutdown()
        server.cut_connections()
        server.server_close()
        assert self._thread is not None
        self._thread.join()

    def __enter__(self) -> FakePlatform:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakePlatform is not started")
        return f"http://{self.host}:{self._server.server_address[1]}"

    # -- test controls and introspection -------------------------------------------------------

    def reset(self) -> None:
        """Forget stored events, requests, scripted faults and rate windows; reseed the dice."""
        with self._lock:
            self._rng = random.Random(self.seed)
            self._script: deque[str] = deque()
            self._lago_rows: dict[tuple[Any, ...], dict[str, Any]] = {}
            self._hyperline_rows: dict[tuple[str, str], Any] = {}
            self._writes: dict[Platform, Counter[str]] = {"lago": Counter(), "hyperline": Counter()}
            self._stored_by_refused: list[str] = []
            self._requests: list[Request] = []
            self._windows: dict[str, _Window] = {}
            self._lago_lost: list[dict[str, Any]] = []
            self._hyperline_lost: list[dict[str, Any]] = []
            self._lago_scopes: dict[tuple[str, str], dict[tuple[Any, ...], int]] = {}  # (subscription, code) -> stored key -> ms
            self._loss_rng = random.Random(f"{self.seed}:loss")
            read_limit = self.lago_read_rate_limit or (LAGO_CLOUD_READ_RATE if self.lago_rate_limit else None)
            if read_limit:
                self._windows["lago:read"] = _Window(read_limit, 1.0)
            if self.lago_rate_limit:
                self._windows["lago:batch"] = _Window(self.lago_rate_limit, 1.0)
                self._windows["lago:single"] = _Window(self.lago_rate_limit * LAGO_SINGLE_RATE_FACTOR, 1.0)
            if self.hyperline_rate_limit:
                self._windows["hyperline"] = _Window(self.hyperline_rate_limit, HYPERLINE_WINDOW)

    def script(self, faults: Iterable[str]) -> None:
        """Queue faults for the next requests, one each, in order, before any random fault."""
        faults = list(faults)
        _check_faults(faults)
        with self._lock:
            self._script.extend(faults)

    def events(self, platform: Platform) -> list[dict[str, Any]]:
        """Stored events as the platform keeps them (Lago: known keys only), oldest first."""
        with self._lock:
            stored = self._lago_rows if platform == "lago" else self._hyperline_rows
            copy: list[dict[str, Any]] = orjson.loads(orjson.dumps(list(stored.values())))
            return copy

    def counts(self, platform: Platform) -> dict[str, int]:
        """Stored events per idempotency key (Lago transaction_id, Hyperline record.id): what
        billing would count. Every value 1 means every event stored exactly once."""
        with self._lock:
            stored = self._lago_rows if platform == "lago" else self._hyperline_rows
            return dict(Counter(key[1] for key in stored))

    def writes(self, platform: Platform) -> dict[str, int]:
        """Accepted writes per idempotency key, replacements and upserts included: above 1
        means the client sent again something already stored."""
        with self._lock:
            return dict(self._writes[platform])

    def stored_by_refused_batches(self) -> list[str]:
        """Lago transaction ids stored by a batch answered 422 (only `lago_pre_v1_39` does that)."""
        with self._lock:
            return list(self._stored_by_refused)

    def wait_until(self, condition: Callable[[], bool], timeout: float = 30.0) -> bool:
        """Block until `condition()` holds, checked again after each request the fake answers
        (a test waits on a client in another process without polling); False after `timeout`."""
        deadline = time.monotonic() + timeout
        with self._served:
            while not condition():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._served.wait(left)
        return True

    def requests(self, platform: Platform | None = None) -> list[Request]:
        with self._lock:
            return [r for r in self._requests if platform is None or r.platform == platform]

    def throttled(self, platform: Platform | None = None) -> int:
        """How many 429s were sent, from the rate limiters and injected faults alike."""
        return sum(1 for r in self.requests(platform) if r.status == 429)

    def summary(self) -> str:
        with self._lock:
            return (
                f"stored {len(self._lago_rows)} Lago and {len(self._hyperline_rows)} Hyperline events "
                f"from {len(self._requests)} requests ({sum(r.status == 429 for r in self._requests)} throttled)"
            )

    def lost(self, platform: Platform = "lago") -> list[dict[str, Any]]:
        """Events answered 2xx and never stored (`lago_event_loss`, `hyperline_event_loss`), in
        arrival order."""
        with self._lock:
            gone = self._lago_lost if platform == "lago" else self._hyperline_lost
            lost: list[dict[str, Any]] = orjson.loads(orjson.dumps(gone))
            return lost

    # -- the organization Lago's read API serves ----------------------------------------------

    def add_billable_metric(
        self, code: str, *, aggregation_type: str = "count_agg", field_name: str | None = None
    ) -> dict[str, Any]:
        metric: dict[str, Any] = {
            "lago_id": _lago_id("bm", code),
            "name": code,
            "code": code,
            "description": None,
            "aggregation_type": aggregation_type,
            "weighted_interval": None,
            "recurring": False,
            "rounding_function": None,
            "rounding_precision": None,
            "created_at": "2023-01-01T00:00:00Z",
            "field_name": field_name,
            "expression": None,
            "filters": [],
        }
        with self._lock:
            self.lago_organization.billable_metrics.append(metric)
        return metric

    def add_subscription(
        self,
        external_id: str,
        *,
        external_customer_id: str | None = None,
        status: str = "active",
        started_at: str | None = "2023-01-01T00:00:00Z",
        terminated_at: str | None = None,
        plan_code: str = "standard",
    ) -> dict[str, Any]:
        """A subscription (and its customer, if new). Pending and canceled ones have not started.
        Times are shown as lago-api v1.51 serializes them: `started_at` to the millisecond
        (`iso8601(3)`), the others to the second, their fraction cut off (`iso8601`)."""
        customer = self._customer(external_customer_id or f"cus-{external_id}")
        started_at, terminated_at = _lago_shown(started_at, 3), _lago_shown(terminated_at, 0)
        subscription = {
            "lago_id": _lago_id("sub", f"{external_id}:{len(self.lago_organization.subscriptions)}"),
            "external_id": external_id,
            "lago_customer_id": customer["lago_id"],
            "external_customer_id": customer["external_id"],
            "name": None,
            "plan_code": plan_code,
            "status": status,
            "billing_time": "calendar",
            "subscription_at": _lago_shown(started_at, 0) or "2023-01-01T00:00:00Z",
            "started_at": None if status in ("pending", "canceled") else started_at,
            "trial_ended_at": None,
            "ending_at": None,
            "terminated_at": terminated_at if status == "terminated" else None,
            "canceled_at": terminated_at if status == "canceled" else None,
            "created_at": _lago_shown(started_at, 0) or "2023-01-01T00:00:00Z",
            "previous_plan_code": None,
            "next_plan_code": None,
            "downgrade_plan_date": None,
        }
        with self._lock:
            self.lago_organization.subscriptions.append(subscription)
        return subscription

    def add_invoice(self, status: str, periods: Iterable[tuple[str, str, str]]) -> dict[str, Any]:
        """An invoice covering (external subscription id, charges from, charges to) periods, for
        the customer of the first one's subscription."""
        organization = self.lago_organization
        billing_periods = []
        owners = []
        for external_id, start, end in periods:
            subscription = next(s for s in organization.subscriptions if s["external_id"] == external_id)
            owners.append(subscription["lago_customer_id"])
            billing_periods.append(
                {
                    "lago_subscription_id": subscription["lago_id"],
                    "external_subscription_id": external_id,
                    "lago_plan_id": _lago_id("plan", subscription["plan_code"]),
                    "subscription_from_datetime": start,
                    "subscription_to_datetime": end,
                    "charges_from_datetime": start,
                    "charges_to_datetime": end,
                    "invoicing_reason": "subscription_periodic",
                }
            )
        customer = next(c for c in organization.customers if c["lago_id"] == owners[0])
        sequence = len(organization.invoices) + 1
        invoice = {
            "lago_id": _lago_id("inv", str(sequence)),
            "sequential_id": sequence,
            "number": f"SEG-{sequence:03d}",
            "issuing_date": billing_periods[-1]["charges_to_datetime"][:10],
            "invoice_type": "subscription",
            "status": status,
            "payment_status": "pending",
            "currency": "USD",
            "total_amount_cents": 0,
            "customer": {"lago_id": customer["lago_id"], "external_id": customer["external_id"], "name": customer["name"]},
            "billing_periods": billing_periods,
        }
        with self._lock:
            organization.invoices.append(invoice)
        return invoice

    def _customer(self, external_id: str) -> dict[str, Any]:
        with self._lock:
            for customer in self.lago_organization.customers:
                if customer["external_id"] == external_id:
                    return customer
            customer = {
                "lago_id": _lago_id("cus", external_id),
                "external_id": external_id,
                "name": external_id,
                "created_at": "2023-01-01T00:00:00Z",
            }
            self.lago_organization.customers.append(customer)
            return customer

    # -- request handling ----------------------------------------------------------------------

    def _dispatch(self, method: str, path: str, headers: dict[str, str], body: bytes, arrival: float) -> _Reply | str:
        """Answer one request: a reply to send, or the name of a drop fault to act out."""
        platform, endpoint = _route(method, path)
        try:
            payload = orjson.loads(body) if body else _NOT_JSON
        except orjson.JSONDecodeError:
            payload = _NOT_JSON
        with self._lock:
            fault = self._next_fault()
            outcome: _Reply | str
            if fault in ("reset", "hang"):
                outcome = fault
            elif fault in STATUS_FAULTS:
                outcome = self._fault_reply(platform, endpoint, int(fault))
            else:
                outcome = self._serve(platform, endpoint, headers, payload, arrival, path)
            window_name = _window_name(platform, endpoint)
            if (
                isinstance(outcome, _Reply)
                and platform is not None
                and window_name in self._windows
                and "X-RateLimit-Limit" not in outcome.headers
            ):
                outcome.headers.update(self._limit_headers(window_name, arrival))
            if fault == "lost":
                outcome = fault
            status = outcome.status if isinstance(outcome, _Reply) else None
            self._requests.append(
                Request(method, path, platform, headers, _event_count(platform, endpoint, payload), status, fault, arrival)
            )
        with self._served:
            self._served.notify_all()
        return outcome

    def _next_fault(self) -> str | None:
        if self._script:
            return self._script.popleft()
        if not self.faults:
            return None
        draw = self._rng.random()
        for name, rate in self.faults.items():
            if draw < rate:
                return name
            draw -= rate
        return None

    def _serve(
        self, platform: Platform | None, endpoint: str, headers: dict[str, str], payload: Any, now: float, path: str
    ) -> _Reply:
        if platform is None:
            return _lago_error(404, code="resource_not_found")
        if headers.get("authorization") != f"Bearer {self.api_key}":
            return _lago_error(401) if platform == "lago" else _message(401, "Missing authentication token")
        window = self._windows.get(_window_name(platform, endpoint))
        if window is not None and not window.take(now):
            _, reset_in = window.state(now)
            return self._too_many(platform, endpoint, reset_in, now)
        if platform == "lago":
            return self._lago_read(path) if endpoint == "read" else self._lago_request(endpoint, payload)
        if endpoint == "events":
            return self._hyperline_events_listed(parse_qs(urlsplit(path).query))
        if endpoint == "customer":
            return self._hyperline_customer(unquote(urlsplit(path).path.removeprefix("/v1/customers/")))
        return self._hyperline_event(payload) if endpoint == "single" else self._hyperline_batch(payload, endpoint)

    def _fault_reply(self, platform: Platform | None, endpoint: str, status: int) -> _Reply:
        if status == 429:
            return self._too_many(platform, endpoint, self.retry_after, None)
        if platform == "hyperline":
            return _message(status, "Missing authentication token" if status == 401 else HTTPStatus(status).phrase)
        if status == 403:
            return _lago_error(403, code="write_action_not_allowed_for_event")
        if status == 404:
            return _lago_error(404, code="resource_not_found")
        return _lago_error(status)

    def _too_many(self, platform: Platform | None, endpoint: str, reset_in: float, now: float | None) -> _Reply:
        """429 as each platform sends it: Lago with its X-RateLimit-* trio and no Retry-After,
        Hyperline with the trio, Retry-After and a plain-text body. `now` None: injected."""
        seconds = math.ceil(reset_in)
        if platform == "hyperline":
            limit = self.hyperline_rate_limit or HYPERLINE_RATE_LIMIT
            headers = {"Retry-After": str(seconds), **self._hyperline_trio(limit, 0, reset_in)}
            return _Reply(429, b"Too many requests", headers, "text/plain")
        if now is None:
            limit = self.lago_rate_limit or LAGO_CLOUD_BATCH_RATE
            headers = {"X-RateLimit-Limit": str(limit), "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(seconds)}
        else:
            headers = self._limit_headers(_window_name("lago", endpoint), now)
        return _Reply(429, orjson.dumps({"status": 429, "error": "Too Many Requests"}), headers)

    def _limit_headers(self, window_name: str, now: float) -> dict[str, str]:
        window = self._windows[window_name]
        remaining, reset_in = window.state(now)
        if window_name == "hyperline":
            return self._hyperline_trio(window.limit, remaining, reset_in)
        return {
            "X-RateLimit-Limit": str(window.limit),
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": str(math.ceil(reset_in)),
        }

    def _hyperline_trio(self, limit: int, remaining: int, reset_in: float) -> dict[str, str]:
        """Hyperline's limit headers; the reset as a date in the configured form."""
        reset_at = time.time() + reset_in
        form = self.hyperline_reset_format
        if form == "epoch-seconds":
            reset = str(math.ceil(reset_at))
        elif form == "epoch-ms":
            reset = str(math.ceil(reset_at * 1000))
        elif form == "http-date":
            reset = formatdate(reset_at, usegmt=True)
        else:
            reset = datetime.fromtimestamp(reset_at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return {"X-RateLimit-Limit": str(limit), "X-RateLimit-Remaining": str(remaining), "X-RateLimit-Reset": reset}

    # -- Lago ----------------------------------------------------------------------------------

    def _lago_request(self, endpoint: str, payload: Any) -> _Reply:
        if not isinstance(payload, dict):
            return _lago_error(400)
        if endpoint == "single":
            event = payload.get("event")
            if not isinstance(event, dict):
                return _lago_error(400)
            outcome = self._lago_store_events([event])
            if isinstance(outcome, dict):
                return _lago_invalid(outcome["0"])
            return _json(200, {"event": outcome[0]})
        events = payload.get("events")
        if not events or not isinstance(events, list):
            return _lago_invalid({"events": ["no_events"]})
        if len(events) > self.lago_batch_limit:
            return _lago_invalid({"events": ["too_many_events"]})
        outcome = self._lago_store_events(events)
        if isinstance(outcome, dict):
            return _lago_invalid(outcome)
        return _json(200, {"events": outcome})

    def _lago_store_events(self, events: list[Any]) -> dict[str, Any] | list[dict[str, Any]]:
        """Store all events, or none: the errors keyed by index, duplicates looked for only
        once every event is otherwise valid. Before Lago v1.39 (`lago_pre_v1_39`), a batch
        refused for duplicates still stored its other events."""
        errors = {str(i): error for i, event in enumerate(events) if (error := self._lago_event_error(event))}
        if errors:
            return errors
        received = time.time()
        rows = [_lago_row(event, received, self.lago_store) for event in events]
        seen: set[str] = set()  # within one batch, a repeat is found by transaction_id alone
        duplicates: set[int] = set()
        for i, (key, row) in enumerate(rows):
            transaction_id = str(row["transaction_id"])
            if transaction_id in seen or (self.lago_store == "postgres" and key in self._lago_rows):
                duplicates.add(i)
                errors[str(i)] = {"transaction_id": ["value_already_exist"]}
            seen.add(transaction_id)
        if errors and not self.lago_pre_v1_39:
            return errors
        for i, (key, row) in enumerate(rows):
            if i in duplicates:
                continue
            self._writes["lago"][key[1]] += 1
            if self.lago_event_loss and self._loss_rng.random() < self.lago_event_loss:
                self._lago_lost.append(row)
                continue
            self._lago_rows[key] = row
            self._lago_scopes.setdefault(_lago_scope(row), {})[key] = _row_millis(row)
            if errors:
                self._stored_by_refused.append(key[1])
        return errors or [row for _, row in rows]

    def _lago_event_error(self, event: Any) -> dict[str, list[str]] | str | None:
        """One event's errors; a bad timestamp hides the others, as in lago-api."""
        if not isinstance(event, dict):
            event = {}
        timestamp = event.get("timestamp")
        if timestamp is not None and not _lago_timestamp_ok(timestamp):
            return {"timestamp": ["invalid_format"]}
        errors: dict[str, list[str]] = {}
        transaction_id = event.get("transaction_id")
        if not (isinstance(transaction_id, (str, int)) and not isinstance(transaction_id, bool) and transaction_id != ""):
            errors["transaction_id"] = ["value_is_mandatory"]
        code = event.get("code")
        if not (isinstance(code, str) and code):
            errors["code"] = ["value_is_mandatory"]
        if errors:
            return errors
        if code in self.lago_poison or str(transaction_id) in self.lago_poison:
            return POISON_ERROR
        return None

    # -- Lago read API (lago-openapi; pagination as lago-api's concerns/pagination.rb) --------

    def _lago_read(self, path: str) -> _Reply:
        parts = urlsplit(path)
        match = _LAGO_READ_PATH.fullmatch(parts.path)
        assert match is not None  # routed here only when it matches
        query = parse_qs(parts.query)
        resource, identifier, nested = match["resource"], match["id"], match["sub"]
        organization = self.lago_organization
        if nested is not None:
            return _lago_error(404, code="resource_not_found")
        if resource == "billable_metrics" and identifier is None:
            return _lago_page("billable_metrics", organization.billable_metrics, query)
        if resource == "customers":
            if identifier is None:
                return _lago_page("customers", organization.customers, query)
            return _lago_one("customer", [c for c in organization.customers if c["external_id"] == identifier])
        if resource == "subscriptions":
            if identifier is None:
                statuses = set(query.get("status[]", ["active"]))
                chosen = [
                    s
                    for s in organization.subscriptions
                    if s["status"] in statuses
                    and _matches(query, "external_customer_id", s["external_customer_id"])
                    and _matches(query, "plan_code", s["plan_code"])
                ]
                return _lago_page("subscriptions", chosen, query)
            status = query.get("status", ["active"])[0]
            return _lago_one(
                "subscription",
                [s for s in organization.subscriptions if s["external_id"] == identifier and s["status"] == status],
            )
        if resource == "invoices":
            if identifier is None:
                statuses = set(query.get("statuses[]", []))
                chosen = [
                    _invoice_summary(i)
                    for i in organization.invoices
                    if (not statuses or i["status"] in statuses)
                    and _matches(query, "external_customer_id", i["customer"]["external_id"])
                ]
                return _lago_page("invoices", chosen, query)
            return _lago_one("invoice", [i for i in organization.invoices if i["lago_id"] == identifier])
        if resource == "events":
            if identifier is None:
                return _lago_page("events", self._lago_events_listed(query), query, shown=_lago_event_shown)
            return _lago_one(
                "event",
                [_lago_event_shown(row) for row in self._lago_rows.values() if str(row["transaction_id"]) == identifier][:1],
            )
        return _lago_error(404, code="resource_not_found")

    def _lago_events_listed(self, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        """GET /events: stored rows filtered by subscription, code and time (both bounds
        inclusive; a bound that is not a date is ignored), newest first, as on the Postgres store."""
        start, end = _query_millis(query, "timestamp_from"), _query_millis(query, "timestamp_to")
        if "external_subscription_id" in query and "code" in query:  # what reconcile asks: use the index
            scope = self._lago_scopes.get((query["external_subscription_id"][0], query["code"][0]), {})
            stored = [(millis, self._lago_rows[key]) for key, millis in scope.items()]
        else:
            stored = [(_row_millis(row), row) for row in self._lago_rows.values()]
        chosen = []
        for millis, row in stored:
            if (
                _matches(query, "external_subscription_id", row.get("external_subscription_id"))
                and _matches(query, "code", row.get("code"))
                and (start is None or millis >= start)
                and (end is None or millis <= end)
            ):
                chosen.append((millis, row))
        chosen.sort(key=lambda pair: pair[0], reverse=True)
        return [row for _, row in chosen]

    # -- Hyperline -----------------------------------------------------------------------------

    def _hyperline_batch(self, payload: Any, endpoint: str) -> _Reply:
        if payload is _NOT_JSON:
            return _message(400, "Body must be valid JSON")
        if not isinstance(payload, list):
            return _message(400, "Body must be an array of events")
        if not 1 <= len(payload) <= HYPERLINE_MAX_BATCH:
            return _message(400, f"A batch holds 1 to {HYPERLINE_MAX_BATCH} events, not {len(payload)}")
        if any(map(self._hyperline_is_malformed, payload)):
            return _message(400, "Malformed request")
        created: list[Any] = []
        failed: list[Any] = []
        for event in payload:
            (created if self._hyperline_ok(event) else failed).append(event)
        for event in created:
            self._hyperline_store(event)
        key = "events_accepted" if endpoint == "batch_v2" else "events_created"
        return _json(201, {key: created, "events_failed": failed})

    def _hyperline_event(self, payload: Any) -> _Reply:
        if self._hyperline_is_malformed(payload):
            return _message(400, "Malformed request")
        if not self._hyperline_ok(payload):
            return _message(400, "Invalid event")
        self._hyperline_store(payload)
        return _json(201, payload)

    def _hyperline_store(self, event: dict[str, Any]) -> None:
        """Upsert by (event_type, record.id): a resend updates, never duplicates."""
        record_id = event["record"]["id"]
        self._writes["hyperline"][record_id] += 1
        if self.hyperline_event_loss and self._loss_rng.random() < self.hyperline_event_loss:
            self._hyperline_lost.append(event)
            return
        self._hyperline_rows[(event["event_type"], record_id)] = event

    # -- Hyperline read API (its API reference: GET /v1/events, GET /v1/customers/{id}) -------

    def _hyperline_events_listed(self, query: dict[str, list[str]]) -> _Reply:
        """Stored events of one event type, filtered by customer, record ids and time (both
        bounds inclusive), paged by take/skip with `meta.total`."""
        if not query.get("event_type"):
            return _message(400, "event_type is required")
        take, skip = _count_param(query, "take", 50), _count_param(query, "skip", 0)
        if take is None or not 0 <= take <= HYPERLINE_MAX_TAKE or skip is None:
            return _message(400, f"take must be 0 to {HYPERLINE_MAX_TAKE} and skip at least 0")
        start, end = _query_millis(query, "timestamp_gte"), _query_millis(query, "timestamp_lte")
        record_ids = set(",".join(query["record_id__in"]).split(",")) if "record_id__in" in query else None
        chosen = []
        for (event_type, record_id), event in self._hyperline_rows.items():
            millis = _hyperline_millis(event["timestamp"])
            if (
                event_type == query["event_type"][0]
                and _matches(query, "customer_id", event["customer_id"])
                and (record_ids is None or record_id in record_ids)
                and (start is None or millis >= start)
                and (end is None or millis <= end)
            ):
                chosen.append((millis, record_id, event))
        chosen.sort(key=lambda row: (row[0], row[1]), reverse=query.get("order", ["asc"])[0] == "desc")
        data = [
            {
                "id": f"evt_{record_id}",
                "event_type": event["event_type"],
                "timestamp": _hyperline_time(millis),
                "customer_id": event["customer_id"],
                "record_id": record_id,
                "record": event["record"],
            }
            for millis, record_id, event in chosen[skip : skip + take]
        ]
        return _json(200, {"meta": {"total": len(chosen), "taken": len(data), "skipped": skip}, "data": data})

    def _hyperline_customer(self, customer: str) -> _Reply:
        if self.hyperline_customers is not None and customer not in self.hyperline_customers:
            return _message(404, "Customer not found")
        return _json(200, {"id": customer})

    def _hyperline_is_malformed(self, event: Any) -> bool:
        record = event.get("record") if isinstance(event, dict) else None
        return isinstance(record, dict) and isinstance(record.get("id"), str) and record["id"] in self.hyperline_malformed

    def _hyperline_ok(self, event: Any) -> bool:
        if not isinstance(event, dict):
            return False
        customer, event_type, record = event.get("customer_id"), event.get("event_type"), event.get("record")
        return (
            isinstance(customer, str)
            and customer != ""
            and (self.hyperline_customers is None or customer in self.hyperline_customers)
            and isinstance(event_type, str)
            and event_type != ""
            and _hyperline_timestamp_ok(event.get("timestamp"))
            and isinstance(record, dict)
            and isinstance(record.get("id"), str)
            and record["id"] != ""
            and all(map(_hyperline_value_ok, record.values()))
        )


# -- pure helpers ------------------------------------------------------------------------------


def _check_faults(names: Iterable[str]) -> None:
    unknown = sorted(set(names) - FAULTS)
    if unknown:
        raise ValueError(f"unknown fault(s) {unknown}; known: {sorted(FAULTS)}")


def _loopback(host: str) -> str:
    """The fake accepts any key and stores what it gets: never expose it beyond this machine."""
    address = "127.0.0.1" if host == "localhost" else host
    try:
        if ipaddress.IPv4Address(address).is_loopback:
            return address
    except ValueError:
        pass
    raise ValueError(f"refusing to listen on {host!r}: the fake platform binds to IPv4 loopback only (e.g. 127.0.0.1)")


def _route(method: str, path: str) -> tuple[Platform | None, str]:
    """(platform, endpoint). Lago paths may sit under any prefix; Hyperline's host has none."""
    path = path.split("?", 1)[0]
    if method == "GET" and (path == "/v1/events" or _HYPERLINE_CUSTOMER.fullmatch(path)):
        return "hyperline", "events" if path == "/v1/events" else "customer"
    if method == "GET":
        return ("lago", "read") if _LAGO_READ_PATH.fullmatch(path) else (None, "")
    if method != "POST":
        return None, ""
    match = _LAGO_PATH.fullmatch(path)
    if match:
        return "lago", "batch" if match["batch"] else "single"
    endpoint = _HYPERLINE_PATHS.get(path)
    return ("hyperline", endpoint) if endpoint else (None, "")


def _window_name(platform: Platform | None, endpoint: str) -> str:
    if platform != "lago":
        return "hyperline"
    return "lago:read" if endpoint == "read" else f"lago:{'single' if endpoint == 'single' else 'batch'}"


def _event_count(platform: Platform | None, endpoint: str, payload: Any) -> int:
    if platform == "lago":
        if not isinstance(payload, dict):
            return 0
        if endpoint == "single":
            return int(isinstance(payload.get("event"), dict))
        payload = payload.get("events")
    elif endpoint == "single":
        return int(isinstance(payload, dict))
    return len(payload) if isinstance(payload, list) else 0


def _lago_timestamp_ok(value: Any) -> bool:
    """Whatever Ruby's Float() takes: a number or a numeric string, never ISO text."""
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):  # JSON has no NaN or infinity
        return True
    return isinstance(value, str) and _NUMBER.fullmatch(value.strip()) is not None


def _lago_row(event: dict[str, Any], received: float, store: Store) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """(store key, stored event). Postgres keys on (subscription, transaction_id); ClickHouse on
    (subscription, code, timestamp to the millisecond, transaction_id), so a resend with another
    timestamp is a second event."""
    row = {name: event[name] for name in LAGO_FIELDS if name in event}
    if row.get("timestamp") is None:
        row["timestamp"] = received
    subscription = row.get("external_subscription_id")
    key: tuple[Any, ...] = (None if subscription is None else str(subscription), str(row["transaction_id"]))
    if store == "clickhouse":
        millis = Decimal(str(row["timestamp"]).strip()).quantize(Decimal("0.001"), rounding=ROUND_FLOOR)
        key += (row["code"], millis)
    return key, row


@dataclass
class LagoOrganization:
    """What Lago's read API serves, in its own shapes (lago-openapi). Invoices keep their
    `billing_periods`, which only `GET /invoices/{lago_id}` shows."""

    billable_metrics: list[dict[str, Any]] = field(default_factory=list)
    customers: list[dict[str, Any]] = field(default_factory=list)
    subscriptions: list[dict[str, Any]] = field(default_factory=list)
    invoices: list[dict[str, Any]] = field(default_factory=list)


def _lago_id(kind: str, name: str) -> str:
    """A stable UUID-shaped id, so tests can predict it."""
    digest = hashlib.blake2b(f"{kind}:{name}".encode(), digest_size=16).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:]}"


def _matches(query: dict[str, list[str]], name: str, value: Any) -> bool:
    return name not in query or query[name][0] == ("" if value is None else str(value))


def _lago_page(
    key: str,
    items: list[dict[str, Any]],
    query: dict[str, list[str]],
    shown: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> _Reply:
    """One page and its `meta`, as Kaminari counts them (no pages at all when nothing matches);
    `shown` serializes the page's items only."""
    page, per_page = _positive(query, "page", 1), _positive(query, "per_page", LAGO_PER_PAGE)
    total_pages = math.ceil(len(items) / per_page)
    meta = {
        "current_page": page,
        "next_page": page + 1 if page < total_pages else None,
        "prev_page": page - 1 if page > 1 else None,
        "total_pages": total_pages,
        "total_count": len(items),
    }
    chosen = items[(page - 1) * per_page : page * per_page]
    return _json(200, {key: [shown(item) for item in chosen] if shown else chosen, "meta": meta})


def _lago_one(kind: str, found: list[dict[str, Any]]) -> _Reply:
    if not found:
        return _lago_error(404, code=f"{kind}_not_found")
    return _json(200, {kind: found[0]})


def _positive(query: dict[str, list[str]], name: str, default: int) -> int:
    value = query.get(name, [""])[0]
    return int(value) if value.isdigit() and int(value) > 0 else default


def _invoice_summary(invoice: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in invoice.items() if name != "billing_periods"}


def _query_millis(query: dict[str, list[str]], name: str) -> int | None:
    try:
        when = datetime.fromisoformat(query[name][0])
    except (KeyError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - _EPOCH) // timedelta(milliseconds=1)


def _lago_scope(row: dict[str, Any]) -> tuple[str, str]:
    """(subscription, code) as a query names them."""
    subscription, code = row.get("external_subscription_id"), row.get("code")
    return ("" if subscription is None else str(subscription), "" if code is None else str(code))


def _row_millis(row: dict[str, Any]) -> int:
    return int(Decimal(str(row["timestamp"]).strip()) * 1000)


def _lago_shown(time: str | None, digits: int) -> str | None:
    """A time as Ruby's `Time#iso8601(digits)` writes it in UTC: the fraction cut to `digits`."""
    if time is None:
        return None
    moment = datetime.fromisoformat(time)
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    fraction = f".{moment.microsecond:06d}"[: digits + 1] if digits else ""
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + fraction + "Z"


def _lago_event_shown(row: dict[str, Any]) -> dict[str, Any]:
    millis = _row_millis(row)
    when = datetime.fromtimestamp(millis // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return {
        "lago_id": _lago_id("event", str(row["transaction_id"])),
        "transaction_id": str(row["transaction_id"]),
        "lago_customer_id": None,
        "code": row.get("code"),
        "timestamp": f"{when}.{millis % 1000:03d}Z",
        "precise_total_amount_cents": row.get("precise_total_amount_cents"),
        "properties": row.get("properties") or {},
        "lago_subscription_id": None,
        "external_subscription_id": row.get("external_subscription_id"),
        "created_at": f"{when}Z",
    }


def _hyperline_timestamp_ok(value: Any) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return True
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _hyperline_value_ok(value: Any) -> bool:
    if isinstance(value, list):
        return all(isinstance(item, (str, int, float, bool)) for item in value)
    return isinstance(value, (str, int, float, bool))


def _count_param(query: dict[str, list[str]], name: str, default: int) -> int | None:
    """A non-negative integer query parameter; None when it is not one."""
    value = query.get(name, [str(default)])[0]
    return int(value) if value.isdigit() else None


def _hyperline_millis(value: Any) -> int:
    """A stored Hyperline timestamp (ISO 8601 or integer ms) in ms."""
    if isinstance(value, int):
        return value
    when = datetime.fromisoformat(value)
    return ((when if when.tzinfo else when.replace(tzinfo=UTC)) - _EPOCH) // timedelta(milliseconds=1)


def _hyperline_time(millis: int) -> str:
    return (_EPOCH + timedelta(milliseconds=millis)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _json(status: int, body: Any) -> _Reply:
    return _Reply(status, orjson.dumps(body))


def _message(status: int, message: str) -> _Reply:
    return _json(status, {"message": message})


def _lago_error(status: int, **extra: str) -> _Reply:
    return _json(status, {"status": status, "error": HTTPStatus(status).phrase, **extra})


def _lago_invalid(details: Any) -> _Reply:
    return _json(422, {"status": 422, "error": "Unprocessable Entity", "code": "validation_errors", "error_details": details})


# -- HTTP plumbing -----------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # small answers must not wait on the client's delayed ACK
    server: _Server

    def do_POST(self) -> None:
        arrival = self.server.fake.clock()
        try:
            body = self._read_body()
        except ValueError:
            self.close_connection = True
            self._send(_message(400, "Unreadable body framing"))
            return
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            name = name.lower()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        fake = self.server.fake
        outcome = fake._dispatch(self.command, self.path, headers, body, arrival)
        if fake.latency:
            self.server.closing.wait(fake.latency)  # a stopped fake answers at once
        if isinstance(outcome, _Reply):
            self._send(outcome)
            return
        self.close_connection = True
        if outcome == "hang":
            self.server.closing.wait(fake.hang_seconds)
        elif outcome == "reset":
            # Linger 0 turns the close into an RST. The socket really closes when finish()
            # releases rfile, before the server's shutdown(SHUT_WR) could send a polite FIN.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()

    do_GET = do_PUT = do_PATCH = do_DELETE = do_POST

    def _read_body(self) -> bytes:
        """The body by Content-Length, or chunked (streaming clients); ValueError if unframed."""
        if "chunked" not in self.headers.get("Transfer-Encoding", "").lower():
            length = int(self.headers.get("Content-Length") or 0)
            if length < 0:
                raise ValueError(length)
            return self.rfile.read(length)
        chunks: list[bytes] = []
        while size := int(self.rfile.readline().split(b";")[0], 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return b"".join(chunks)

    def _send(self, reply: _Reply) -> None:
        """Status line, headers and body in one write: one packet for small answers."""
        lines = [
            f"HTTP/1.1 {reply.status} {HTTPStatus(reply.status).phrase}",
            f"Content-Type: {reply.content_type}",
            f"Content-Length: {len(reply.body)}",
            *(f"{name}: {value}" for name, value in reply.headers.items()),
        ]
        if self.close_connection:
            lines.append("Connection: close")
        self.wfile.write("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + reply.body)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: benchmarks send thousands of requests; `FakePlatform.requests()` has them all."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], fake: FakePlatform) -> None:
        self.fake = fake
        self.closing = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def cut_connections(self) -> None:
        """End idle keep-alive connections: their handler threads would otherwise keep serving."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-answer is normal here (timeouts, tests); anything else is a bug."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


# -- command line ------------------------------------------------------------------------------


def _fault_rate(text: str) -> tuple[str, float]:
    name, sep, rate = text.partition("=")
    try:
        _check_faults([name])
        if not sep:
            raise ValueError("expected NAME=RATE")
        return name, float(rate)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: {error}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m segbill.testing.fake_platform",
        description="Serve a fake Lago (/api/v1/events[/batch]) and Hyperline (/v1/events/batch, /v2/events/batch, /v1/events) on loopback.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port (default 8080)")
    parser.add_argument("--api-key", default="test-key", help="the Bearer key to accept (default test-key)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added before each answer")
    parser.add_argument("--lago-rate-limit", type=int, help="Lago batch requests per second (Cloud: 50)")
    parser.add_argument(
        "--hyperline-rate-limit",
        type=int,
        default=HYPERLINE_RATE_LIMIT,
        help="Hyperline requests per 10 s (default, as the real one: 1000)",
    )
    parser.add_argument(
        "--hyperline-reset-format",
        choices=RESET_FORMATS,
        default="epoch-seconds",
        help="the form of Hyperline's X-RateLimit-Reset date",
    )
    parser.add_argument(
        "--lago-pre-v1-39",
        action="store_true",
        help="a batch refused for a duplicate stores its other events, as before Lago v1.39",
    )
    parser.add_argument("--lago-store", choices=("postgres", "clickhouse"), default="postgres")
    parser.add_argument("--lago-batch-limit", type=int, default=100)
    parser.add_argument(
        "--fault",
        type=_fault_rate,
        action="append",
        default=[],
        metavar="NAME=RATE",
        help=f"random fault rate, repeatable; names: {', '.join(sorted(FAULTS))}",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        fake = FakePlatform(
            args.api_key,
            host=args.host,
            port=args.port,
            latency=args.latency,
            lago_rate_limit=args.lago_rate_limit,
            hyperline_rate_limit=args.hyperline_rate_limit,
            hyperline_reset_format=args.hyperline_reset_format,
            lago_pre_v1_39=args.lago_pre_v1_39,
            lago_store=args.lago_store,
            lago_batch_limit=args.lago_batch_limit,
            faults=dict(args.fault),
            seed=args.seed,
        )
        fake.start()
    except (ValueError, OSError) as error:
        print(f"fake_platform: {error}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    print(f"fake Lago + Hyperline at {fake.url} (api key {args.api_key!r}); Ctrl-C or kill {os.getpid()} to stop", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        fake.close()
        print(fake.summary(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Hyperline's read API, for `segbill check` and `segbill reconcile`: events from the ingest host
(the URL send uses), customers from the API host, through `ApiReader` (Hyperline announces its
limit on every answer); lists are paged by take/skip through `meta.total`."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson

from segbill.segment import iso_millis, parse_time
from segbill.targets import X_RATELIMIT, Judge, RateHeaders
from segbill.targets.api import ApiReader, ReadFailed, ReadOptions, path_segment

TAKE = 100  # the largest page GET /v1/events gives
CUSTOMERS = "/v1/customers/"


class UnknownCustomer(Exception):
    """GET /v1/customers/{id} answered 404 (`{"message": "Customer not found"}`)."""


def api_url(ingest_url: str) -> str:
    """The API host that serves customers, next to the ingest host events go to:
    ingest.hyperline.co -> api.hyperline.co, sandbox.ingest... -> sandbox.api...; any other
    URL (a proxy, a test server) is taken to serve both."""
    parts = urlsplit(ingest_url)
    labels = parts.netloc.split(".")
    if "ingest" not in labels:
        return ingest_url
    labels[labels.index("ingest")] = "api"
    return urlunsplit(parts._replace(netloc=".".join(labels)))


class HyperlineReader(ApiReader):
    """Reads one Hyperline account; lists are paged by take/skip."""

    page_size = TAKE

    def __init__(self, options: ReadOptions, rates: RateHeaders = X_RATELIMIT) -> None:
        super().__init__(options, rates)
        self.api = api_url(options.url).rstrip("/")

    def _read(self, path: str, response: httpx.Response) -> dict[str, Any]:
        if response.status_code == 404 and path.startswith(CUSTOMERS) and _hyperline_error(response):
            raise UnknownCustomer(path.removeprefix(CUSTOMERS))
        return super()._read(path, response)

    async def customer_exists(self, customer: str) -> bool:
        try:
            await self.get(CUSTOMERS + path_segment(customer), base=self.api)
        except UnknownCustomer:
            return False
        return True

    async def judge(self) -> Judge:
        """Whether each event's customer exists, one read per customer (the first of its events asks)."""
        known: dict[str, bool] = {}

        async def verdict(customer: str, event_type: str, millis: int) -> str:
            if customer not in known:
                known[customer] = await self.customer_exists(customer)
            return "billable" if known[customer] else "unknown_customer"

        return verdict

    async def count(self, customer: str, event_type: str, start: int, end: int) -> int:
        """Events stored for (customer, event type) from `start` to `end` ms, both inclusive."""
        body = await self.get("/v1/events", {**_scope(customer, event_type, start, end), "take": 0})
        total = (body.get("meta") or {}).get("total")
        if not isinstance(total, int):
            raise self._failed(ReadFailed(f"{self.host} answered /v1/events without meta.total"))
        return total

    async def events(self, customer: str, event_type: str, start: int, end: int) -> list[tuple[str, int]]:
        """(record id, ms) of each event stored in that scope, oldest first."""
        listed: list[tuple[str, int]] = []
        while True:
            params = {**_scope(customer, event_type, start, end), "take": TAKE, "skip": len(listed), "sort": "timestamp"}
            body = await self.get("/v1/events", {**params, "order": "asc"})
            page = [item for item in body.get("data") or [] if isinstance(item, dict)]
            listed += [(str(item.get("record_id")), parse_time(item.get("timestamp")) or start) for item in page]
            total = (body.get("meta") or {}).get("total")
            if not page or not isinstance(total, int) or len(listed) >= total:
                return listed


def _hyperline_error(response: httpx.Response) -> bool:
    """Whether a 404 is Hyperline's own error, `{"message": "..."}`, as it answers an id it does
    not know. Any other 404 (a page, another server's error, no body) comes from no customer
    endpoint: a wrong URL, which must stop the run rather than make every customer unknown."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return False
    return isinstance(body, dict) and isinstance(body.get("message"), str)


def _scope(customer: str, event_type: str, start: int, end: int) -> dict[str, str | int | list[str]]:
    return {
        "event_type": event_type,
        "customer_id": customer,
        "timestamp_gte": iso_millis(start),
        "timestamp_lte": iso_millis(end),
    }

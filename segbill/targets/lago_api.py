"""Lago's read API, for `segbill check` and `segbill reconcile`: the same key, retries and pacing
as sending (a 429 pauses every reader; an announced limit sets the pace), every list read page by
page through `meta.next_page`. The key is only ever in the Authorization header.

check's verdicts: Lago answers 200 to events it will never bill (an unknown code or
subscription, a time outside the subscription, a period already invoiced). The organization is
read first (billable metrics, subscriptions in every status), each customer's invoices when one of
its events first needs them: reads follow the subscriptions and invoices involved, never the
number of events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from segbill.segment import iso_millis, parse_time
from segbill.targets import Judge
from segbill.targets.api import ApiReader, Params, ReadFailed, path_segment

PER_PAGE = 100  # lago-api's default page size; larger pages are not documented
SUBSCRIPTION_STATUSES = ("active", "pending", "terminated", "canceled")
INVOICE_STATUSES = ("draft", "finalized")  # the statuses that say whether a period still bills


@dataclass(frozen=True)
class Subscription:
    external_id: str
    customer: str  # external_customer_id
    status: str
    started: int | None  # ms, as Lago shows it (to the ms); None while pending (or canceled before it started)
    terminated: int | None  # ms, as Lago shows it: to the second, its fraction cut off


@dataclass(frozen=True)
class Period:
    """One subscription's charges period on an invoice, both ends inclusive to the millisecond:
    Lago writes `23:59:59Z` for a period that ends with that whole second."""

    subscription: str
    start: int
    end: int
    status: str  # draft or finalized
    invoice: str  # the invoice number, for people


class Organization:
    """What decides whether Lago bills an event. Invoice periods are read per customer, the
    first time one of its subscriptions' events needs them. An event gets the first rule that
    fits: unknown_code, unknown_subscription, before_start, after_termination, then the invoices
    (invoiced, draft), else billable."""

    def __init__(self, codes: set[str], subscriptions: dict[str, list[Subscription]]) -> None:
        self.codes = codes
        self.subscriptions = subscriptions
        self.periods: dict[str, list[Period]] = {}
        self.customers_read: set[str] = set()

    def unread_customers(self, subscription: str) -> list[str]:
        customers = {s.customer for s in self.subscriptions.get(subscription, ())}
        return sorted(customers - self.customers_read)

    def learn(self, customer: str, periods: list[Period]) -> None:
        self.customers_read.add(customer)
        for period in periods:
            self.periods.setdefault(period.subscription, []).append(period)

    def standing(self, subscription: str, code: str, millis: int) -> str | None:
        """The verdict that needs no invoice, or None when the invoices decide.

        Lago bills a subscription's events from its `started_at` to its `terminated_at`, both
        included (lago-api: a charges period runs from `started_at`, floored to the ms, to
        `terminated_at`, and the event store selects `timestamp >= from` and `timestamp <= to`).
        `started_at` is shown to the ms, so that end is exact. `terminated_at` is shown to the
        second (the instant it was terminated, with a fraction, is not): an event at that second
        is billed, and one later in the same second only if the hidden fraction reaches it, which
        check cannot know, so it says after_termination: it never calls billable what may not be."""
        if code not in self.codes:
            return "unknown_code"
        candidates = self.subscriptions.get(subscription)
        if not candidates:
            return "unknown_subscription"
        started = [s for s in candidates if s.started is not None and s.started <= millis]
        if not started:
            return "before_start"
        if all(s.terminated is not None and millis > s.terminated for s in started):
            return "after_termination"
        return None

    def invoiced(self, subscription: str, millis: int) -> str:
        """The verdict of a running subscription's event, once its customers' invoices are read."""
        statuses = {p.status for p in self.periods.get(subscription, ()) if p.start <= millis <= p.end}
        if "finalized" in statuses:
            return "invoiced"
        return "draft" if "draft" in statuses else "billable"


class LagoReader(ApiReader):
    """Reads one organization; lists are paged through `meta.next_page`."""

    page_size = PER_PAGE

    async def pages(self, path: str, key: str, params: Params | None = None) -> AsyncIterator[dict[str, Any]]:
        """Every item of a list endpoint, following `meta.next_page`."""
        page = 1
        while True:
            body = await self.get(path, {**(params or {}), "page": page, "per_page": PER_PAGE})
            for item in body.get(key) or []:
                if isinstance(item, dict):
                    yield item
            following = (body.get("meta") or {}).get("next_page")
            if not isinstance(following, int) or following <= page:
                return
            page = following

    # -- the organization --------------------------------------------------------------------

    async def judge(self) -> Judge:
        """Reads the organization, then judges each event (subscription, code, ms), reading a
        customer's invoices the first time one of its subscriptions' events needs them."""
        organization = Organization(await self.metric_codes(), await self.subscriptions())

        async def verdict(subscription: str, code: str, millis: int) -> str:
            standing = organization.standing(subscription, code, millis)
            if standing is not None:
                return standing
            customers = organization.unread_customers(subscription)
            for customer, periods in zip(customers, await asyncio.gather(*(self.periods(c) for c in customers)), strict=False):
                organization.learn(customer, periods)
            return organization.invoiced(subscription, millis)

        return verdict

    async def metric_codes(self) -> set[str]:
        return {str(metric.get("code")) async for metric in self.pages("/api/v1/billable_metrics", "billable_metrics")}

    async def subscriptions(self) -> dict[str, list[Subscription]]:
        """Every subscription in every status (the list holds only active ones unless asked),
        by external id: an upgraded plan keeps the id on a new subscription."""
        found: dict[str, list[Subscription]] = {}
        params: Params = {"status[]": list(SUBSCRIPTION_STATUSES)}
        async for item in self.pages("/api/v1/subscriptions", "subscriptions", params):
            subscription = Subscription(
                external_id=str(item.get("external_id")),
                customer=str(item.get("external_customer_id")),
                status=str(item.get("status")),
                started=parse_time(item["started_at"]) if item.get("started_at") else None,
                terminated=parse_time(item["terminated_at"]) if item.get("terminated_at") else None,
            )
            found.setdefault(subscription.external_id, []).append(subscription)
        return found

    async def periods(self, customer: str) -> list[Period]:
        """The billing periods of a customer's draft and finalized invoices: the list gives the
        invoices, each one's own page its `billing_periods`."""
        params: Params = {"external_customer_id": customer, "statuses[]": list(INVOICE_STATUSES)}
        listed = [
            item async for item in self.pages("/api/v1/invoices", "invoices", params) if item.get("status") in INVOICE_STATUSES
        ]
        shown = await asyncio.gather(*(self.get(f"/api/v1/invoices/{path_segment(str(item.get('lago_id')))}") for item in listed))
        periods = []
        for body in shown:
            invoice = body.get("invoice") or {}
            for period in invoice.get("billing_periods") or []:
                start, end = parse_time(period.get("charges_from_datetime")), parse_time(period.get("charges_to_datetime"))
                if start is None or end is None or invoice.get("status") not in INVOICE_STATUSES:
                    continue
                name = str(invoice.get("number") or invoice.get("lago_id"))
                periods.append(
                    Period(str(period.get("external_subscription_id")), start, end // 1000 * 1000 + 999, invoice["status"], name)
                )
        return periods

    # -- events ------------------------------------------------------------------------------

    async def count(self, subscription: str, code: str, start: int, end: int) -> int:
        """Events stored for (subscription, code) from `start` to `end` ms, both inclusive."""
        body = await self.get("/api/v1/events", {**_scope(subscription, code, start, end), "per_page": 1})
        total = (body.get("meta") or {}).get("total_count")
        if not isinstance(total, int):
            raise self._failed(ReadFailed(f"{self.host} answered /api/v1/events without meta.total_count"))
        return total

    async def events(self, subscription: str, code: str, start: int, end: int) -> list[tuple[str, int]]:
        """(transaction id, ms) of each event stored in that scope, repeats included."""
        listed = []
        async for event in self.pages("/api/v1/events", "events", _scope(subscription, code, start, end)):
            listed.append((str(event.get("transaction_id")), parse_time(event.get("timestamp")) or start))
        return listed


def _scope(subscription: str, code: str, start: int, end: int) -> Params:
    return {
        "external_subscription_id": subscription,
        "code": code,
        "timestamp_from": iso_millis(start),
        "timestamp_to": iso_millis(end),
    }

"""`segbill check`: of the events a send would deliver, which ones Lago will bill, and why not.

Lago answers 200 to events it will never bill (an unknown code or subscription, a time outside
the subscription, a period already invoiced). The organization is read first (billable metrics,
subscriptions in every status), each customer's invoices when one of its events first needs
them: reads follow the subscriptions and invoices involved, never the number of events.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from segbill.pipeline import Options, Replay, selected_events
from segbill.report import ExitCode, Tally
from segbill.segment import iso_millis, parse_time
from segbill.targets.hyperline_api import HyperlineReader
from segbill.targets.lago_api import (
    LagoReader,
    Period,
    ReadFailed,
    ReadOptions,
    Subscription,
    event_millis,
)

# In the order the rules apply: an event gets the first that fits.
VERDICTS = ("unknown_code", "unknown_subscription", "before_start", "after_termination", "invoiced", "draft", "billable")
BILLED = ("billable", "draft")
# Hyperline's API shows customers, and no metric, subscription or invoice to check an event against.
SHOWN = {"lago": ("billable", *VERDICTS[:-1]), "hyperline": ("billable", "unknown_customer")}  # the JSON's verdicts
GROUP_KEYS = {"lago": ("code", "external_subscription_id"), "hyperline": ("event_type", "customer_id")}
MEANING = {
    "billable": "billed in the current or a coming invoice",
    "draft": "in a draft invoice's period: billed once the draft is refreshed or finalized",
    "unknown_code": "no billable metric has this code: stored, never billed",
    "unknown_subscription": "no subscription in any status has this external id: stored, never billed",
    "before_start": "before the subscription's started_at (or it has not started): never billed",
    "after_termination": "at or after the subscription's terminated_at: never billed",
    "invoiced": "in a period of a finalized invoice, which is never reopened: never billed",
    "unknown_customer": "Hyperline has no such customer (GET /v1/customers/{id} answers 404): a send is refused",
}
TOP = 5  # groups shown per verdict
YIELD_EVERY = 1000  # events checked between two chances for a Ctrl-C to land


class Organization:
    """What decides whether Lago bills an event. Invoice periods are read per customer, the
    first time one of its subscriptions' events needs them."""

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
        """The verdict that needs no invoice, or None when the invoices decide."""
        if code not in self.codes:
            return "unknown_code"
        candidates = self.subscriptions.get(subscription)
        if not candidates:
            return "unknown_subscription"
        started = [s for s in candidates if s.started is not None and s.started <= millis]
        if not started:
            return "before_start"
        if all(s.terminated is not None and millis >= s.terminated for s in started):
            return "after_termination"
        return None

    def invoiced(self, subscription: str, millis: int) -> str:
        """The verdict of a running subscription's event, once its customers' invoices are read."""
        statuses = {p.status for p in self.periods.get(subscription, ()) if p.start <= millis <= p.end}
        if "finalized" in statuses:
            return "invoiced"
        return "draft" if "draft" in statuses else "billable"


@dataclass
class Group:
    """Events of one verdict, code and subscription: how many, and their first and last time."""

    events: int
    first: int
    last: int


@dataclass
class CheckResult:
    tally: Tally
    verdicts: Counter[str] = field(default_factory=Counter)
    groups: dict[tuple[str, str, str], Group] = field(default_factory=dict)  # (verdict, code, subscription)
    requests: int = 0
    retries: int = 0
    stopped: str | None = None

    def add(self, verdict: str, code: str, subscription: str, millis: int) -> None:
        self.verdicts[verdict] += 1
        group = self.groups.get((verdict, code, subscription))
        if group is None:
            self.groups[(verdict, code, subscription)] = Group(1, millis, millis)
        else:
            group.events += 1
            group.first = min(group.first, millis)
            group.last = max(group.last, millis)

    @property
    def checked(self) -> int:
        return sum(self.verdicts.values())

    @property
    def unbilled(self) -> int:
        return self.checked - sum(self.verdicts[v] for v in BILLED)

    @property
    def complete(self) -> bool:
        """Every record was read and every event checked: only then may it say all will be billed."""
        return self.stopped is None and not self.tally.interrupted

    def exit_code(self) -> ExitCode:
        """1 when an event would not be billed, or when no record read was an event to check;
        2 when nothing was read at all (as for send: an empty input is no success for cron)."""
        if self.tally.interrupted:
            return ExitCode.INTERRUPTED
        if self.stopped is not None:
            return ExitCode.FATAL
        if self.tally.empty:
            return ExitCode.USAGE
        return ExitCode.DEAD_LETTERED if self.unbilled or not self.checked else ExitCode.OK

    def top(self, verdict: str) -> list[tuple[str, str, Group]]:
        chosen = [(code, subscription, group) for (v, code, subscription), group in self.groups.items() if v == verdict]
        chosen.sort(key=lambda item: (-item[2].events, item[0], item[1]))
        return chosen[:TOP]

    @property
    def shown(self) -> tuple[str, ...]:
        """The verdicts this platform's check gives, billable first."""
        return SHOWN.get(self.tally.target, SHOWN["lago"])

    def as_dict(self) -> dict[str, Any]:
        summary = self.tally.as_dict()
        kind, scope = GROUP_KEYS.get(self.tally.target, GROUP_KEYS["lago"])
        return {
            "target": summary["target"],
            "read": summary["read"],
            "checked": self.checked,
            "verdicts": {verdict: self.verdicts[verdict] for verdict in self.shown},
            "not_billed": self.unbilled,
            "top": {
                verdict: [
                    {
                        kind: code,
                        scope: sub,
                        "events": g.events,
                        "first": iso_millis(g.first),
                        "last": iso_millis(g.last),
                    }
                    for code, sub, g in self.top(verdict)
                ]
                for verdict in self.shown
                if self.verdicts[verdict]
            },
            **{
                key: summary[key]
                for key in ("skipped", "skipped_by_reason", "dead_lettered", "dead_lettered_by_reason", "not_attempted")
            },
            "requests": self.requests,
            "retries": self.retries,
            "stopped": self.stopped,
            "interrupted": self.tally.interrupted,
            "exit_code": int(self.exit_code()),
        }


def run_check(options: Options, reading: ReadOptions) -> CheckResult:
    """Check what a send of `options` would deliver; an interrupt ends it with what was counted."""
    replay = Replay(replace(options, dry_run=True, dead_letter=None))
    result = CheckResult(replay.tally)

    async def run() -> None:
        if options.target.name == "hyperline":
            async with HyperlineReader(reading) as hyperline:
                await check_customers(replay, hyperline, result)
            return
        async with LagoReader(reading) as reader:
            await check(replay, reader, result)

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        replay.tally.interrupted = True
    finally:
        replay.close()
    return result


async def check(replay: Replay, reader: LagoReader, result: CheckResult) -> None:
    """Give every event `replay` hands out (what a send would deliver) its verdict in `result`
    (which keeps what was counted if the run is interrupted); nothing is sent."""
    try:
        organization = Organization(await reader.metric_codes(), await reader.subscriptions())
        for _, event in selected_events(replay):
            subscription, code, millis = str(event["external_subscription_id"]), str(event["code"]), event_millis(event)
            verdict = organization.standing(subscription, code, millis)
            if verdict is None:
                customers = organization.unread_customers(subscription)
                for customer, periods in zip(
                    customers, await asyncio.gather(*(reader.periods(c) for c in customers)), strict=False
                ):
                    organization.learn(customer, periods)
                verdict = organization.invoiced(subscription, millis)
            result.add(verdict, code, subscription, millis)
            if result.checked % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # a Ctrl-C lands at an await
    except ReadFailed as error:
        result.stopped = str(error)
    finally:
        result.requests, result.retries = reader.requests, reader.retries


async def check_customers(replay: Replay, reader: HyperlineReader, result: CheckResult) -> None:
    """Hyperline's check: each event's customer exists, one read per customer (the first of its
    events asks); nothing is sent."""
    known: dict[str, bool] = {}
    try:
        for _, event in selected_events(replay):
            customer, event_type = str(event["customer_id"]), str(event["event_type"])
            if customer not in known:
                known[customer] = await reader.customer_exists(customer)
            verdict = "billable" if known[customer] else "unknown_customer"
            result.add(verdict, event_type, customer, parse_time(event["timestamp"]) or 0)
            if result.checked % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # a Ctrl-C lands at an await
    except ReadFailed as error:
        result.stopped = str(error)
    finally:
        result.requests, result.retries = reader.requests, reader.retries

"""`segbill check`: of the events a send would deliver, which ones the platform will bill, and why
not. What it reads and the verdicts it can give are the platform's (`Target.reading`): on Lago,
metrics, subscriptions and invoices (Lago answers 200 to events it will never bill); on
Hyperline, whether the customer exists.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from segbill.pipeline import Options, Replay, selected_events
from segbill.report import ExitCode, Tally
from segbill.segment import iso_millis
from segbill.targets import Reader, Reading
from segbill.targets.api import ReadFailed, ReadOptions

TOP = 5  # groups shown per verdict
YIELD_EVERY = 1000  # events checked between two chances for a Ctrl-C to land


@dataclass
class Group:
    """Events of one verdict, kind and scope (Lago: code and subscription): how many, and their first and last time."""

    events: int
    first: int
    last: int


@dataclass
class CheckResult:
    tally: Tally
    reading: Reading
    verdicts: Counter[str] = field(default_factory=Counter)
    groups: dict[tuple[str, str, str], Group] = field(default_factory=dict)  # (verdict, kind, scope)
    requests: int = 0
    retries: int = 0
    stopped: str | None = None

    def add(self, verdict: str, kind: str, scope: str, millis: int) -> None:
        self.verdicts[verdict] += 1
        group = self.groups.get((verdict, kind, scope))
        if group is None:
            self.groups[(verdict, kind, scope)] = Group(1, millis, millis)
        else:
            group.events += 1
            group.first = min(group.first, millis)
            group.last = max(group.last, millis)

    @property
    def checked(self) -> int:
        return sum(self.verdicts.values())

    @property
    def unbilled(self) -> int:
        return self.checked - sum(self.verdicts[v] for v in self.reading.billed)

    @property
    def complete(self) -> bool:
        """Every record was read and every event checked: only then may it say all will be billed."""
        return self.stopped is None and not self.tally.interrupted

    def exit_code(self) -> ExitCode:
        """1 when an event would not be billed, a record would be dead-lettered (a send of it
        exits 1 too: it bills nothing), or no record read was an event to check; 2 when nothing
        was read at all (as for send: an empty input is no success for cron)."""
        if self.tally.interrupted:
            return ExitCode.INTERRUPTED
        if self.stopped is not None:
            return ExitCode.FATAL
        if self.tally.empty:
            return ExitCode.USAGE
        return ExitCode.DEAD_LETTERED if self.unbilled or self.tally.dead_lettered or not self.checked else ExitCode.OK

    def top(self, verdict: str) -> list[tuple[str, str, Group]]:
        chosen = [(kind, scope, group) for (v, kind, scope), group in self.groups.items() if v == verdict]
        chosen.sort(key=lambda item: (-item[2].events, item[0], item[1]))
        return chosen[:TOP]

    @property
    def shown(self) -> tuple[str, ...]:
        """The verdicts this platform's check gives, billable first."""
        return tuple(self.reading.verdicts)

    def meaning(self, verdict: str) -> str:
        return self.reading.verdicts[verdict]

    def as_dict(self) -> dict[str, Any]:
        summary = self.tally.as_dict()
        # The event's fields a group is keyed by: Lago's code and external_subscription_id.
        kind_key, scope_key = self.reading.kind, self.reading.scope
        return {
            "target": summary["target"],
            "read": summary["read"],
            "checked": self.checked,
            "verdicts": {verdict: self.verdicts[verdict] for verdict in self.shown},
            "not_billed": self.unbilled,
            "top": {
                verdict: [
                    {
                        kind_key: kind,
                        scope_key: scope,
                        "events": g.events,
                        "first": iso_millis(g.first),
                        "last": iso_millis(g.last),
                    }
                    for kind, scope, g in self.top(verdict)
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


def run_check(options: Options, reading: ReadOptions, *, state_key: str | None = None) -> CheckResult:
    """Check what a send of `options` would deliver; an interrupt ends it with what was counted.
    `state_key`: the API key the state must have delivered with (send --check, unless the key
    was rotated): a state that delivered with another is refused, as the send's would be,
    before anything is read."""
    platform = options.target.require_reading()
    replay = Replay(replace(options, dry_run=True, dead_letter=None), keep_lines=False, api_key=state_key)
    result = CheckResult(replay.tally, platform)

    async def run() -> None:
        async with platform.reader(reading) as reader:
            await check(replay, reader, result)

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        replay.interrupted()
    finally:
        replay.close()
    return result


async def check(replay: Replay, reader: Reader, result: CheckResult) -> None:
    """Give every event `replay` hands out (what a send would deliver) its verdict in `result`
    (which keeps what was counted if the run is interrupted); nothing is sent."""
    place = result.reading.place
    try:
        verdict = await reader.judge()
        for _, event in selected_events(replay):
            # A Ctrl-C lands at an await: one before the verdict, never between `result.add` and
            # the next event, where the event just checked would still count as not attempted.
            if result.checked % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            (scope, kind), millis = place(event)
            result.add(await verdict(scope, kind, millis), kind, scope, millis)
    except ReadFailed as error:
        result.stopped = str(error)
    finally:
        result.requests, result.retries = reader.requests, reader.retries

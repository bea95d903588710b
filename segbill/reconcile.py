"""`segbill reconcile`: what the export should have put on Lago against what Lago holds (on
Hyperline, pairs are (customer id, event type) and ids are record ids).

Scope: the (subscription, code) pairs the export bills, over its time range. Cost grows with the
differences, not with the events:

1. one pass over the export counts the expected events per pair and per UTC day;
2. one count read per pair over the whole range (`per_page=1` -> `meta.total_count`); where
   counts differ, the days are split in halves (one count read each: the other half is the
   difference) until a range disagrees that one page lists (or a single day does); only there
   are the platform's events listed;
3. a second pass over the export matches the expected events of those ranges against the
   listed transaction ids: the unmatched are missing (written to `--missing` for `segbill send`
   to replay, and no longer delivered in the ledger of `--state`), the listed ones no event
   accounts for are extra; those listed by id that the ledger has as sent without an answer
   are delivered there (agreeing counts prove no single event: another may cancel it).

Counts that cancel out (one event missing and a foreign one in the same pair and range) cannot
be seen by counting; the README says so. Ranges holding an event the ledger has as sent without
an answer are listed whatever their counts: only a listed id proves it stored. A run that stops
or is interrupted calls found only what it proved found (a range whose counts agreed, an id
listed); the rest is unchecked.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from segbill.deadletter import DeadLetterFile
from segbill.pipeline import Options, Replay, selected_events
from segbill.report import ExitCode
from segbill.segment import iso_millis
from segbill.state import State
from segbill.targets import Target
from segbill.targets.api import ReadFailed, ReadOptions

DAY = 86_400_000  # ms
MISSING_REASON = "missing on the platform"
TOP = 5
PAIRS_AT_ONCE = 64  # pairs narrowed concurrently (the reader bounds the requests in flight)
FORGET_CHUNK = 500  # missing events taken out of the ledger at a time

Pair = tuple[str, str]  # (scope, kind) as `Reading.place` gives it: Lago's (external subscription id, code)


@dataclass
class Expected:
    """The first pass: expected events per pair and per (pair, day), the days holding events a
    ledger has as sent without an answer, and the time range."""

    totals: Counter[Pair] = field(default_factory=Counter)
    days: dict[Pair, Counter[int]] = field(default_factory=dict)
    unanswered: dict[Pair, set[int]] = field(default_factory=dict)
    first: int | None = None
    last: int | None = None

    def add(self, pair: Pair, millis: int) -> None:
        self.totals[pair] += 1
        self.days.setdefault(pair, Counter())[millis // DAY] += 1
        self.first = millis if self.first is None else min(self.first, millis)
        self.last = millis if self.last is None else max(self.last, millis)

    def between(self, pair: Pair, low: int, high: int) -> int:
        return sum(count for day, count in self.days[pair].items() if low <= day <= high)

    def unanswered_between(self, pair: Pair, low: int, high: int) -> bool:
        return any(low <= day <= high for day in self.unanswered.get(pair, ()))


@dataclass
class Differences:
    """Where counts disagree: days whose events were listed, days with nothing found, and the
    extra events counted without listing (ranges of days the export holds nothing for)."""

    listed: dict[tuple[Pair, int], Counter[str]] = field(default_factory=dict)  # (pair, day) -> its range's ids found
    ranges: list[tuple[Pair, Counter[str], dict[str, int]]] = field(default_factory=list)  # each listed range, its ids' days
    none_found: set[tuple[Pair, int]] = field(default_factory=set)
    extra: Counter[tuple[Pair, int, int]] = field(default_factory=Counter)  # (pair, first day, last day)


@dataclass
class Reconciliation:
    target: Target
    read: int = 0
    expected: int = 0
    found: int = 0  # proved held: in a range whose counts agreed, or listed by transaction id
    missing: int = 0
    extra: int = 0
    pairs: int = 0
    none_found: int = 0  # pairs of which the platform holds nothing at all in the range: mapped otherwise by the send?
    start: int | None = None
    end: int | None = None
    missing_by: dict[str, Counter[str]] = field(
        default_factory=lambda: {"subscription": Counter(), "code": Counter(), "day": Counter()}
    )
    extra_by: dict[str, Counter[str]] = field(
        default_factory=lambda: {"subscription": Counter(), "code": Counter(), "day": Counter()}
    )
    missing_file: str | None = None
    state: str | None = None  # the ledger of --state, if given
    forgotten: int = 0  # missing events that ledger had as delivered, and no longer has
    confirmed: int = 0  # found events that ledger had as sent without an answer, and now has as delivered
    requests: int = 0
    retries: int = 0
    stopped: str | None = None
    interrupted: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def unchecked(self) -> int:
        """Expected events neither found nor missing: the run stopped before it knew."""
        return self.expected - self.found - self.missing

    @property
    def complete(self) -> bool:
        return self.stopped is None and not self.interrupted

    def count(self, kind: str, pair: Pair, day: int, events: int = 1, *, last_day: int | None = None) -> None:
        """`events` missing or extra on `day`, or somewhere from `day` to `last_day` when only a
        count of that range says they are there (the breakdown's key is then the range)."""
        if kind == "missing":
            self.missing += events
        else:
            self.extra += events
        breakdown = self.missing_by if kind == "missing" else self.extra_by
        breakdown["subscription"][pair[0]] += events
        breakdown["code"][pair[1]] += events
        days = iso_millis(day * DAY)[:10]
        if last_day is not None and last_day != day:
            days += "/" + iso_millis(last_day * DAY)[:10]
        breakdown["day"][days] += events

    def exit_code(self) -> ExitCode:
        """1 when something is missing or extra, or when no record read was an event to
        reconcile; 2 when nothing was read at all (as for send)."""
        if self.interrupted:
            return ExitCode.INTERRUPTED
        if self.stopped is not None:
            return ExitCode.FATAL
        if not self.read:
            return ExitCode.USAGE
        return ExitCode.DEAD_LETTERED if self.missing or self.extra or not self.expected else ExitCode.OK

    def breakdown(self, top: int | None = None) -> dict[str, dict[str, dict[str, int]]]:
        """Per subscription, code and day, those with a difference, the largest first."""
        breakdown: dict[str, dict[str, dict[str, int]]] = {}
        names = dict(zip(("subscription", "code"), self.target.require_reading().names, strict=True))
        for dimension in ("subscription", "code", "day"):
            totals = self.missing_by[dimension] + self.extra_by[dimension]
            ranked = sorted(totals, key=lambda key: (-totals[key], key))[:top]
            breakdown[names.get(dimension, dimension) + "s"] = {
                key: {"missing": self.missing_by[dimension][key], "extra": self.extra_by[dimension][key]} for key in ranked
            }
        return breakdown

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target.name,
            "read": self.read,
            "expected": self.expected,
            "found": self.found,
            "missing": self.missing,
            "unchecked": self.unchecked,
            "extra": self.extra,
            "pairs": self.pairs,
            "pairs_none_found": self.none_found,
            "from": iso_millis(self.start) if self.start is not None else None,
            "to": iso_millis(self.end) if self.end is not None else None,
            "breakdown": self.breakdown(),
            "missing_file": self.missing_file,
            "state": self.state,
            "forgotten": self.forgotten,
            "confirmed": self.confirmed,
            "requests": self.requests,
            "retries": self.retries,
            "stopped": self.stopped,
            "interrupted": self.interrupted,
            "warnings": self.warnings,
            "exit_code": int(self.exit_code()),
        }


def reconcile(
    options: Options, reading: ReadOptions, missing_path: Path | None, result: Reconciliation, ledger: State | None = None
) -> None:
    """All three steps; `result` keeps what was established if a step fails or is interrupted.
    Both passes select as a dry run of `options` does, with no dead-letter file: unreadable
    lines are only counted. The missing events are no longer delivered in `ledger` (the send's
    --state, locked by the caller), and its checkpoints are dropped once one is, so a send with
    it rereads its files and sends them; the listed ones it has as sent without an answer are
    delivered; a rotated key is remembered once a read is answered (`State.key_accepted`);
    nothing else is changed."""
    options = replace(options, dry_run=True, dead_letter=None)
    first = Replay(options)
    expected = Expected()
    unanswered = set() if ledger is None else ledger.unanswered()
    try:
        _expected(first, expected, unanswered)
    finally:  # interrupted, what was counted so far is all unchecked
        first.close()
        result.read = first.tally.read
        result.expected = sum(expected.totals.values())
        result.pairs = len(expected.totals)
    if expected.first is None or expected.last is None:
        return
    result.start = options.since if options.since is not None else expected.first
    result.end = options.until - 1 if options.until is not None else expected.last
    differences = asyncio.run(_narrow(expected, reading, result, ledger))
    if result.stopped is not None:
        return
    second = Replay(options)
    missing_file = DeadLetterFile(missing_path, options.target.name, shard=options.shard) if missing_path is not None else None
    try:
        _match(second, differences, missing_file, ledger, unanswered, result)
    finally:
        if missing_path is not None and result.missing:  # also when interrupted: the file holds those found so far
            result.missing_file = str(missing_path)
        second.close()
        if missing_file is not None:
            missing_file.close()
    for pair, ids, days in differences.ranges:
        for transaction_id, extra in ids.items():
            if extra:
                result.count("extra", pair, days[transaction_id], extra)
    for (pair, low, high), extra in differences.extra.items():
        result.count("extra", pair, low, extra, last_day=high)


def _expected(replay: Replay, expected: Expected, unanswered: set[tuple[str, int]]) -> None:
    key_of, place = replay.options.target.key, replay.options.target.require_reading().place
    for _, event in selected_events(replay):
        pair, millis = place(event)
        expected.add(pair, millis)
        if (key_of(event), millis) in unanswered:
            expected.unanswered.setdefault(pair, set()).add(millis // DAY)


async def _narrow(expected: Expected, reading: ReadOptions, result: Reconciliation, ledger: State | None) -> Differences:
    differences = Differences()
    assert result.start is not None and result.end is not None
    start, end = result.start, result.end
    async with result.target.require_reading().reader(reading) as reader:

        def bounds(low: int, high: int) -> tuple[int, int]:
            return max(start, low * DAY), min(end, high * DAY + DAY - 1)

        async def split(pair: Pair, low: int, high: int, found: int) -> None:
            wanted = expected.between(pair, low, high)
            if found == wanted and not expected.unanswered_between(pair, low, high):
                result.found += wanted
                return
            if wanted == 0:  # nothing expected there: everything found is extra, no listing needed
                differences.extra[(pair, low, high)] += found
            elif found == 0:
                differences.none_found.update((pair, day) for day in expected.days[pair] if low <= day <= high)
            elif low == high or found <= reader.page_size:  # one page lists it: cheaper than halving
                listed = await reader.events(pair[0], pair[1], *bounds(low, high))
                ids = Counter(transaction_id for transaction_id, _ in listed)
                differences.ranges.append((pair, ids, {transaction_id: millis // DAY for transaction_id, millis in listed}))
                for day in expected.days[pair]:
                    if low <= day <= high:
                        differences.listed[(pair, day)] = ids
            else:
                middle = (low + high) // 2
                left = await reader.count(pair[0], pair[1], *bounds(low, middle))
                await split(pair, low, middle, left)
                await split(pair, middle + 1, high, found - left)

        async def compare(pair: Pair) -> None:
            found = await reader.count(pair[0], pair[1], start, end)
            if not found:
                result.none_found += 1
            await split(pair, start // DAY, end // DAY, found)

        pairs = sorted(expected.totals)
        try:
            for at in range(0, len(pairs), PAIRS_AT_ONCE):
                outcomes = await asyncio.gather(
                    *(compare(pair) for pair in pairs[at : at + PAIRS_AT_ONCE]), return_exceptions=True
                )
                for outcome in outcomes:  # every read of the group has ended: none outlives the client
                    if isinstance(outcome, BaseException):
                        raise outcome
        except ReadFailed as error:
            result.stopped = str(error)
        finally:
            result.requests, result.retries = reader.requests, reader.retries
            if ledger is not None and reader.accepted:
                ledger.key_accepted()
                ledger.commit()  # kept even when a later read fails, and the run ends without saving
    return differences


def _match(
    replay: Replay,
    differences: Differences,
    missing_file: DeadLetterFile | None,
    ledger: State | None,
    unanswered: set[tuple[str, int]],
    result: Reconciliation,
) -> None:
    """The second pass: each expected event of a disagreeing range is found (its transaction id
    was listed) or missing; what stays listed afterwards is extra. The missing leave the ledger
    a chunk at a time, each once its entry is written; the listed that it has as sent without an
    answer are delivered there (agreeing counts may be another event cancelling a missing one, so
    `_narrow` lists their ranges whatever the counts)."""
    listed, none_found = differences.listed, differences.none_found
    key_of, place = replay.options.target.key, replay.options.target.require_reading().place
    forget: list[tuple[str, int]] = []
    stored: list[tuple[str, int]] = []  # listed by id, and in the ledger as sent without an answer
    try:
        for record, event in selected_events(replay):
            pair, millis = place(event)
            day, key = millis // DAY, key_of(event)
            ids = listed.get((pair, day))
            if ids is not None and ids[key] > 0:
                ids[key] -= 1
                result.found += 1
                if (key, millis) in unanswered:
                    stored.append((key, millis))
            elif ids is not None or (pair, day) in none_found:
                result.count("missing", pair, day)
                if missing_file is not None:
                    missing_file.write(record, MISSING_REASON, missing_on_platform=True)
                if ledger is not None:
                    forget.append((key, millis))
                    if len(forget) >= FORGET_CHUNK:
                        chunk, forget = forget, []
                        result.forgotten += ledger.forget(chunk)
    finally:
        if ledger is not None:
            if forget:
                result.forgotten += ledger.forget(forget)
            result.confirmed += ledger.confirm(stored)

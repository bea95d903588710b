"""The replay core, usable without the CLI: sources -> records -> converted events or outcomes.

Every record read leaves here either as a converted event (for a sink: stdout in a dry run, the
platform otherwise) or with its final outcome already counted (skipped or dead-lettered).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from segbill.deadletter import DEFAULT_PATH, DeadLetterFile
from segbill.report import Tally
from segbill.segment import InexactNumber, Invalid, Record, billable, dumps, exact_message, read_line
from segbill.sources import Source, read_lines
from segbill.targets import Target

# Past this many, bad input lines are counted and dead-lettered without a line each on stderr.
MAX_WARNINGS = 20


@dataclass
class Options:
    sources: list[Source]
    target: Target
    customer_path: tuple[str, ...] = ("userId",)
    dead_letter: Path = field(default_factory=lambda: Path(DEFAULT_PATH))
    dry_run: bool = False


class Replay:
    """Reads every source once and gives each record its outcome or its converted event."""

    def __init__(self, options: Options, warn: Callable[[str], None] | None = None) -> None:
        self.options = options
        self.tally = Tally(target=options.target.name, dry_run=options.dry_run)
        self.dead_letters = DeadLetterFile(options.dead_letter, options.target.name)
        self._warn = warn
        self._warnings = 0

    def events(self, on_progress: Callable[[str, int], None] | None = None) -> Iterator[tuple[Record, dict[str, Any]]]:
        """Converted events in input order; the caller owns their outcome once it takes one."""
        target = self.options.target
        customer_path = self.options.customer_path
        tally = self.tally
        for source in self.options.sources:
            progress = (lambda done, name=source.name: on_progress(name, done)) if on_progress else None
            for number, offset, end, data, problem in read_lines(source, progress):
                if problem is None:
                    records = read_line(data, source.name, number, offset, end)
                else:
                    records = [Record(source.name, number, offset, end, data, invalid=problem)]
                for record in records:
                    tally.read += 1
                    message = record.message
                    if message is None:
                        assert record.invalid is not None
                        self.dead_letter(record, record.invalid.kind, record.invalid.reason)
                        continue
                    kind = message.get("type")
                    if kind != "track":
                        self._not_billable(record, kind)
                        continue
                    try:
                        event = to_event(record, message, target, customer_path)
                    except Invalid as invalid:
                        self.dead_letter(record, invalid.kind, invalid.reason)
                        continue
                    yield record, event

    def _not_billable(self, record: Record, kind: Any) -> None:
        if isinstance(kind, str) and kind:
            self.tally.skipped[kind] += 1
        else:
            self.dead_letter(record, "missing_type", "The message has no \"type\" (track, identify, page, ...).")

    def dead_letter(self, record: Record, kind: str, reason: str) -> None:
        self.dead_letters.write(record, reason)
        self.tally.dead_lettered[kind] += 1
        self.tally.dead_letter_file = str(self.options.dead_letter)
        if self._warn is None:
            return
        self._warnings += 1
        if self._warnings <= MAX_WARNINGS:
            self._warn(f"{record.where()}: {reason}")
        elif self._warnings == MAX_WARNINGS + 1:
            self._warn(f"more records are being dead-lettered; see {self.options.dead_letter}")

    def close(self) -> None:
        self.dead_letters.close()
        self.tally.finish()


def to_event(record: Record, message: dict[str, Any], target: Target, customer_path: tuple[str, ...]) -> dict[str, Any]:
    """A track message -> the platform's event, or `Invalid`. Integers beyond 64 bits stay exact."""
    try:
        return target.convert(billable(message, customer_path))
    except InexactNumber:
        record.message = exact_message(record)
        return target.convert(billable(record.message, customer_path))


def dry_run(replay: Replay, out: IO[bytes]) -> None:
    """Print each converted event exactly as it would stand in a batch, one per line."""
    tally = replay.tally
    write = out.write
    with _interruptible() as critical:
        for _record, event in replay.events():
            line = dumps(event) + b"\n"
            with critical:  # an event printed is an event counted, whenever a signal lands
                try:
                    write(line)
                except BrokenPipeError:
                    tally.not_attempted += 1
                    tally.stopped = "stdout was closed"
                    break
                tally.delivered += 1


class _Critical:
    """Defers SIGINT/SIGTERM's KeyboardInterrupt to the end of a `with` block."""

    def __init__(self) -> None:
        self.inside = False
        self.pending = False

    def __enter__(self) -> None:
        self.inside = True

    def __exit__(self, *exc: object) -> None:
        self.inside = False
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt

    def handler(self, signum: int, frame: object) -> None:
        if self.inside:
            self.pending = True
        else:
            raise KeyboardInterrupt


@contextlib.contextmanager
def _interruptible() -> Iterator[_Critical]:
    critical = _Critical()
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[signum] = signal.signal(signum, critical.handler)
        except ValueError:  # not the main thread: leave signals alone
            break
    try:
        yield critical
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

"""Outcomes and the summary: every record read ends in exactly one counted outcome."""

from __future__ import annotations

import math
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from typing import IO, Any

from rich.console import Console
from rich.table import Table


class ExitCode(IntEnum):
    OK = 0
    DEAD_LETTERED = 1
    USAGE = 2
    FATAL = 3
    INTERRUPTED = 130


@dataclass
class Tally:
    """Counts of outcomes. `read == delivered + skipped + dead-lettered + not attempted + unanswered` always."""

    target: str
    dry_run: bool
    read: int = 0
    delivered: int = 0
    already_delivered: int = 0  # of `delivered`: the platform already held them (a lost answer, a rerun)
    missing_resent: int = 0  # marked missing on the platform by reconcile, delivered per the ledger: sent again
    skipped: Counter[str] = field(default_factory=Counter)
    dead_lettered: Counter[str] = field(default_factory=Counter)
    not_attempted: int = 0
    unanswered: int = 0  # sent (once or more) when the run stopped, with no final answer: maybe stored
    requests: int = 0
    retries: int = 0
    started: float = field(default_factory=time.monotonic)
    elapsed: float | None = None
    run_id: str = field(default_factory=lambda: secrets.token_hex(3))  # ties progress lines and the summary to one run
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    ended_at: datetime | None = None
    stopped: str | None = None  # why the run ended early, if it did
    interrupted: bool = False
    dead_letter_file: str | None = None
    files_already_done: int = 0  # skipped whole: a checkpoint says every record had its outcome
    resumed_at: list[str] = field(default_factory=list)  # "file:line" where a file was resumed
    state_file: str | None = None
    warnings: list[str] = field(default_factory=list)  # what may not be what the user meant (a mapping unused)
    nothing_selected: bool = False  # track messages were read, and the include/exclude rules left out every one

    def finish(self) -> None:
        self.elapsed = time.monotonic() - self.started
        self.ended_at = datetime.now(UTC)

    @property
    def empty(self) -> bool:
        """Nothing was read, and no checkpoint said the input was done before: an empty file or
        pipe must not look like success to cron."""
        return self.read == 0 and not self.files_already_done

    @property
    def unsettled(self) -> int:
        """Records read whose outcome is not counted (yet)."""
        return (
            self.read
            - self.delivered
            - sum(self.skipped.values())
            - sum(self.dead_lettered.values())
            - self.not_attempted
            - self.unanswered
        )

    def exit_code(self) -> ExitCode:
        if self.interrupted:
            return ExitCode.INTERRUPTED
        if self.stopped is not None:
            return ExitCode.FATAL
        if self.empty or self.nothing_selected:
            return ExitCode.USAGE
        return ExitCode.DEAD_LETTERED if self.dead_lettered else ExitCode.OK

    def as_dict(self) -> dict[str, Any]:
        elapsed = self.elapsed if self.elapsed is not None else time.monotonic() - self.started
        done = "converted" if self.dry_run else "delivered"
        return {
            "run_id": self.run_id,
            "started_at": iso_time(self.started_at),
            "ended_at": iso_time(self.ended_at) if self.ended_at else None,
            "target": self.target,
            "dry_run": self.dry_run,
            "read": self.read,
            done: self.delivered,
            "already_delivered": self.already_delivered,
            "missing_resent": self.missing_resent,
            "skipped": sum(self.skipped.values()),
            "skipped_by_reason": dict(sorted(self.skipped.items())),
            "dead_lettered": sum(self.dead_lettered.values()),
            "dead_lettered_by_reason": dict(sorted(self.dead_lettered.items())),
            "not_attempted": self.not_attempted,
            "unanswered": self.unanswered,
            "requests": self.requests,
            "retries": self.retries,
            "elapsed_seconds": round(elapsed, 3),
            "events_per_second": round(self.read / elapsed, 1) if elapsed > 0 else None,
            "dead_letter_file": self.dead_letter_file,
            "files_already_done": self.files_already_done,
            "resumed_at": self.resumed_at,
            "interrupted": self.interrupted,
            "stopped": self.stopped,
            "warnings": self.warnings,
            "exit_code": int(self.exit_code()),
        }


RESUMED_SHOWN = 3  # files named in the human summary's "resumed at"; --json lists them all


def iso_time(moment: datetime) -> str:
    """ISO 8601 UTC to the second, as logs and the --json summary write it."""
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _breakdown(counts: Counter[str]) -> str:
    return ", ".join(f"{reason} {count:,}" for reason, count in sorted(counts.items()))


def render(tally: Tally, stream: IO[str], *, terminal: bool) -> None:
    """The human summary: a rich table on a terminal, plain `name value` lines for logs."""
    data = tally.as_dict()
    done = "converted" if tally.dry_run else "delivered"
    rows: list[tuple[str, str, str]] = [
        ("read", f"{tally.read:,}", "records: one per non-blank line, or per message in a batch line"),
        (done, f"{tally.delivered:,}", "printed to stdout" if tally.dry_run else ""),
    ]
    if tally.already_delivered:
        rows.append(("already delivered", f"{tally.already_delivered:,}", "of those delivered: the platform held them already"))
    if tally.missing_resent:
        rows.append(
            (
                "missing resent",
                f"{tally.missing_resent:,}",
                "the ledger had them as delivered; reconcile found them missing on the platform",
            )
        )
    rows += [
        ("skipped", f"{data['skipped']:,}", _breakdown(tally.skipped)),
        ("dead-lettered", f"{data['dead_lettered']:,}", _breakdown(tally.dead_lettered)),
    ]
    if tally.not_attempted or not tally.dry_run:
        rows.append(("not attempted", f"{tally.not_attempted:,}", ""))
    if tally.unanswered:
        rows.append(
            ("unanswered", f"{tally.unanswered:,}", "sent, no final answer before the stop: maybe stored; a rerun resends them")
        )
    if not tally.dry_run:
        rows.append(("requests", f"{tally.requests:,}", f"{tally.retries:,} retries"))
    if tally.files_already_done:
        rows.append(
            ("files skipped", f"{tally.files_already_done:,}", f"finished by an earlier run with --state {tally.state_file}")
        )
    if tally.resumed_at:
        more = len(tally.resumed_at) - RESUMED_SHOWN
        rows.append(
            (
                "resumed at",
                ", ".join(tally.resumed_at[:RESUMED_SHOWN]),
                f"and {more:,} more file{'s' if more > 1 else ''}" if more > 0 else "file:line",
            )
        )
    rate = data["events_per_second"]
    rows.append(("elapsed", f"{data['elapsed_seconds']:.2f} s", f"{rate:,.0f} records/s" if rate else ""))
    rows.append(("run", tally.run_id, f"{data['started_at']} to {data['ended_at']}"))
    mode = "dry run" if tally.dry_run else "send"
    title = f"segbill {mode} to {tally.target}"
    if tally.interrupted:
        title += ": interrupted"
    elif tally.stopped:
        title += f": stopped early ({tally.stopped})"
    if tally.dead_letter_file and tally.dead_lettered:
        rows.append(("dead-letter file", tally.dead_letter_file, "replay it with segbill send"))
    elif tally.dead_lettered and tally.dry_run:
        rows.append(("dead-letter file", "not written", "a dry run writes one only with --dead-letter PATH"))
    rows.extend(("warning", text, "") for text in tally.warnings)
    advice = _next_step(tally)
    if terminal:
        table = Table(title=title, show_header=False, title_justify="left")
        for name, value, note in rows:
            table.add_row(name, value, note)
        console = Console(file=stream, stderr=True)
        console.print(table)
        if advice:
            console.print(advice, markup=False, highlight=False)
        return
    stream.write(title + "\n")
    for name, value, note in rows:
        stream.write(f"  {name:<16} {value}{'  (' + note + ')' if note else ''}\n")
    if advice:
        stream.write(advice + "\n")
    stream.flush()


def _next_step(tally: Tally) -> str | None:
    """How to finish a send that stopped early: the same command, resumed by --state."""
    if tally.dry_run or not (tally.interrupted or tally.stopped):
        return None
    first = "To resume, run" if tally.interrupted else "Once the cause is fixed, run"
    if tally.state_file:
        return f"{first} the same command again: --state {tally.state_file} continues where this run stopped."
    return (
        f"{first} the same command again: without --state it reads everything again (the platform keeps "
        "one copy of each event); add --state FILE to make the next run resumable."
    )


class Progress:
    """Live progress on stderr: on a terminal, a rich bar (by bytes for files, so it has an end and
    an ETA; by records on stdin) over a line of counts; otherwise a plain, timestamped line every
    `every` seconds (cron logs), tagged with the run id the summary also carries.

    How far counts what has its final outcome, not what was read: delivery lags reading (a
    batch out, a rate-limit pause), and 100% must mean done. Elapsed runs from the run's start."""

    def __init__(self, tally: Tally, total_bytes: int | None, stream: IO[str], *, terminal: bool, every: float = 10.0) -> None:
        self.tally = tally
        self.total_bytes = total_bytes
        self.stream = stream
        self.terminal = terminal
        self.every = every
        # Seconds sending is still paused by a rate limit; the sender sets it (its Pacer knows).
        self.pause_left: Callable[[], float] | None = None
        self._done: dict[str, int] = {}
        self._bar: Any = None
        self._task: Any = None

    def on_bytes(self, source: str, done: int) -> None:
        self._done[source] = done

    @property
    def bytes_done(self) -> int:
        return sum(self._done.values())

    @property
    def settled(self) -> int:
        """Records read that have their final outcome."""
        return self.tally.read - self.tally.unsettled

    @property
    def done(self) -> float:
        """Bytes of the input done: those read, scaled by the share of records read that are settled."""
        read = self.tally.read
        return self.bytes_done * self.settled / read if read else 0.0

    def percent(self) -> int:
        """How far, in whole percent, rounded down: 100 only once everything read is settled."""
        return math.floor(100 * self.done / self.total_bytes) if self.total_bytes else 0

    def _counts(self) -> list[str]:
        tally = self.tally
        elapsed = max(time.monotonic() - tally.started, 1e-9)
        parts = [
            f"read {tally.read:,}",
            f"delivered {tally.delivered:,}",
            f"skipped {sum(tally.skipped.values()):,}",
            f"dead-lettered {sum(tally.dead_lettered.values()):,}",
            f"{tally.read / elapsed:,.0f} records/s",
        ]
        if tally.retries:
            parts.append(f"{tally.retries:,} retries")
        paused = self.pause_left() if self.pause_left is not None else 0.0
        if paused > 0:
            parts.append(f"waiting: rate limit ({math.ceil(paused)} s)")
        return parts

    def line(self) -> str:
        """The plain progress line: when, which run, how far, how long, then the counts."""
        elapsed = time.monotonic() - self.tally.started
        head = [f"elapsed {_clock(elapsed)}"]
        done = self.done
        if self.total_bytes:
            head.insert(0, f"{self.percent()}% of the input")
            if done:
                head.append(f"ETA {_clock(elapsed * (self.total_bytes - done) / done)}")
        now = iso_time(datetime.now(UTC))
        return f"{now} segbill[{self.tally.run_id}]: {', '.join(head)}; {', '.join(self._counts())}"

    def start(self) -> None:
        if not self.terminal:
            return
        from rich.progress import BarColumn, DownloadColumn, TextColumn, TimeRemainingColumn

        elapsed = TextColumn("{task.fields[elapsed]}")  # rich's own stops when the bar is full, not when the run ends
        if self.total_bytes is None:  # stdin: no end is known, so count records
            columns: list[Any] = [BarColumn(bar_width=24), TextColumn("{task.completed:,} records"), elapsed]
        else:
            columns = [
                BarColumn(bar_width=24),
                TextColumn("{task.fields[percent]:>3}%"),
                DownloadColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("elapsed"),
                elapsed,
            ]
        console = Console(file=self.stream, stderr=True, force_terminal=True)
        self._bar = _bar_with_counts()(*columns, console=console, transient=True, auto_refresh=False)
        self._task = self._bar.add_task("", total=self.total_bytes, percent=0, elapsed=_clock(0))
        self._bar.start()
        self.tick()

    def tick(self) -> None:
        if self._bar is not None:
            self._bar.counts = " · ".join(self._counts())
            done = self.settled if self.total_bytes is None else self.done
            elapsed = _clock(time.monotonic() - self.tally.started)
            self._bar.update(self._task, completed=done, percent=self.percent(), elapsed=elapsed, refresh=True)
        else:
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    @property
    def interval(self) -> float:
        return 0.1 if self.terminal else self.every

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _clock(seconds: float) -> str:
    """1:02:03, as rich's bar writes times."""
    whole = int(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def _bar_with_counts() -> Any:
    """rich's bar with a line of counts under it (rich is imported only when a bar is shown)."""
    from rich.console import RenderableType
    from rich.progress import Progress as Bar
    from rich.text import Text

    class BarWithCounts(Bar):
        counts = ""

        def get_renderables(self) -> Iterable[RenderableType]:
            yield from super().get_renderables()
            yield Text(self.counts)

    return BarWithCounts

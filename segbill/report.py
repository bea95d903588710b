"""Outcomes and the summary: every record read ends in exactly one counted outcome."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
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
    """Counts of outcomes. `read == delivered + skipped + dead-lettered + not attempted` always."""

    target: str
    dry_run: bool
    read: int = 0
    delivered: int = 0
    already_delivered: int = 0  # of `delivered`: the platform already held them (a lost answer, a rerun)
    skipped: Counter[str] = field(default_factory=Counter)
    dead_lettered: Counter[str] = field(default_factory=Counter)
    not_attempted: int = 0
    requests: int = 0
    retries: int = 0
    started: float = field(default_factory=time.monotonic)
    elapsed: float | None = None
    stopped: str | None = None  # why the run ended early, if it did
    interrupted: bool = False
    dead_letter_file: str | None = None
    files_already_done: int = 0  # skipped whole: a checkpoint says every record had its outcome
    resumed_at: list[str] = field(default_factory=list)  # "file:line" where a file was resumed
    state_file: str | None = None
    warnings: list[str] = field(default_factory=list)  # what may not be what the user meant (a mapping unused)

    def finish(self) -> None:
        self.elapsed = time.monotonic() - self.started

    @property
    def empty(self) -> bool:
        """Nothing was read, and no checkpoint said the input was done before: an empty file or
        pipe must not look like success to cron."""
        return self.read == 0 and not self.files_already_done

    @property
    def unsettled(self) -> int:
        """Records read whose outcome is not counted (yet)."""
        return self.read - self.delivered - sum(self.skipped.values()) - sum(self.dead_lettered.values()) - self.not_attempted

    def exit_code(self) -> ExitCode:
        if self.interrupted:
            return ExitCode.INTERRUPTED
        if self.stopped is not None:
            return ExitCode.FATAL
        if self.empty:
            return ExitCode.USAGE
        return ExitCode.DEAD_LETTERED if self.dead_lettered else ExitCode.OK

    def as_dict(self) -> dict[str, Any]:
        elapsed = self.elapsed if self.elapsed is not None else time.monotonic() - self.started
        done = "converted" if self.dry_run else "delivered"
        return {
            "target": self.target,
            "dry_run": self.dry_run,
            "read": self.read,
            done: self.delivered,
            "already_delivered": self.already_delivered,
            "skipped": sum(self.skipped.values()),
            "skipped_by_reason": dict(sorted(self.skipped.items())),
            "dead_lettered": sum(self.dead_lettered.values()),
            "dead_lettered_by_reason": dict(sorted(self.dead_lettered.items())),
            "not_attempted": self.not_attempted,
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
    rows += [
        ("skipped", f"{data['skipped']:,}", _breakdown(tally.skipped)),
        ("dead-lettered", f"{data['dead_lettered']:,}", _breakdown(tally.dead_lettered)),
    ]
    if tally.not_attempted or not tally.dry_run:
        rows.append(("not attempted", f"{tally.not_attempted:,}", ""))
    if not tally.dry_run:
        rows.append(("requests", f"{tally.requests:,}", f"{tally.retries:,} retries"))
    if tally.files_already_done:
        rows.append(("files skipped", f"{tally.files_already_done:,}", f"finished by an earlier run with --state {tally.state_file}"))
    if tally.resumed_at:
        more = len(tally.resumed_at) - RESUMED_SHOWN
        rows.append(("resumed at", ", ".join(tally.resumed_at[:RESUMED_SHOWN]), f"and {more:,} more file{'s' if more > 1 else ''}" if more > 0 else "file:line"))
    rate = data["events_per_second"]
    rows.append(("elapsed", f"{data['elapsed_seconds']:.2f} s", f"{rate:,.0f} records/s" if rate else ""))
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
    """Live progress on stderr: a rich bar on a terminal (by bytes for files, so it has an end),
    a plain line every `every` seconds otherwise (cron logs)."""

    def __init__(self, tally: Tally, total_bytes: int | None, stream: IO[str], *, terminal: bool, every: float = 10.0) -> None:
        self.tally = tally
        self.total_bytes = total_bytes
        self.stream = stream
        self.terminal = terminal
        self.every = every
        self._done: dict[str, int] = {}
        self._bar: Any = None
        self._task: Any = None

    def on_bytes(self, source: str, done: int) -> None:
        self._done[source] = done

    @property
    def bytes_done(self) -> int:
        return sum(self._done.values())

    def _line(self, *, short: bool = False) -> str:
        tally = self.tally
        elapsed = max(time.monotonic() - tally.started, 1e-9)
        dead = sum(tally.dead_lettered.values())
        rate = tally.read / elapsed
        if short:  # beside the bar, which shows the bytes and the time already
            return f"read {tally.read:,} · delivered {tally.delivered:,} · dead {dead:,} · {rate:,.0f}/s"
        text = f"read {tally.read:,}, delivered {tally.delivered:,}, dead-lettered {dead:,}, {rate:,.0f} records/s"
        if self.total_bytes:
            text += f", {100 * self.bytes_done / self.total_bytes:.0f}% of the input"
        return text

    def start(self) -> None:
        if not self.terminal:
            return
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.progress import Progress as Bar

        self._bar = Bar(
            BarColumn(bar_width=24), DownloadColumn(), TimeElapsedColumn(), TextColumn("{task.description}"),
            console=Console(file=self.stream, stderr=True), transient=True,
        )
        self._task = self._bar.add_task(self._line(short=True), total=self.total_bytes)
        self._bar.start()

    def tick(self) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=self.bytes_done, description=self._line(short=True))
        else:
            self.stream.write(f"segbill: {self._line()}\n")
            self.stream.flush()

    @property
    def interval(self) -> float:
        return 0.1 if self.terminal else self.every

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

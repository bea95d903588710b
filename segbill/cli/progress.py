"""Live progress on stderr while a send runs: a rich bar on a terminal, timestamped lines otherwise
(the run loop's `segbill.runner.Progress`)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import IO, Any

from rich.console import Console

from segbill.report import Tally, iso_time


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
        self.waiting = 0.0  # seconds sending is still paused by a rate limit, as of the last tick
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
        if self.waiting > 0:
            parts.append(f"waiting: rate limit ({math.ceil(self.waiting)} s)")
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
        self.tick(self.waiting)

    def tick(self, waiting: float) -> None:
        self.waiting = waiting
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

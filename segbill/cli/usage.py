"""What every command shares: usage errors, notices, reading the paths it was given, and how the
process collects its garbage."""

from __future__ import annotations

import contextlib
import errno
import gc
import io
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn, TextIO

import typer

from segbill.report import ExitCode
from segbill.sources import Source, UsageError, expand


def fail(message: str, code: ExitCode = ExitCode.USAGE) -> NoReturn:
    print(f"segbill: error: {message}", file=sys.stderr)
    raise typer.Exit(int(code))


def warn(message: str) -> None:
    print(f"segbill: {message}", file=sys.stderr)


def inputs(paths: list[str] | None) -> list[Source]:
    """The command's PATH arguments -> sources; a usage error exits 2 before anything is read."""
    passed_over: list[Path] = []
    try:
        closed = sys.stdin is None  # started with stdin closed (<&-)
        sources = expand(
            paths or [], stdin_is_terminal=not closed and sys.stdin.isatty(), stdin_closed=closed, passed_over=passed_over
        )
    except UsageError as error:
        fail(str(error))
    if passed_over:
        shown = ", ".join(str(path) for path in passed_over[:5]) + (", ..." if len(passed_over) > 5 else "")
        warn(f"not reading {len(passed_over)} file(s) in folders that do not look like exports: {shown}")
    return sources


class ClosedStdout(io.TextIOBase):
    """stdout when the process started with it closed (`>&-`): every write fails as it does when
    the reader of a pipe went away, so each command handles it as it handles `| head`."""

    @property
    def buffer(self) -> ClosedStdout:
        return self

    def write(self, data: object) -> int:
        raise BrokenPipeError(errno.EPIPE, "stdout is closed")

    def fileno(self) -> int:
        return 1  # held on /dev/null by hold_closed_streams

    def isatty(self) -> bool:
        return False


def hold_closed_streams() -> None:
    """A process started with stdin, stdout or stderr closed: hold fds 0-2 on /dev/null, so that
    no file segbill opens (the state, the dead letters) takes their number, and give stdout a
    stream that fails on every write. sys.stdin stays None: a closed stdin has nothing to read.
    A closed stderr swallows notices (Python would otherwise print them into stdout's events)."""
    for fd in (0, 1, 2):
        if _is_closed(fd):
            os.open(os.devnull, os.O_RDWR)  # the lowest free number: this one
    if sys.stdout is None:
        sys.stdout = ClosedStdout()
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 -- the process's stderr, for its whole life


def _is_closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


def report_stream() -> TextIO:
    """Where a command's report goes: stdout, or stderr after an error line when stdout is closed."""
    if isinstance(sys.stdout, ClosedStdout):
        print("segbill: error: stdout is closed; the report follows on stderr.", file=sys.stderr)
        return sys.stderr
    return sys.stdout


def say_empty(sources: list[Source]) -> None:
    """An input with no record at all is a usage error (exit 2), never a quiet success."""
    names = ", ".join(source.name for source in sources[:3]) + (", ..." if len(sources) > 3 else "")
    print(f"segbill: error: no records in {names}: the input is empty.", file=sys.stderr)


# Young objects tracked before the cyclic collector runs (CPython's default is 700).
GC_THRESHOLDS = (50_000, 20, 20)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT and SIGTERM end a read-only command (check, reconcile) with KeyboardInterrupt, so
    it reports what it did, incomplete. Set explicitly: a shell starts a background job with
    SIGINT ignored, and SIGTERM would otherwise end the process without a word."""
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[signum] = signal.signal(signum, signal.default_int_handler)
        except ValueError:  # not the main thread: leave signals alone
            break
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def streaming_gc() -> Iterator[None]:
    """Keep the cyclic garbage collector out of the way of a streaming run.

    Messages, records and events are trees: reference counting frees each one as soon as it is
    done. The cyclic collector still walked them every 700 allocations, and every object the
    imports created on each full pass: 5% of a dry run's CPU, and pauses of up to 50 ms that
    made paced requests late. Start-up objects are frozen out of its sight and it runs about 70
    times less often; the rare cycles (a retried request's exception) are still collected.
    """
    previous = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*previous)
        gc.unfreeze()

"""What every command shares: usage errors, notices, reading the paths it was given, and how the
process collects its garbage."""

from __future__ import annotations

import contextlib
import gc
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

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
        sources = expand(paths or [], stdin_is_terminal=sys.stdin.isatty(), passed_over=passed_over)
    except UsageError as error:
        fail(str(error))
    if passed_over:
        shown = ", ".join(str(path) for path in passed_over[:5]) + (", ..." if len(passed_over) > 5 else "")
        warn(f"not reading {len(passed_over)} file(s) in folders that do not look like exports: {shown}")
    return sources


# Young objects tracked before the cyclic collector runs (CPython's default is 700).
GC_THRESHOLDS = (50_000, 20, 20)


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

"""What every command says to people: usage errors, notices, and reading the paths it was given."""

from __future__ import annotations

import sys
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

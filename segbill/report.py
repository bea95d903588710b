"""Outcomes and the summary: every record read ends in exactly one counted outcome."""

from __future__ import annotations

import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any


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
    nothing_selected: bool = False  # the include/exclude rules or the time window left out every track message

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


def iso_time(moment: datetime) -> str:
    """ISO 8601 UTC to the second, as logs and the --json summary write it."""
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")

"""Where converted events go: the small interface between the run loop and its two sinks.

The run loop (`segbill.runner`) hands a sink batches of `Item`s; the sink reports each event's
outcome back through `Outcomes`, which the run loop implements (it keeps the ledger, the
checkpoints and the summary). A sink knows nothing else of the run: neither how records were
read nor how outcomes are counted, nor signals or progress. Two sinks: `PrintSink` (a dry run)
here, `segbill.delivery.HttpSink` (a send).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import IO, Protocol, TypeAlias

from segbill.segment import Record

# One converted event on its way: its record (for its outcome), idempotency key and exact bytes.
# A plain tuple: one is made per event, and a class's constructor costs several times more.
Item: TypeAlias = tuple[Record, str, bytes]


class OutcomeLost(Exception):
    """An outcome could not be recorded (a full disk): the sink stops; a rerun redoes the rest."""


class Outcomes(Protocol):
    """What a sink reports. Every item it takes ends in exactly one of `delivered`, `rejected`
    or `not_attempted`. A call raises `OutcomeLost` when the outcome cannot be written (a full
    disk): the sink then stops sending, and leaves the rest to the run loop."""

    def sending(self, items: Sequence[Item]) -> None:
        """These events are about to leave in one request, for the first time in this run."""

    def delivered(self, items: Sequence[Item], *, already: int = 0) -> None:
        """These are stored (`already` of them were held before this run sent them)."""

    def rejected(self, item: Item, kind: str, reason: str) -> None:
        """This one is refused (`kind` "rejected") or could not be delivered ("unreachable")."""

    def not_attempted(self, items: Sequence[Item], *, unanswered: bool = False) -> None:
        """These were never sent, or (`unanswered`) sent with no final answer before the stop."""

    def request(self, *, retry: bool) -> None:
        """A request went out (`retry`: again, with the identical body)."""

    def settled(self) -> None:
        """The outcomes reported so far are final: a checkpoint may pass them."""


class Sink(Protocol):
    """Takes batches until told to stop; `take` may wait until the sink has room (back-pressure)."""

    @property
    def batch_size(self) -> int | None:
        """Events per batch; None: each claimed block is one batch."""

    @property
    def waits(self) -> bool:
        """Whether `take` and `finish` may suspend (for answers, for room): then the run needs an
        asyncio event loop. A sink that never waits runs without one."""

    @property
    def stopped(self) -> str | None:
        """Why the sink stopped (a fatal answer, stdout closed, told to), if it did."""

    async def start(self, outcomes: Outcomes) -> None: ...

    async def take(self, batch: list[Item]) -> None:
        """Own `batch` from now on (its outcomes come through `Outcomes`). Cancelled while it
        waits for room, the batch stays the caller's."""

    async def finish(self) -> None:
        """Wait until every batch taken has its outcomes."""

    def stop(self, reason: str) -> None:
        """Take and send nothing more; what is out may finish. Safe in a signal handler."""

    async def cancel(self) -> None:
        """A hard stop: what is out ends now (not attempted, or unanswered if it was sent)."""

    def waiting(self) -> float:
        """Seconds the destination asked the sink to wait (a rate limit), 0 when it does not."""

    async def close(self) -> None: ...


class PrintSink:
    """A dry run: each event as one line on a binary stream, exactly as it would stand in a
    batch; a batch is written (and flushed, so a pipe's reader sees it) with one call."""

    batch_size: int | None = None
    waits = False

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.stopped: str | None = None
        self._outcomes: Outcomes | None = None

    async def start(self, outcomes: Outcomes) -> None:
        self._outcomes = outcomes

    async def take(self, batch: list[Item]) -> None:
        assert self._outcomes is not None
        if self.stopped is not None:
            self._outcomes.not_attempted(batch)
            return
        try:
            self.out.write(b"\n".join([data for _, _, data in batch]) + b"\n")
            self.out.flush()
        except OSError as error:  # the reader went away (| head), or a full disk under > file
            self.stop("stdout was closed" if isinstance(error, BrokenPipeError) else f"cannot write to stdout ({error.strerror})")
            self._outcomes.not_attempted(batch)
            return
        self._outcomes.delivered(batch)

    async def finish(self) -> None:
        pass

    def stop(self, reason: str) -> None:
        if self.stopped is None:
            self.stopped = reason

    async def cancel(self) -> None:
        pass

    def waiting(self) -> float:
        return 0.0

    async def close(self) -> None:
        pass

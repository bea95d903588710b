"""The run loop: read -> convert -> claim (`Replay.blocks`) -> batch -> hand to a sink -> settle
outcomes -> checkpoint, with signals, grace, progress and closing in this one place.

A sink (`segbill.sink`) is where the events go: `PrintSink` for a dry run, `HttpSink`
(`segbill.delivery`) for a send. It reports outcomes through `Outcomes`, implemented here over
the `Replay`; neither the sink nor the reading knows of signals or progress.
"""

from __future__ import annotations

import signal
from collections import deque
from collections.abc import Callable, Coroutine, Iterator, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Protocol, TypeVar

from segbill.pipeline import STORAGE_ERRORS, Claimed, Replay, event_bytes
from segbill.segment import dumps
from segbill.sink import Item, OutcomeLost, Sink

if TYPE_CHECKING:
    import asyncio

SIGNALS = (signal.SIGINT, signal.SIGTERM)
T = TypeVar("T")


class Progress(Protocol):
    """Progress of a run, told by the run loop (a rich bar or log lines in `segbill.cli.progress`)."""

    @property
    def interval(self) -> float:
        """Seconds between two ticks."""

    def start(self) -> None: ...

    def on_bytes(self, source: str, done: int) -> None:
        """`done` bytes of `source` are read."""

    def tick(self, waiting: float) -> None:
        """Show how far the run is; `waiting`: seconds the sink is paused by a rate limit."""

    def stop(self) -> None: ...


class NoProgress:
    """The default: nothing shown."""

    interval = 3600.0

    def start(self) -> None:
        pass

    def on_bytes(self, source: str, done: int) -> None:
        pass

    def tick(self, waiting: float) -> None:
        pass

    def stop(self) -> None:
        pass


class _Interrupts:
    """SIGINT/SIGTERM during a run. The first stops the sink taking and sending, and gives what
    is out `grace` seconds; the second (or the end of the grace) stops it at once. Without an
    event loop (a sink that never waits) the run stops at the end of the block it is on.

    The handler never raises where a record could be half-counted: only while `waiting` (a read
    from stdin, which may wait for ever) does a signal end the wait with KeyboardInterrupt.
    Outside the main thread, signals are left alone."""

    def __init__(self, replay: Replay, sink: Sink, grace: float, loop: asyncio.AbstractEventLoop | None) -> None:
        self.replay = replay
        self.sink = sink
        self.grace = grace
        self.loop = loop
        self.main: asyncio.Task[None] | None = None
        if loop is not None:
            import asyncio

            self.main = asyncio.current_task()
        self.requested = 0
        self.waiting = False
        self._previous: dict[int, object] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._over = False  # the run is past the point where a hard stop means anything

    def __enter__(self) -> _Interrupts:
        for signum in SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread
                break
        return self

    def __exit__(self, *exc: object) -> None:
        self._over = True
        if self._timer is not None:
            self._timer.cancel()
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested += 1
        if self.requested == 1:
            self.replay.interrupted()
            self.sink.stop("interrupted")
        # A handler runs between two bytecodes of the loop's thread: the loop is told through
        # its thread-safe door, never by touching its state from here.
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._start_grace if self.requested == 1 else self._hard_stop)
        if self.waiting:
            raise KeyboardInterrupt

    def _start_grace(self) -> None:
        if not self._over and self.loop is not None:
            self._timer = self.loop.call_later(self.grace, self._hard_stop)

    def _hard_stop(self) -> None:
        if not self._over and self.main is not None:
            self._over = True
            self.main.cancel()

    def reading(self, read: Iterator[T]) -> Iterator[T]:
        """`read`, with a signal ending a wait for the next one (see `Replay.blocks`)."""
        end = object()
        while True:
            self.waiting = True
            try:
                item = next(read, end)
            finally:
                self.waiting = False
            if item is end:
                return
            yield item  # type: ignore[misc]


class _Outcomes:
    """`segbill.sink.Outcomes` over the `Replay`: an outcome that cannot be written stops the
    run (`Replay.storage_failed`) and the sink (`OutcomeLost`)."""

    def __init__(self, replay: Replay) -> None:
        self.replay = replay

    def sending(self, items: Sequence[Item]) -> None:
        try:
            self.replay.sending(items)
        except STORAGE_ERRORS as error:
            raise self._lost(error) from None

    def delivered(self, items: Sequence[Item], *, already: int = 0) -> None:
        try:
            self.replay.delivered(items, already=already)
        except STORAGE_ERRORS as error:
            raise self._lost(error) from None

    def rejected(self, item: Item, kind: str, reason: str) -> None:
        try:
            self.replay.rejected(item, kind, reason)
        except STORAGE_ERRORS as error:
            raise self._lost(error) from None

    def not_attempted(self, items: Sequence[Item], *, unanswered: bool = False) -> None:
        self.replay.not_attempted(items, unanswered=unanswered)

    def request(self, *, retry: bool) -> None:
        self.replay.request(retry=retry)

    def settled(self) -> None:
        try:
            self.replay.checkpoint()
        except STORAGE_ERRORS as error:
            raise self._lost(error) from None

    def _lost(self, error: Exception) -> OutcomeLost:
        self.replay.storage_failed(error)
        return OutcomeLost(str(self.replay.failure))


class _Batches:
    """Claimed events -> the sink's batches. Events sent by an earlier run without an answer
    (maybe stored) travel only with the others of that same request, never beside new events
    (see `State.sending`). Every event added is in a batch or a buffer here until handed out,
    so whatever stops the run finds it (`held`)."""

    def __init__(self, size: int | None) -> None:
        self.size = size
        self.ready: deque[list[Item]] = deque()  # complete batches, in order
        self.new: list[Item] = []
        self.resend: list[Item] = []  # all sent together before, in request `resent_from`
        self.resent_from: int | None = None

    def add(self, block: list[Claimed]) -> None:
        if not block:  # handed out so that a long stretch without events still hears a signal
            return
        if self.size is None:  # each block is one batch
            self.ready.append([(record, key, event_bytes(event)) for record, event, key, _ in block])
            return
        size, ready = self.size, self.ready
        for record, event, key, sent_in in block:
            # Held across blocks (and then in batches out): the parsed message goes, the bytes
            # are right-sized (see `Record.drop_message`, `_right_sized`).
            record.drop_message()
            item = (record, key, event if type(event) is bytes else _right_sized(dumps(event)))
            if self.resend and sent_in != self.resent_from:
                ready.append(self._take_resend())
            if sent_in is None:
                self.new.append(item)
                if len(self.new) >= size:
                    ready.append(self._take_new())
            else:
                self.resend.append(item)
                self.resent_from = sent_in
                if len(self.resend) >= size:
                    ready.append(self._take_resend())

    def end(self) -> None:
        """The input is read: the partial batches are complete too."""
        if self.resend:
            self.ready.append(self._take_resend())
        if self.new:
            self.ready.append(self._take_new())

    def held(self) -> list[Item]:
        """Events not handed out: they stay the run's."""
        held = [item for batch in self.ready for item in batch] + self.resend + self.new
        self.ready.clear()
        self.new, self.resend = [], []
        return held

    def _take_new(self) -> list[Item]:
        batch, self.new = self.new, []
        return batch

    def _take_resend(self) -> list[Item]:
        batch, self.resend = self.resend, []
        return batch


def run(replay: Replay, sink: Sink, *, progress: Progress | None = None, grace: float = 10.0) -> None:
    """Read every source, hand each claimed event to `sink` and settle its outcome. SIGINT or
    SIGTERM stops reading and lets what is out finish within `grace` seconds; a second signal
    (or the end of the grace) stops it at once, and its events count as not attempted (or
    unanswered, when a request went out). Does not close `replay` (the caller reads its tally).

    A sink that waits (`Sink.waits`), or progress to show, runs under an asyncio event loop;
    otherwise (a dry run) the same loop runs without one, and asyncio is not even imported."""
    if sink.waits or progress is not None:
        import asyncio

        asyncio.run(_run(replay, sink, progress, grace, asyncio.get_running_loop, (asyncio.CancelledError,)))
    else:
        _without_event_loop(_run(replay, sink, None, grace, lambda: None, ()))


def _without_event_loop(coroutine: Coroutine[object, None, None]) -> None:
    """Run a coroutine none of whose awaits suspends (a sink that never waits)."""
    try:
        coroutine.send(None)
    except StopIteration:
        return
    coroutine.close()
    raise RuntimeError("a sink that waits needs an event loop (Sink.waits)")


async def _run(
    replay: Replay,
    sink: Sink,
    progress: Progress | None,
    grace: float,
    event_loop: Callable[[], asyncio.AbstractEventLoop | None],
    hard_stop: tuple[type[BaseException], ...],
) -> None:
    """The loop itself; `hard_stop`: what the event loop raises to stop it at once (nothing without one)."""
    batches = _Batches(sink.batch_size)
    await sink.start(_Outcomes(replay))
    ticker = _Ticker(progress, sink) if progress is not None else None
    try:
        with _Interrupts(replay, sink, grace, event_loop()) as interrupts:
            try:
                try:
                    await _feed(replay, sink, batches, progress or NoProgress(), interrupts, hard_stop)
                except (OutcomeLost, *STORAGE_ERRORS) as error:  # an outcome, a dead letter or a claim was not written
                    if not isinstance(error, OutcomeLost):
                        replay.storage_failed(error)
                    sink.stop(str(replay.failure))
                await sink.finish()
            except hard_stop:  # the second signal, or the grace is over
                await sink.cancel()
            finally:
                replay.not_attempted(batches.held())
    finally:
        if ticker is not None:
            await ticker.stop()
        await sink.close()
    if sink.stopped is not None:
        replay.stopped(sink.stopped)


async def _feed(
    replay: Replay,
    sink: Sink,
    batches: _Batches,
    progress: Progress,
    interrupts: _Interrupts,
    hard_stop: tuple[type[BaseException], ...],
) -> None:
    """Hand every claimed block to the sink, until the input ends or the run is asked to stop."""
    blocks = replay.blocks(progress.on_bytes, interrupts.reading)
    try:
        for block in blocks:
            batches.add(block)
            block.clear()  # its records and events go now, not once the next block is read
            await _hand_ready(replay, sink, batches, hard_stop)
            if interrupts.requested or sink.stopped is not None:
                return
        batches.end()
        await _hand_ready(replay, sink, batches, hard_stop)
    except KeyboardInterrupt:  # a signal ended a wait for input (see `_Interrupts.waiting`)
        return
    finally:
        blocks.close()


def _right_sized(data: bytes) -> bytes:
    """A copy of `data` in a buffer of its own length. orjson (3.12+) hands back its whole
    growing buffer, 4 KB or more however short the JSON: thousands of events waiting in
    batches held ~10x their size."""
    return b"".join((data, b""))


async def _hand_ready(replay: Replay, sink: Sink, batches: _Batches, hard_stop: tuple[type[BaseException], ...]) -> None:
    while batches.ready:
        batch = batches.ready.popleft()
        try:
            await sink.take(batch)
        except hard_stop:  # while it waited for room: the batch is still the run's
            replay.not_attempted(batch)
            raise


class _Ticker:
    """Shows progress every `progress.interval` seconds, whatever the run is waiting for."""

    def __init__(self, progress: Progress, sink: Sink) -> None:
        import asyncio

        self._task = asyncio.create_task(self._tick(progress, sink))

    @staticmethod
    async def _tick(progress: Progress, sink: Sink) -> None:
        import asyncio

        progress.start()
        try:
            while True:
                await asyncio.sleep(progress.interval)
                progress.tick(sink.waiting())
        finally:
            progress.stop()

    async def stop(self) -> None:
        import asyncio

        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

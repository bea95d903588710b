"""Delivery: batches over one keep-alive async client, retried, paced by 429s, split when refused.

It knows the platforms only through `Target`: the request path and body, and `read_answer`.
Every event handed to `Sender.deliver` ends delivered, dead-lettered or not attempted.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import random
import signal
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx

from segbill.segment import Record, dumps
from segbill.targets import Answer, Target

if TYPE_CHECKING:
    from segbill.pipeline import Replay
    from segbill.report import Progress, Tally

BACKOFF_BASE = 0.5  # seconds; full jitter: a retry waits uniform(0, min(cap, base * 2**n))
BACKOFF_CAP = 30.0
MAX_UNREACHABLE_BATCHES = 3  # batches in a row that exhausted their retries: the run stops
FATAL_STATUSES = {401: "rejected the API key", 403: "refused to let this API key write events", 404: "has no such endpoint"}


@dataclass(frozen=True)
class DeliveryOptions:
    url: str
    api_key: str
    batch_size: int
    concurrency: int = 4
    timeout: float = 30.0
    max_retries: int = 10
    grace: float = 10.0


@dataclass(slots=True)
class Item:
    """One converted event on its way: its record (for outcomes), key and exact bytes."""

    record: Record
    key: str
    data: bytes


class Unreachable(Exception):
    """A batch still failed after every retry."""


class Fatal(Exception):
    """The platform will refuse everything (key, permissions, URL): stop the run."""


def retryable(status: int) -> bool:
    return status in (408, 429) or (status >= 500 and status != 501)


def wait_hint(headers: httpx.Headers) -> float | None:
    """Seconds a 429 asks to wait: Retry-After (seconds or HTTP date, Hyperline) or Lago's
    X-RateLimit-Reset (seconds until the window resets; Hyperline sends a date there)."""
    for name in ("retry-after", "x-ratelimit-reset"):
        value = headers.get(name)
        if not value:
            continue
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            continue
        return max(0.0, when.timestamp() - time.time())
    return None


class Sender:
    """Sends batches for one run. One 429 pauses every batch, not only the one that got it."""

    def __init__(self, target: Target, options: DeliveryOptions, replay: Replay, client: httpx.AsyncClient) -> None:
        self.target = target
        self.options = options
        self.replay = replay
        self.tally = replay.tally
        self.client = client
        self.endpoint = options.url.rstrip("/") + target.batch_path
        self.host = urlsplit(options.url).netloc or options.url
        self.headers = {"Authorization": f"Bearer {options.api_key}", "Content-Type": "application/json"}
        self.paused_until = 0.0
        self.unreachable_streak = 0
        self.stopped: str | None = None

    def stop(self, reason: str) -> None:
        if self.stopped is None:
            self.stopped = reason

    async def deliver(self, items: list[Item]) -> None:
        """Send one batch until each event has its outcome, resending the valid rest of a refused batch."""
        queue = [items]
        while queue:
            batch = queue.pop()
            if self.stopped is not None:
                self.replay.not_attempted(_pairs(batch))
                continue
            try:
                status, content = await self._exchange(batch)
            except asyncio.CancelledError:  # a hard stop: whether these arrived is unknown
                self.replay.not_attempted(_pairs(batch) + [pair for rest in queue for pair in _pairs(rest)])
                raise
            except Fatal as error:
                self.stop(str(error))
                self.replay.not_attempted(_pairs(batch))
                continue
            except Unreachable as error:
                self._unreachable(batch, str(error))
            else:
                self.unreachable_streak = 0
                keys = [item.key for item in batch]
                answer = self.target.read_answer(status, content, keys) or self._generic(status, content, len(batch))
                self._settle(batch, answer, status, content, queue)
            self.replay.checkpoint()

    def _settle(self, batch: list[Item], answer: Answer, status: int, content: bytes, queue: list[list[Item]]) -> None:
        done = [batch[position] for position in answer.delivered + answer.already]
        self.replay.delivered(_pairs(done), already=len(answer.already))
        for position, reason in answer.rejected.items():
            self.replay.rejected(batch[position].record, batch[position].key, "rejected", reason)
        if answer.resend:
            queue.append([batch[position] for position in answer.resend])
        if answer.narrow:
            if len(batch) == 1:
                reason = f"Rejected by {self.target.label} (HTTP {status}: {_excerpt(content)})."
                self.replay.rejected(batch[0].record, batch[0].key, "rejected", reason)
            else:
                middle = len(batch) // 2
                queue.extend((batch[middle:], batch[:middle]))

    def _generic(self, status: int, content: bytes, size: int) -> Answer:
        if status in (400, 413, 422):
            return Answer(narrow=True)
        reason = f"{self.target.label} answered HTTP {status} ({_excerpt(content)}); not retried."
        return Answer(rejected=dict.fromkeys(range(size), reason))

    def _unreachable(self, batch: list[Item], error: str) -> None:
        reason = f"Not delivered: {self.host} still failed after {self.options.max_retries} retries ({error})."
        for item in batch:
            self.replay.rejected(item.record, item.key, "unreachable", reason)
        self.unreachable_streak += 1
        if self.unreachable_streak >= MAX_UNREACHABLE_BATCHES:
            self.stop(f"{self.host} unreachable: {self.unreachable_streak} batches in a row failed every retry ({error})")

    async def _exchange(self, batch: list[Item]) -> tuple[int, bytes]:
        """POST the batch, retrying transient failures with the identical body every time."""
        body = self.target.body([item.data for item in batch])
        attempt = 0
        while True:
            await self._wait_for_pause()
            if self.stopped is not None:
                raise Fatal(self.stopped)
            self.tally.requests += 1
            wait: float | None = None
            try:
                response = await self.client.post(self.endpoint, content=body, headers=self.headers)
            except httpx.TransportError as error:
                last = _describe(error)
            else:
                status = response.status_code
                if status in FATAL_STATUSES:
                    raise Fatal(f"{self.host} {FATAL_STATUSES[status]} (HTTP {status} for {urlsplit(self.endpoint).path})")
                if not retryable(status):
                    return status, response.content
                last = f"HTTP {status}"
                if status == 429:
                    wait = wait_hint(response.headers)
                    wait = self._backoff(attempt + 1) if wait is None else wait
                    self.paused_until = max(self.paused_until, time.monotonic() + wait)
            attempt += 1
            if attempt > self.options.max_retries:
                raise Unreachable(last)
            self.tally.retries += 1
            await asyncio.sleep(self._backoff(attempt) if wait is None else 0)

    async def _wait_for_pause(self) -> None:
        while (delay := self.paused_until - time.monotonic()) > 0:
            await asyncio.sleep(delay)

    @staticmethod
    def _backoff(attempt: int) -> float:
        return random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1)))


def _pairs(items: list[Item]) -> list[tuple[Record, str]]:
    return [(item.record, item.key) for item in items]


def _describe(error: httpx.TransportError) -> str:
    kind = type(error).__name__
    text = str(error)
    return f"{kind}: {text}" if text else kind


def _excerpt(content: bytes) -> str:
    text = content.decode("utf-8", "replace").strip().replace("\n", " ")
    return text[:300] if text else "no body"


async def deliver_all(
    replay: Replay,
    target: Target,
    options: DeliveryOptions,
    progress: Progress | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> None:
    """Read, batch and deliver everything; at most `concurrency` requests in flight.

    SIGINT/SIGTERM stops reading and lets requests in flight finish within `grace` seconds; a
    second signal (or the end of the grace) cancels them, and their events count as not attempted.
    """
    limits = httpx.Limits(max_connections=options.concurrency, max_keepalive_connections=options.concurrency)
    client = httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(options.timeout), trust_env=False, transport=transport)
    async with client:
        sender = Sender(target, options, replay, client)
        tally = replay.tally
        slots = asyncio.Semaphore(options.concurrency)
        running: set[asyncio.Task[None]] = set()
        batch: list[Item] = []
        ticker = asyncio.create_task(_tick(progress)) if progress is not None else None
        with _signals(sender, tally, options.grace):
            try:
                for record, event, key in replay.events(progress.on_bytes if progress is not None else None):
                    batch.append(Item(record, key, dumps(event)))
                    if len(batch) >= options.batch_size:
                        await slots.acquire()
                        _start(sender.deliver(batch), running, slots)
                        batch = []
                        await asyncio.sleep(0)  # let answers be read between batches
                    if sender.stopped is not None:
                        break
                if batch and sender.stopped is None:
                    await slots.acquire()
                    _start(sender.deliver(batch), running, slots)
                    batch = []
                await asyncio.gather(*running)
            except asyncio.CancelledError:
                for task in running:
                    task.cancel()
                await asyncio.gather(*running, return_exceptions=True)
            replay.not_attempted(_pairs(batch))
        if ticker is not None:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
        if sender.stopped is not None and not tally.interrupted:
            tally.stopped = sender.stopped


async def _tick(progress: Progress) -> None:
    progress.start()
    try:
        while True:
            await asyncio.sleep(progress.interval)
            progress.tick()
    finally:
        progress.stop()


def _start(work: Coroutine[None, None, None], running: set[asyncio.Task[None]], slots: asyncio.Semaphore) -> None:
    task = asyncio.create_task(work)
    running.add(task)

    def finished(done: asyncio.Task[None]) -> None:
        running.discard(done)
        slots.release()

    task.add_done_callback(finished)


@contextlib.contextmanager
def _signals(sender: Sender, tally: Tally, grace: float) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None

    def on_signal() -> None:
        if tally.interrupted:
            main.cancel()
            return
        tally.interrupted = True
        sender.stop("interrupted")
        loop.call_later(grace, main.cancel)

    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, on_signal)
            installed.append(signum)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            pass
    try:
        yield
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)

"""Delivery: batches over one keep-alive async client, retried, paced by 429s, split when refused.

It knows the platforms only through `Target`: the request path and body, `read_answer`, and the
headers that announce rate limits; and the run only through `Outcomes`, where every event handed
to `HttpSink.take` ends delivered, rejected or not attempted. Reading, the ledger, the summary,
progress and signals are the run loop's (`segbill.runner`).
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import quote, urljoin, urlsplit

import httpx

from segbill.sink import Item, OutcomeLost, Outcomes
from segbill.targets import X_RATELIMIT, Answer, RateHeaders, Target

BACKOFF_BASE = 0.5  # seconds; full jitter: a retry waits uniform(0, min(cap, base * 2**n))
BACKOFF_CAP = 30.0
MAX_UNREACHABLE_BATCHES = 3  # batches in a row that exhausted their retries: the run stops
FATAL_STATUSES = {401: "rejected the API key", 403: "refused to let this API key write events", 404: "has no such endpoint"}


AUTO_CONCURRENCY = 16  # the adaptive cap without an announced limit, and at least with one: 50 requests/s over 300 ms answers
AUTO_MAX_CONCURRENCY = 64  # the hard ceiling (connections, and batches held): 500 requests/s over 125 ms answers
# Events in the batches out at once: each holds ~2.5 KB (its line, its bytes, its share of a
# body) until its outcome. 10,000 keep 33,000 events/s going over 300 ms answers, more than a
# send converts; more would only cost memory (Hyperline's batches of 1,000 at 16-64 in flight).
MAX_EVENTS_OUT = 10_000
MAX_WAIT = 60.0  # the longest pause a rate-limit header can cause: a window is seconds long (Hyperline's: 10 s)
EPOCH_SECONDS = 1e9  # a reset number from here on is a date in epoch seconds (since 2001), not a wait
EPOCH_MILLIS = 1e11  # ... and from here on, in epoch milliseconds (since 1973; as seconds it would be year 5138)
PACE_MARGIN = 0.97  # of an announced limit: at 98% a 1-s window of 50 fills (50th request at 0.9996 s)
LEARNED_DECAY = 0.99995  # per accepted request: a pace learned from 429s relaxes ~5% per 1,000
MAX_RESET_VALUES = 64  # distinct reset lengths remembered (a platform announces one or two)
MIN_LEARNING_SAMPLE = 10  # accepted requests before a 429 for the pace it implies to be trusted
RESET_JITTER = 0.05  # seconds: a reset date's rounding and clock difference, not part of the window


@dataclass(frozen=True)
class DeliveryOptions:
    url: str
    api_key: str = field(repr=False)  # never in a repr, so never in an error message
    batch_size: int
    concurrency: int | None = None  # requests in flight; None: adaptive
    timeout: float = 30.0
    max_retries: int = 10
    rate: float | None = None  # events per second, at most


@dataclass(slots=True)
class Trip:
    """One batch's requests so far: `open` while one went out whose answer said nothing final
    (none came yet, none ever came, or a transient failure), so that if the run stops now its
    events are `unanswered` (maybe stored), not "not attempted"."""

    open: bool = False


class Unreachable(Exception):
    """A batch still failed after every retry."""


class Fatal(Exception):
    """The platform will refuse everything (key, permissions, URL): stop the run."""


def retryable(status: int) -> bool:
    return status in (408, 429) or (status >= 500 and status != 501)


def is_redirect(status: int) -> bool:
    """A 3xx: the URL is wrong for every request, like a 404. It is never followed: a POST
    redirected may come back as a GET or without its body (301, 302, 303)."""
    return 300 <= status < 400


class Redirected(Exception):
    """A 3xx answer, stopped by `refuse_redirects`: what `redirected` names it from."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(response.status_code)
        self.status = response.status_code
        self.headers = response.headers
        self.url = str(response.request.url)


async def refuse_redirects(response: httpx.Response) -> None:
    """A client's response hook: a 3xx ends the request here, before httpx reads its Location
    to build the request it would follow with (it does so even when not following), which a
    Location it cannot use (javascript:alert(1)) would turn into an error of its own."""
    if is_redirect(response.status_code):
        raise Redirected(response)


def redirected(url: str, api_path: str, status: int, headers: httpx.Headers) -> str:
    """Why a redirect of a request to `url` (a base URL, then the API's `api_path`) stops the
    run, naming where it points as far as a person needs it: the Location, read as a client
    would (relative to `url`), by its scheme and host, plus the base it implies when its path
    ends with `api_path` (a self-hosted Lago moved under a prefix such as /lago); never a
    user, query or fragment, which may carry a token. A Location without a host says so."""
    request = urlsplit(url)
    host = request.netloc.rpartition("@")[2]
    given = headers.get("location", "").strip()
    try:
        location = urlsplit(urljoin(url, given))
    except ValueError:  # such as an unclosed [ in the host
        location = None
    if not given:
        where = "an address it does not give"
    elif location is None:
        where = "an address that is no URL"
    elif not location.netloc:
        where = f"a {location.scheme}: address, which names no host"  # javascript:, mailto:; a relative one has the request's
    else:
        to = f"{location.scheme}://{location.netloc.rpartition('@')[2]}"
        if location.path.endswith(api_path):
            where = to + quote(location.path.removesuffix(api_path).rstrip("/"), safe="/%:@!$&'()*+,;=")
        elif to == f"{request.scheme}://{host}":
            where = "another path on the same host"
        else:
            where = to
    return (
        f"{host} redirects to {where} (HTTP {status} for {request.path}); segbill follows no redirect: use the URL it points to"
    )


def backoff(attempt: int) -> float:
    """Seconds before retry number `attempt`: exponential, with full jitter."""
    return random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1)))


def wait_hint(headers: httpx.Headers, rates: RateHeaders) -> float | None:
    """Seconds a 429 asks to wait: the first of the platform's wait headers that names a time."""
    for name in rates.wait:
        seconds = seconds_until(headers.get(name))
        if seconds is not None:
            return seconds
    return None


def seconds_until(value: str | None) -> float | None:
    """Seconds until the moment a rate-limit header names, whatever its form: seconds to wait
    (Retry-After, Lago's reset), or a date (Hyperline's reset, whose format is not documented):
    epoch seconds or milliseconds, told apart by size, an HTTP date or ISO 8601. Clamped to
    0..MAX_WAIT, so one odd header can never stall a run; None when it is no time at all."""
    if not value or not value.strip():
        return None
    value = value.strip()
    try:
        number = float(value)
    except ValueError:
        when = _date(value)
        if when is None:
            return None
        seconds = when - time.time()
    else:
        if not math.isfinite(number):
            return None
        if number >= EPOCH_MILLIS:
            seconds = number / 1000 - time.time()
        elif number >= EPOCH_SECONDS:
            seconds = number - time.time()
        else:
            seconds = number
    return min(max(seconds, 0.0), MAX_WAIT)


def _whole_second_date(value: str | None) -> bool:
    """Whether a reset is a date given to the whole second (an HTTP date, an ISO 8601 one
    without a fraction): the moment it stands for may be up to a second later."""
    if not value or "." in value:
        return False
    try:
        float(value)
    except ValueError:
        return True
    return False  # a number: seconds to wait, or an epoch time


def _date(value: str) -> float | None:
    """An ISO 8601 or HTTP date as epoch seconds (UTC when no zone is given), or None."""
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


class Concurrency:
    """Requests in flight: a fixed number, or adaptive like Vector's adaptive request concurrency.

    Adaptive (AIMD), starting at 4: while the limit is in full use and answers come back no
    slower than usual, it grows by one per round trip; a 429, a 5xx, a timeout or a doubled
    latency cuts it by 30%, at most once per round trip. It grows up to what the platform's
    announced pace needs over the usual answer time (`ceiling`).
    """

    def __init__(self, fixed: int | None) -> None:
        self.adaptive = fixed is None
        self.maximum = fixed or AUTO_CONCURRENCY
        self.limit = float(fixed or 4)
        self.in_flight = 0
        self._freed = asyncio.Condition()
        self._rtt: float | None = None  # moving average of answer times
        self._last_cut = 0.0

    async def acquire(self) -> None:
        async with self._freed:
            await self._freed.wait_for(lambda: self.in_flight < int(self.limit))
            self.in_flight += 1

    async def release(self, rtt: float | None, congested: bool) -> None:
        """`rtt` None: no answer was awaited (stopped, cancelled), so nothing is learned."""
        async with self._freed:
            saturated = self.in_flight >= int(self.limit)
            self.in_flight -= 1
            if self.adaptive and rtt is not None:
                self._adjust(rtt, congested, saturated)
            self._freed.notify_all()

    def _adjust(self, rtt: float, congested: bool, saturated: bool) -> None:
        average = self._rtt
        if congested or (average is not None and rtt > 2 * average):
            now = time.monotonic()
            if now - self._last_cut > (average or 0.0):
                self.limit = max(1.0, self.limit * 0.7)
                self._last_cut = now
            return
        self._rtt = rtt if average is None else 0.9 * average + 0.1 * rtt
        if saturated:
            self.limit = min(float(self.maximum), self.limit + 1 / self.limit)

    def ceiling(self, pace: float | None) -> None:
        """Size the adaptive cap from the pace (requests/s) the platform announces: enough
        requests in flight to keep it over the usual answer time, at least AUTO_CONCURRENCY
        (so 50 requests/s keeps 16) and never more than AUTO_MAX_CONCURRENCY."""
        if not self.adaptive or pace is None or self._rtt is None:
            return
        needed = math.ceil(pace * self._rtt) + 1  # one spare: answers vary
        self.maximum = min(AUTO_MAX_CONCURRENCY, max(AUTO_CONCURRENCY, needed))
        self.limit = min(self.limit, float(self.maximum))


class Pacer:
    """When each request may start: after any pause a 429 asked for, no faster than `--rate`,
    and no faster than a rate limit the platform announces (X-RateLimit-Limit per window), so
    a run stays just under the limit instead of bouncing off it."""

    def __init__(self, rate: float | None, rates: RateHeaders = X_RATELIMIT) -> None:
        self.rate = rate
        self.rates = rates  # where the platform announces its limit
        self.paused_until = 0.0
        self._next = 0.0
        self._spacing = 0.0  # seconds between request starts, from the announced limit
        self._learned = 0.0  # the same, learned from 429s when no limit is announced
        self._accepted = 0  # requests answered without a 429 since the last one
        self._first_accepted: float | None = None
        self._resets: Counter[int] = Counter()  # reset (whole seconds, rounded up) -> answers announcing it
        self._window_opened: float | None = None  # answer time of the request that opened it
        self._cycle = math.inf  # the shortest time seen between two windows' openings

    async def wait(self, events: int) -> None:
        while True:
            now = time.monotonic()
            start = max(now, self._next, self.paused_until)
            if start <= now:
                break
            await asyncio.sleep(start - now)
        spacing = max(self._spacing, self._learned, events / self.rate if self.rate else 0.0)
        # Keep to the schedule: a start that woke a little late lets the next one catch up, or
        # timer lateness would add up to a rate well below the limit. After a start or an idle
        # spell the schedule begins again from now, so there is never a burst.
        on_schedule = 0 < now - self._next < spacing
        self._next = (self._next if on_schedule else now) + spacing

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)

    def accepted(self) -> None:
        self._accepted += 1
        if self._first_accepted is None:
            self._first_accepted = time.monotonic()
        self._learned *= LEARNED_DECAY

    def throttled(self, wait: float) -> None:
        """A 429 asked for `wait` seconds. Hyperline announces its limit only this way: the
        requests accepted since the last 429, over the time they took plus the wait, is the
        rate its window allows. A pace is learned from it unless the platform announces one;
        it relaxes with every accepted request, so a sporadic 429 does not slow a run for good."""
        now = time.monotonic()
        if not self._spacing and self._accepted >= MIN_LEARNING_SAMPLE and self._first_accepted is not None:
            # A Retry-After in whole seconds is rounded up: by half a second, on average.
            rounding = 0.5 if wait >= 1 and float(wait).is_integer() else 0.0
            window = now - self._first_accepted + wait - rounding
            self._learned = max(self._learned, window / (self._accepted * PACE_MARGIN))
        self._accepted = 0
        self._first_accepted = None
        self.pause(wait)

    @property
    def pace(self) -> float | None:
        """Requests per second the announced limit allows (with the margin), if one was announced."""
        return 1 / self._spacing if self._spacing else None

    @property
    def learned_pace(self) -> float | None:
        """Requests per second learned from 429s (with the margin), if a pace was learned."""
        return 1 / self._learned if self._learned else None

    def observe(self, headers: httpx.Headers) -> None:
        limit = _number(headers.get(self.rates.limit))
        remaining = _number(headers.get(self.rates.remaining))
        announced = headers.get(self.rates.reset)
        reset = seconds_until(announced)
        if reset is None:
            return
        now = time.monotonic()
        if limit and remaining == limit - 1:  # that request opened a window, at the latest now
            if self._window_opened is not None:
                self._cycle = min(self._cycle, now - self._window_opened)
            self._window_opened = now
        window = self._window_length(reset, whole_second=_whole_second_date(announced))
        if limit:
            self._spacing = window / (limit * PACE_MARGIN)
        if remaining is not None and remaining < 1:
            # The window is spent: wait for its end. A reset in whole seconds (or a date rounded
            # to one) can overshoot it; the window's opening plus its length cannot, when the
            # answer that opened it was seen.
            end = now + reset
            if self._window_opened is not None:
                end = min(end, max(now, self._window_opened + window))
            self.paused_until = max(self.paused_until, end)

    def _window_length(self, reset: float, *, whole_second: bool) -> float:
        """The longest reset announced twice or more (or the longest yet, before any repeats):
        one odd answer, such as a reset rounded up past the window, must not set the pace of
        the whole run (a 2 s window where the real one is 1 s halves it). A date rounded up to
        a whole second announces up to a second more on every answer (11 s for a 10 s window):
        the shortest time seen between two windows' openings corrects that, since a window never
        opens before the previous one has ended. A date given to the millisecond and rounded up,
        or a clock a few milliseconds off the platform's, must not turn 10 s into 11: what is
        over a whole second by less than `RESET_JITTER` counts as that second. A date to the
        whole second (`whole_second`: an HTTP date) gets no such allowance: it drops the
        fraction, so 9.02 s to it may mean a window ending 9.99 s from now (a 10 s window read
        as 9 would pace 10% too fast). At least 1 s."""
        seconds = math.ceil(reset) if whole_second else math.ceil(reset - RESET_JITTER)
        if seconds in self._resets or len(self._resets) < MAX_RESET_VALUES:
            self._resets[seconds] += 1
        confirmed = [value for value, count in self._resets.items() if count >= 2]
        announced = float(max(max(confirmed or self._resets), 1))
        return self._cycle if announced / 2 <= self._cycle <= announced - 0.5 else announced


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class Sender:
    """Sends batches for one run. One 429 pauses every batch, not only the one that got it."""

    def __init__(self, target: Target, options: DeliveryOptions, outcomes: Outcomes, client: httpx.AsyncClient) -> None:
        self.target = target
        self.options = options
        self.outcomes = outcomes
        self.client = client
        self.endpoint = options.url.rstrip("/") + target.batch_path
        self.host = urlsplit(options.url).netloc.rpartition("@")[2]  # host:port, never a user:password@
        self.headers = {"Authorization": f"Bearer {options.api_key}", "Content-Type": "application/json"}
        self.concurrency = Concurrency(options.concurrency)
        self.pacer = Pacer(options.rate, target.rates)
        self.unreachable_streak = 0
        self.stopped: str | None = None

    def stop(self, reason: str) -> None:
        if self.stopped is None:
            self.stopped = reason

    async def deliver(self, items: list[Item]) -> None:
        """Send one batch until each event has its outcome; when outcomes cannot be written (a
        full disk), stop: a rerun redoes what was not recorded."""
        try:
            await self._deliver(items)
        except OutcomeLost as error:
            self.stop(str(error))

    async def _deliver(self, items: list[Item]) -> None:
        """Send one batch until each event has its outcome, resending the valid rest of a refused batch."""
        queue = [items]
        while queue:
            batch = queue.pop()
            if self.stopped is not None:
                self.outcomes.not_attempted(batch)
                continue
            trip = Trip()
            try:
                status, content = await self._exchange(batch, trip)
            except asyncio.CancelledError:  # a hard stop: whether a request in flight arrived is unknown
                self.outcomes.not_attempted(batch, unanswered=trip.open)
                self.outcomes.not_attempted([item for rest in queue for item in rest])
                raise
            except Fatal as error:
                self.stop(str(error))
                self.outcomes.not_attempted(batch, unanswered=trip.open)
                continue
            except Unreachable as error:
                self._unreachable(batch, str(error))
            else:
                self.unreachable_streak = 0
                keys = [key for _, key, _ in batch]
                answer = self.target.read_answer(status, content, keys) or self._generic(status, content, len(batch))
                self._settle(batch, answer, status, content, queue)
            self.outcomes.settled()

    def _settle(self, batch: list[Item], answer: Answer, status: int, content: bytes, queue: list[list[Item]]) -> None:
        """Every event of `batch` gets its outcome or goes back to `queue` in a smaller batch, so
        no answer can keep a batch going round for ever: a resend of all of it (an answer that
        names no event) is split instead, down to single events dead-lettered with the answer."""
        done = [batch[position] for position in answer.delivered + answer.already]
        self.outcomes.delivered(done, already=len(answer.already))
        for position, reason in answer.rejected.items():
            self.outcomes.rejected(batch[position], "rejected", reason)
        settles_none = len(answer.resend) == len(batch)
        if answer.resend and not settles_none:
            queue.append([batch[position] for position in answer.resend])
        if answer.narrow or settles_none:
            if len(batch) == 1:
                reason = f"Rejected by {self.target.label} (HTTP {status}: {_excerpt(content)})."
                self.outcomes.rejected(batch[0], "rejected", reason)
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
            self.outcomes.rejected(item, "unreachable", reason)
        self.unreachable_streak += 1
        if self.unreachable_streak >= MAX_UNREACHABLE_BATCHES:
            self.stop(f"{self.host} unreachable: {self.unreachable_streak} batches in a row failed every retry ({error})")

    async def _exchange(self, batch: list[Item], trip: Trip) -> tuple[int, bytes]:
        """POST the batch, retrying transient failures with the identical body every time. A
        retry is counted when it is really sent, not when it is decided: a stop can come first."""
        body = self.target.body([data for _, _, data in batch])
        attempt = 0
        while True:
            await self.concurrency.acquire()
            answer_time: float | None = None  # only a real exchange teaches the adaptive limit
            status = 0
            try:
                await self.pacer.wait(len(batch))
                if self.stopped is not None:
                    raise Fatal(self.stopped)
                if attempt == 0:
                    self.outcomes.sending(batch)
                self.outcomes.request(retry=attempt > 0)
                trip.open = True
                started = time.monotonic()
                try:
                    status, content, wait, last = await self._post(body)
                except Fatal:
                    trip.open = attempt > 0  # this request was refused whole; an earlier one had no final answer
                    raise
                answer_time = time.monotonic() - started
            finally:
                await self.concurrency.release(answer_time, congested=status == 0 or retryable(status))
            if status and not retryable(status):
                return status, content
            attempt += 1
            if attempt > self.options.max_retries:
                raise Unreachable(last)
            if wait is None:
                await asyncio.sleep(backoff(attempt))

    async def _post(self, body: bytes) -> tuple[int, bytes, float | None, str]:
        """One request: (status or 0, content, the pause a 429 asked for, a description)."""
        try:
            response = await self.client.post(self.endpoint, content=body, headers=self.headers)
        except httpx.RequestError as error:  # transport errors, timeouts, an undecodable answer
            return 0, b"", None, _describe(error)
        except Redirected as redirect:
            raise Fatal(redirected(redirect.url, self.target.batch_path, redirect.status, redirect.headers)) from None
        _unbind(response)
        status = response.status_code
        if status in FATAL_STATUSES:
            raise Fatal(f"{self.host} {FATAL_STATUSES[status]} (HTTP {status} for {urlsplit(self.endpoint).path})")
        self.pacer.observe(response.headers)
        self.concurrency.ceiling(self.pacer.pace)
        wait = None
        if status == 429:
            hint = wait_hint(response.headers, self.target.rates)
            wait = backoff(1) if hint is None else hint
            self.pacer.throttled(wait)
        else:
            self.pacer.accepted()
        return status, response.content, wait, f"HTTP {status}"


class HttpSink:
    """A send: batches to the platform over one keep-alive client, at most `concurrency`
    requests in flight. Events sent by an earlier run without an answer (maybe stored) come in
    batches of their own (the run loop's batching), never beside new events (see `State.sending`)."""

    waits = True

    def __init__(self, target: Target, options: DeliveryOptions, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.target = target
        self.options = options
        self.batch_size = options.batch_size
        self._transport = transport
        self._sender: Sender | None = None
        self._running: dict[asyncio.Task[None], int] = {}  # each batch out -> its number of events

    async def start(self, outcomes: Outcomes) -> None:
        width = self.options.concurrency or AUTO_MAX_CONCURRENCY
        limits = httpx.Limits(max_connections=width, max_keepalive_connections=width)
        client = httpx.AsyncClient(
            limits=limits,
            timeout=httpx.Timeout(self.options.timeout),
            trust_env=False,
            transport=self._transport,
            event_hooks={"response": [refuse_redirects]},
        )
        self._sender = Sender(self.target, self.options, outcomes, client)

    @property
    def sender(self) -> Sender:
        assert self._sender is not None, "HttpSink.start first"
        return self._sender

    @property
    def stopped(self) -> str | None:
        return None if self._sender is None else self._sender.stopped

    async def take(self, batch: list[Item]) -> None:
        """Start a sender on `batch` once fewer batches are out than requests are allowed in
        flight now (`limit`, not the cap: `batch` waits here, ready for the next free request)
        and the events out leave room for it (`MAX_EVENTS_OUT`; one batch may always go).
        Reading further ahead only costs memory: every batch out holds its events until their
        outcome. Nothing is awaited after that: a cancelled hand-off leaves them with the caller."""
        sender, running = self.sender, self._running
        await asyncio.sleep(0)  # let answers be read between batches
        while len(running) >= int(sender.concurrency.limit) or (running and sum(running.values()) + len(batch) > MAX_EVENTS_OUT):
            await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
        task = asyncio.create_task(sender.deliver(batch))
        running[task] = len(batch)
        task.add_done_callback(running.pop)

    async def finish(self) -> None:
        await asyncio.gather(*self._running)

    def stop(self, reason: str) -> None:
        self.sender.stop(reason)

    async def cancel(self) -> None:
        for task in self._running:
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)

    def waiting(self) -> float:
        return 0.0 if self._sender is None else max(0.0, self._sender.pacer.paused_until - time.monotonic())

    async def close(self) -> None:
        if self._sender is not None:
            await self._sender.client.aclose()


def _unbind(response: httpx.Response) -> None:
    """Free a read response (and the request body it holds) at once. httpx binds a response and
    its stream to each other: a reference cycle that only the cyclic collector frees, which a
    send runs rarely (`streaming_gc`), so every body and answer stayed until then and a send's
    memory grew with its input."""
    response.stream = httpx.ByteStream(b"")


def _describe(error: httpx.RequestError) -> str:
    kind = type(error).__name__
    text = str(error)
    return f"{kind}: {text}" if text else kind


def _excerpt(content: bytes) -> str:
    text = content.decode("utf-8", "replace").strip().replace("\n", " ")
    return text[:300] if text else "no body"

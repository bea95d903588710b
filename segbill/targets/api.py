"""A platform's read API, as `segbill check` and `segbill reconcile` use it: the key, retries and
pacing of a send (a 429 pauses every read; an announced limit sets the pace). The key is only
ever in the Authorization header. Each platform's reader (`targets/lago_api.py`,
`targets/hyperline_api.py`) adds its endpoints to `ApiReader`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import quote, urlsplit

import httpx
import orjson

from segbill.delivery import Pacer, Redirected, _describe, _excerpt, backoff, redirected, refuse_redirects, retryable, wait_hint
from segbill.targets import X_RATELIMIT, RateHeaders

READ_CONCURRENCY = 4  # reads in flight; Lago Cloud allows 50 a second on these endpoints
FATAL_READS = {401: "rejected the API key", 403: "refused this API key", 404: "has no such endpoint"}

Params = dict[str, str | int | list[str]]


def path_segment(value: str) -> str:
    """`value` as one segment of a URL's path, whatever it holds: "/" is escaped, and so are the
    dots of "." and "..", which httpx would otherwise resolve away (`/v1/customers/.` is
    `/v1/customers`, the list of customers)."""
    escaped = quote(value, safe="")
    return escaped.replace(".", "%2E") if escaped in (".", "..") else escaped


@dataclass(frozen=True)
class ReadOptions:
    url: str
    api_key: str = field(repr=False)  # never in a repr, so never in an error message
    timeout: float = 30.0
    max_retries: int = 10


class ReadFailed(Exception):
    """A read that will not succeed (key, URL, or still failing after every retry): stop. Once
    one has failed, the reader makes no more requests (a wrong key would fail them all)."""


class ApiReader:
    """Reads one account of a platform; `requests` and `retries` count what it cost."""

    page_size = 100  # events one page lists: reconcile lists a range of at most this many rather than halve it

    def __init__(self, options: ReadOptions, rates: RateHeaders = X_RATELIMIT) -> None:
        self.options = options
        self.rates = rates
        self.base = options.url.rstrip("/")
        self.host = urlsplit(options.url).netloc.rpartition("@")[2]  # host:port, never a user:password@
        self.headers = {"Authorization": f"Bearer {options.api_key}", "Accept": "application/json"}
        limits = httpx.Limits(max_connections=READ_CONCURRENCY, max_keepalive_connections=READ_CONCURRENCY)
        self.client = httpx.AsyncClient(
            limits=limits, timeout=httpx.Timeout(options.timeout), trust_env=False, event_hooks={"response": [refuse_redirects]}
        )
        self.pacer = Pacer(None, rates)
        self.slots = asyncio.Semaphore(READ_CONCURRENCY)
        self.requests = 0
        self.retries = 0
        self.accepted = False  # a read was answered 2xx: the platform takes this key
        self.failure: ReadFailed | None = None  # the first read that failed: every later one fails with it

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()

    async def get(self, path: str, params: Params | None = None, base: str | None = None) -> dict[str, Any]:
        """One JSON object, retrying transient failures like a send does; from `base` when the
        platform serves it on another host."""
        attempt = 0
        while True:
            async with self.slots:
                await self.pacer.wait(1)
                if self.failure is not None:  # reads waiting for a slot when another failed
                    raise ReadFailed(str(self.failure))
                self.requests += 1
                response: httpx.Response | None = None
                try:
                    answer = await self.client.get((base or self.base) + path, params=params, headers=self.headers)
                except httpx.RequestError as error:  # transport errors, timeouts
                    last = _describe(error)
                except Redirected as redirect:  # the URL is wrong for every read
                    failed = ReadFailed(redirected(redirect.url, path, redirect.status, redirect.headers))
                    raise self._failed(failed) from None
                else:
                    response, last = answer, f"HTTP {answer.status_code}"
                    self.pacer.observe(answer.headers)
                    if answer.status_code == 429:
                        hint = wait_hint(answer.headers, self.rates)
                        self.pacer.throttled(backoff(1) if hint is None else hint)
                    else:
                        self.pacer.accepted()
            if response is not None and not retryable(response.status_code):
                try:
                    return self._read(path, response)
                except ReadFailed as error:
                    raise self._failed(error) from None
            attempt += 1
            if attempt > self.options.max_retries:
                raise self._failed(
                    ReadFailed(f"{self.host} still failed after {self.options.max_retries} retries reading {path} ({last})")
                )
            self.retries += 1
            if response is None or response.status_code != 429:  # a 429 paused the pacer instead
                await asyncio.sleep(backoff(attempt))

    def _failed(self, error: ReadFailed) -> ReadFailed:
        """The run stops at its first failed read: no later read is made."""
        self.failure = self.failure or error
        return error

    def _read(self, path: str, response: httpx.Response) -> dict[str, Any]:
        status = response.status_code
        if status in FATAL_READS:
            raise ReadFailed(f"{self.host} {FATAL_READS[status]} (HTTP {status} for {urlsplit(self.base + path).path})")
        if not 200 <= status < 300:
            raise ReadFailed(f"{self.host} answered HTTP {status} reading {path} ({_excerpt(response.content)})")
        self.accepted = True
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            raise ReadFailed(
                f"{self.host} answered {path} with something that is not a JSON object ({_excerpt(response.content)})"
            )
        return body

"""Billing platforms. Each is one module that declares its `Target`: how a `Billable` becomes its
event, its batch request and answers, its mapping fields, its rate-limit headers and (for check
and reconcile) its read API. The core reads these capabilities and never names a platform.

A new platform is one module defining `TARGET` and one line in `PLATFORMS`.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, Self

from segbill.segment import _INEXACT_FLOAT, Billable, Invalid, check_exact, dumps, floats_may_be_integers

if TYPE_CHECKING:
    from segbill.targets.api import ReadOptions

PLATFORMS = {  # name (`--to`) -> the module that declares its TARGET, imported only when used
    "lago": "segbill.targets.lago",
    "hyperline": "segbill.targets.hyperline",
}

MAX_EXACT_INT = 2**53
"""Beyond it a JSON number is inexact in float64: Lago's ClickHouse pipeline (its Go
events-processor) and Hyperline (JavaScript) both decode numbers so. Such integers are sent as
decimal strings, which every store keeps exact (Lago's numeric filters read the text)."""


@dataclass
class Answer:
    """What a platform said about each event of a batch, by position in the batch."""

    delivered: list[int] = field(default_factory=list)
    already: list[int] = field(default_factory=list)  # stored by an earlier request
    rejected: dict[int, str] = field(default_factory=dict)  # position -> reason for a person
    resend: list[int] = field(default_factory=list)  # valid, but refused with the others
    narrow: bool = False  # the request was refused as a whole: split it to find the bad events


@dataclass(frozen=True)
class RateHeaders:
    """Where a platform announces its rate limit and the waits it asks for (header names)."""

    wait: tuple[str, ...] = ("retry-after", "x-ratelimit-reset")  # a 429's wait: the first present that reads as a time
    limit: str = "x-ratelimit-limit"  # requests a window allows
    remaining: str = "x-ratelimit-remaining"  # requests left in this window
    reset: str = "x-ratelimit-reset"  # when the window ends: seconds from now, or a date


X_RATELIMIT = RateHeaders()
"""The X-RateLimit-* trio both platforms send, and a 429's Retry-After."""

Judge = Callable[[str, str, int], Awaitable[str]]
"""check's verdict on one event: (scope, kind, ms) -> a verdict of `Reading.verdicts`."""


class Reader(Protocol):
    """A platform's read API as check and reconcile use it; `requests` and `retries` count its cost."""

    requests: int
    retries: int
    accepted: bool  # a read was answered 2xx: the platform takes the key (see `State.key_accepted`)
    page_size: int  # events one page of `events` lists

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def judge(self) -> Judge:
        """Reads what check needs up front, and gives the function that judges each event."""
        ...

    async def count(self, scope: str, kind: str, start: int, end: int) -> int:
        """Events stored for (scope, kind) from `start` to `end` ms, both inclusive."""
        ...

    async def events(self, scope: str, kind: str, start: int, end: int) -> list[tuple[str, int]]:
        """(idempotency key, ms) of each event stored in that range, repeats included."""
        ...


@dataclass(frozen=True)
class Reading:
    """What `segbill check` and `segbill reconcile` read on a platform. Both group converted
    events by two of their fields: `scope` (who is billed) and `kind` (for what)."""

    reader: Callable[[ReadOptions], Reader]  # imports the API module (and httpx) only when called
    scope: str  # the event's field: Lago's external_subscription_id
    kind: str  # Lago's code
    names: tuple[str, str]  # what people call (scope, kind): reconcile's dimensions
    time: Callable[[dict[str, Any]], int]  # a converted event's time in ms, exactly
    verdicts: dict[str, str]  # what check can say of an event -> what it means; billable first
    billed: tuple[str, ...] = ("billable",)  # the verdicts of events that will be billed
    decided_by: str | None = None  # what check reads that decides billing, when that is all of it: send --check may gate on it

    def place(self, event: dict[str, Any]) -> tuple[tuple[str, str], int]:
        """The (scope, kind) pair a converted event counts in, and its time in ms."""
        return (str(event[self.scope]), str(event[self.kind])), self.time(event)


@dataclass(frozen=True)
class Target:
    """A billing platform, as the core sees it."""

    name: str
    label: str
    convert: Callable[[Billable, str], dict[str, Any]]  # (billable, flattening separator) -> event
    key: Callable[[dict[str, Any]], str]  # the idempotency key of a converted event
    batch_path: str
    max_batch: int
    default_batch: int
    default_url: str
    url_env: str
    key_env: str
    body: Callable[[list[bytes]], bytes]  # serialized events -> request body
    read_answer: Callable[[int, bytes, list[str]], Answer | None]  # status, body, the batch's keys
    properties_key: str  # where an event keeps its (flattened) properties
    fields: dict[str, str]  # the mapping file's field names -> the Billable part each fills (id, customer, event, time)
    protected_key: str | None = None  # a key in there that is not a property (Hyperline's record id)
    shifted_repeat: str = ""  # what the platform would do with an id sent again at another time
    amount_field: str | None = None  # the event's field for an exact amount (`Mapping.amount_of`), if the platform has one
    rates: RateHeaders = X_RATELIMIT
    reading: Reading | None = None  # None: check and reconcile cannot read this platform

    def __reduce__(self) -> tuple[Callable[[str], Target], tuple[str]]:
        """A worker process (`--jobs`) gets the platform by its name: its functions are its module's."""
        return get_target, (self.name,)

    def require_reading(self) -> Reading:
        """Its read API: check and reconcile are offered only where there is one."""
        if self.reading is None:
            raise ValueError(f"segbill cannot read {self.label}'s API")
        return self.reading


def flatten(properties: dict[str, Any], *, keep_scalar_lists: bool, separator: str = ".") -> dict[str, Any]:
    """Nested objects -> keys joined by `separator` ("model.name"); nulls dropped; integers
    beyond 2**53 as decimal strings; lists kept only where the platform takes them.

    Lists of scalars stay lists when `keep_scalar_lists` (booleans then stay booleans too);
    otherwise booleans become "true"/"false" and lists become their JSON text.
    """
    # A copy with the values that change replaced, until a nested object: its keys take its
    # place, so from there on the keys are added in order (and may collide).
    flat = properties.copy()
    items = iter(properties.items())
    for name, value in items:
        kind = type(value)
        if kind is str:  # most values: kept as they are
            continue
        if kind is float:
            if not -_INEXACT_FLOAT < value < _INEXACT_FLOAT:
                check_exact(value)
        elif kind is int:
            if not -MAX_EXACT_INT <= value <= MAX_EXACT_INT:
                flat[name] = str(value)
        elif value is None:
            del flat[name]
        elif kind is bool:
            if not keep_scalar_lists:
                flat[name] = "true" if value else "false"
        elif kind is list:
            flat[name] = _exact_ints(value) if keep_scalar_lists and _scalars(value) else _json_text(value)
        elif kind is dict:
            ordered = {}
            for key, converted in flat.items():  # the keys before it, converted
                if key == name:
                    break
                ordered[key] = converted
            _flatten_into(ordered, name + separator, value.items(), keep_scalar_lists, separator)
            _flatten_into(ordered, "", items, keep_scalar_lists, separator)
            return ordered
    return flat


def _flatten_into(flat: dict[str, Any], prefix: str, items: Iterable[tuple[str, Any]], keep: bool, separator: str) -> None:
    """Add `items` to `flat` in order, a nested object's keys joined to its own: below the top,
    or past a nested object, two properties may become one key. (The rules for each value are
    `flatten`'s, written out again: a function for them, called per value, cost 13% of flattening.)"""
    for name, value in items:
        kind = type(value)
        if kind is str:
            pass
        elif kind is float:
            if not -_INEXACT_FLOAT < value < _INEXACT_FLOAT:
                check_exact(value)
        elif kind is int:
            if not -MAX_EXACT_INT <= value <= MAX_EXACT_INT:
                value = str(value)
        elif kind is dict:
            _flatten_into(flat, prefix + name + separator, value.items(), keep, separator)
            continue
        elif value is None:
            continue
        elif kind is bool:
            if not keep:
                value = "true" if value else "false"
        elif kind is list:
            value = _exact_ints(value) if keep and _scalars(value) else _json_text(value)
        key = prefix + name
        if key in flat:
            raise Invalid(
                "property_conflict",
                f'Two properties become "{key}" once nested objects are flattened; rename one.',
            )
        flat[key] = value


def exact(value: Any) -> Any:
    """An integer beyond 2**53 as its decimal text (see MAX_EXACT_INT); anything else as it is."""
    return str(value) if _inexact(value) else value


def _exact_ints(values: list[Any]) -> list[Any]:
    """A list of scalars kept as a list, its integers beyond 2**53 as decimal strings."""
    if not any(map(_inexact, values)):
        return values
    return [exact(value) for value in values]


def _inexact(value: Any) -> bool:
    return type(value) is int and not -MAX_EXACT_INT <= value <= MAX_EXACT_INT


def _scalars(values: list[Any]) -> bool:
    for value in values:
        kind = type(value)
        if kind is float:
            check_exact(value)
        elif kind not in (str, int, bool):
            return False
    return True


# orjson writes a float of 2**63 or more with an exponent of 18 or more, with a sign
# (9.223372036854776e+18).
_LARGE_EXPONENT = re.compile(rb"\de\+?(?:1[89]|[2-9]\d|\d{3})")


def _json_text(value: Any) -> str:
    text = dumps(value)
    # The search costs more than the dump: skipped for a message parsed exactly (the decoder's).
    if floats_may_be_integers() and _LARGE_EXPONENT.search(text):  # rare, and a string can match too: look closely
        _check_nested(value)
    return text.decode()


def _check_nested(value: Any) -> None:
    kind = type(value)
    if kind is float:
        check_exact(value)
    elif kind is list:
        for item in value:
            _check_nested(item)
    elif kind is dict:
        for item in value.values():
            _check_nested(item)


def get_target(name: str) -> Target:
    """The platform called `name` (a key of `PLATFORMS`); only its module is imported."""
    target = importlib.import_module(PLATFORMS[name]).TARGET
    if not isinstance(target, Target):
        raise TypeError(f"{PLATFORMS[name]}.TARGET is not a Target")
    return target

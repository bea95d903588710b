"""Segment messages: one raw line -> records; times, ids and customer ids as Segment writes them.

Everything that knows the shape of a Segment message or the forms its times take lives here;
`mapping.py` uses it to decide what a message bills as.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import msgspec
import orjson

UTF8_BOM = b"\xef\xbb\xbf"

# orjson reads integers beyond 64 bits as floats; a float this large may be such an integer, so
# the line is parsed again with the standard library, which keeps every integer exact.
_INEXACT_FLOAT = float(2**63)
# From this on, a float64 no longer holds every integer: the float read may stand for another
# number than the one written (9007199254740993.0 reads as 9007199254740992.0).
_EXACT_FLOAT = float(2**53)
# Set while a message parsed exactly is converted: every integer in it is an int, so a float
# that large is a float the export really holds (1e300), not a lost integer.
_PARSED_EXACTLY: ContextVar[bool] = ContextVar("parsed_exactly", default=False)


class Invalid(Exception):
    """A record that can never be billed as it is: `kind` is a short key, the text a sentence."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason

    def __reduce__(self) -> tuple[type[Invalid], tuple[str, str]]:
        return Invalid, (self.kind, self.reason)


class InexactNumber(Exception):
    """orjson turned an integer above 64 bits into a float: the line must be parsed exactly."""


class Origin(NamedTuple):
    """Where a line was read: `line` is 1-based, `offset` the byte offset of the line in the
    (decompressed) stream, `end` the offset just after it. A named tuple: one is made per line
    read, and it is the cheapest immutable value to make."""

    path: str
    line: int
    offset: int
    end: int


@dataclass(slots=True)
class Record:
    """One thing read from the input: a message, or a line that could not become one.

    `index` is the position inside a line holding several messages. A record is a message
    exactly when `invalid` is None, even once `drop_message` let it go.
    `first_source`, `missing_on_platform`, `shard`: read back from a dead-letter entry (see deadletter.py).
    `exact`: `message` was read with every integer exact (as `exact_message` would read it).
    """

    origin: Origin
    raw: bytes
    message: dict[str, Any] | None = None
    index: int | None = None
    invalid: Invalid | None = None
    first_source: dict[str, Any] | None = None
    missing_on_platform: bool = False
    shard: tuple[int, int] | None = None  # (K, N): dead-lettered by a run billing shard K of N
    exact: bool = False

    @property
    def path(self) -> str:
        return self.origin.path

    @property
    def line(self) -> int:
        return self.origin.line

    @property
    def offset(self) -> int:
        return self.origin.offset

    @property
    def end(self) -> int:
        return self.origin.end

    def source(self) -> dict[str, Any]:
        source: dict[str, Any] = {"path": self.origin.path, "line": self.origin.line}
        if self.index is not None:
            source["index"] = self.index
        return source

    def where(self) -> str:
        where = f"{self.origin.path}:{self.origin.line}"
        return where if self.index is None else f"{where} (message {self.index})"

    def drop_message(self) -> None:
        """Let the parsed message go once its event is converted: thousands of events wait in
        batches, and a parsed message is several times the size of its line. `exact_message` reads
        it back from `raw` for the rare dead letter."""
        self.message = None


def dumps(value: Any, *, sort_keys: bool = False) -> bytes:
    """orjson, falling back to the standard library for integers orjson cannot write."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS if sort_keys else 0)
    except TypeError:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=sort_keys)
        return text.encode("utf-8", "surrogatepass")


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


_decode_any = msgspec.json.Decoder().decode
# Shorter than this, a line cannot nest deep enough to meet either parser's recursion limit.
_SHALLOW = 1000


def _loads_exact(raw: bytes) -> Any:
    """The standard library's parse: every integer exact. msgspec reads the same values ~4x
    faster (the rare dead letter re-reads its line): integers of any size, correctly rounded
    floats, the last of duplicate keys. What it refuses (a lone surrogate, a number beyond
    float64, an integer over 4,300 digits), and a line that may nest near the recursion limit
    (which the two parsers meet a few levels apart), the standard library reads and judges."""
    if len(raw) < _SHALLOW or raw.count(b"[") + raw.count(b"{") < _SHALLOW // 2:
        try:
            return _decode_any(raw)
        except (msgspec.MsgspecError, RecursionError):
            pass
    return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)


Loads = Callable[[bytes], Any]


@dataclass(frozen=True, slots=True)
class Wrapper:
    """Lines that wrap other records (segbill's own dead-letter entries, see deadletter.py): the
    key that marks one, and how to read its record back (None: not such a line after all)."""

    marker: str
    unwrap: Callable[[dict[str, Any], bytes, Origin, Loads], Record | None]


def read_line(raw: bytes, origin: Origin, loads: Loads = orjson.loads, wrapper: Wrapper | None = None) -> list[Record]:
    """Parse one non-blank line into records: a message, an envelope's messages, or a reason."""
    try:
        value = loads(raw)
    except ValueError as error:  # orjson's and the standard library's decode errors, bad UTF-8
        return [Record(origin, raw, invalid=_unreadable(raw, error))]
    return records_of(value, raw, origin, loads, wrapper)


def exact_message(record: Record, wrapper: Wrapper | None = None) -> dict[str, Any]:
    """The record's message parsed again with every integer exact (see `InexactNumber`), through
    the `wrapper` it was read with; not again when it was read so."""
    if record.exact and record.message is not None:
        return record.message
    for candidate in read_line(record.raw, record.origin, _loads_exact, wrapper):
        if candidate.index == record.index and candidate.message is not None:
            return candidate.message
    raise AssertionError("an exact parse found no message where orjson found one")


def _unreadable(raw: bytes, error: Exception) -> Invalid:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return Invalid("not_utf8", "The line is not valid UTF-8 text.")
    detail = f"{error.msg} at character {error.pos}" if isinstance(error, json.JSONDecodeError) else str(error)
    return Invalid("not_json", f"The line is not valid JSON ({detail}).")


def records_of(
    value: Any, raw: bytes, origin: Origin, loads: Loads = orjson.loads, wrapper: Wrapper | None = None
) -> list[Record]:
    """The records of one parsed line: a message, an envelope's or array's messages, a wrapped
    record (`wrapper`), or why the value is not a message."""
    if type(value) is dict and type(value.get("type")) is str and (wrapper is None or wrapper.marker not in value):
        return [Record(origin, raw, value)]  # a message: the usual line
    if isinstance(value, dict):
        if wrapper is not None and wrapper.marker in value:
            unwrapped = wrapper.unwrap(value, raw, origin, loads)
            if unwrapped is not None:
                return [unwrapped]
        batch = value.get("batch")
        if isinstance(batch, list) and "type" not in value:
            shared = {key: value[key] for key in ("context", "integrations") if key in value}
            items = [_merge_envelope(item, shared) for item in batch]
            return _many(items, raw, origin, "envelope batch item")
        return [Record(origin, raw, message=value)]
    if isinstance(value, list):
        return _many(value, raw, origin, "array item")
    return [Record(origin, raw, invalid=Invalid("not_object", f"The line is JSON but not an object (it is {_kind(value)})."))]


def _many(items: list[Any], raw: bytes, origin: Origin, what: str) -> list[Record]:
    if not items:
        return [Record(origin, raw, invalid=Invalid("empty_batch", f"The line is an empty {what.split()[0]}."))]
    records = []
    for index, item in enumerate(items):
        if isinstance(item, dict):
            records.append(Record(origin, raw, message=item, index=index))
        else:
            reason = f"This {what} is not an object (it is {_kind(item)})."
            records.append(Record(origin, dumps(item), index=index, invalid=Invalid("not_object", reason)))
    return records


def _merge_envelope(item: Any, shared: dict[str, Any]) -> Any:
    """Segment's HTTP API merges the envelope's context/integrations into each message."""
    if not isinstance(item, dict) or not shared:
        return item
    merged = dict(item)
    for key, value in shared.items():
        own = item.get(key)
        if isinstance(value, dict) and isinstance(own, dict):
            merged[key] = {**value, **own}
        elif own is None:
            merged[key] = value
    return merged


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


# --- time -----------------------------------------------------------------------------------

# A time as segbill reads it: RFC 3339 (what Segment writes), with what its libraries and exports
# are seen to write besides: unpadded month, day and time fields, a space for the `T`, an offset
# without its colon, and no zone (UTC). Nothing else: a date alone, week or ordinal dates, the
# basic format, offsets with seconds, blanks around, a comma before the fraction. Such a time was
# not written by Segment and may be read as another instant than was meant.
_TIME = re.compile(
    r"([0-9]{4})-([0-9]{1,2})-([0-9]{1,2})"
    r"(?:[Tt ]([0-9]{1,2}):([0-9]{1,2}):([0-9]{1,2})(?:[.]([0-9]+))?(?:([Zz])|([+-])([0-9]{2}):?([0-9]{2}))?)?"
)
_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
TIME_FIELDS = ("timestamp", "originalTimestamp", "receivedAt")


_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)
_MAX_MILLIS = 253402300800000  # 10000-01-01: past it, no platform can take the time


# The usual layouts, as `bytes.translate` writes them with every digit a 9: what
# `datetime.fromisoformat` reads (in C) exactly as the pattern would. It also reads forms the
# pattern refuses, so it is given only these; the rest (unpadded fields, 13 fraction digits or
# more, `z`) goes to the pattern.
_DIGITS_AS_NINES = bytes.maketrans(b"0123456789", b"9" * 10)
_USUAL_LAYOUTS = frozenset(
    f"9999-99-99{separator}99:99:99{fraction}{zone}".encode()
    for separator in "Tt "
    for fraction in ["", *("." + "9" * digits for digits in range(1, 13))]
    for zone in ("", "Z", "+99:99", "-99:99", "+9999", "-9999")
)


def parse_time(value: Any, *, date_alone: bool = False) -> int | None:
    """A time (`_TIME`) -> milliseconds since the epoch (UTC), or None.

    Any fraction is truncated to milliseconds; a time without a zone is UTC. `date_alone`: a
    date is midnight UTC (a person's --since, never an event's time). Numbers are refused: epoch
    seconds and milliseconds cannot be told apart, and Segment never writes them. So are times
    before 1970 or after 9999 (`why_not_a_time` says which).
    """
    if type(value) is not str:
        return None
    millis = None
    if value.isascii() and value.encode().translate(_DIGITS_AS_NINES) in _USUAL_LAYOUTS:
        try:  # what it refuses (a 13th month), the pattern refuses too
            moment = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            millis = (moment - _EPOCH_UTC) // _MILLISECOND
    if millis is None:
        millis = _unbounded_millis(value, date_alone)
    return millis if millis is not None and 0 <= millis < _MAX_MILLIS else None


def _unbounded_millis(value: str, date_alone: bool) -> int | None:
    """The pattern's reading of `value`, whatever its year; None when it is no time."""
    match = _TIME.fullmatch(value)
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, _zulu, sign, off_h, off_m = match.groups()
    if hour is None and not date_alone:
        return None
    y, m, d = int(year), int(month), int(day)
    h, mi, s = int(hour or 0), int(minute or 0), int(second or 0)
    if not (1 <= m <= 12 and 1 <= d <= _month_days(y, m) and h < 24 and mi < 60 and s < 60):
        return None
    offset = 0
    if sign:
        oh, om = int(off_h), int(off_m)
        if oh > 23 or om > 59:
            return None
        offset = (oh * 60 + om) * 60 * (1 if sign == "+" else -1)
    millis = int((fraction or "").ljust(3, "0")[:3])
    seconds = _days_from_civil(y, m, d) * 86400 + h * 3600 + mi * 60 + s - offset
    return seconds * 1000 + millis


def why_not_a_time(value: Any) -> str:
    """Why `parse_time` refuses an event's time, as the end of a sentence naming the field."""
    if type(value) is not str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return "is a number, not a time: epoch seconds and milliseconds cannot be told apart"
        return f"is {_kind(value)}, not a time"
    if not value:
        return "is empty"
    millis = _unbounded_millis(value, date_alone=True)
    if millis is None:
        return "is not an RFC 3339 time such as 2024-01-31T12:00:00.123Z (the README lists the forms read)"
    if _unbounded_millis(value, date_alone=False) is None:
        return "is a date without a time of day: midnight UTC may not be when it happened"
    if millis < 0:
        return (
            "is before the Unix epoch (1970-01-01T00:00:00Z), where the platforms' event times begin "
            "(most often a device clock that was never set)"
        )
    return "is after the year 9999, which no platform takes"


def _month_days(year: int, month: int) -> int:
    leap = month == 2 and year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    return _DAYS_IN_MONTH[month - 1] + leap


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


_EPOCH = datetime(1970, 1, 1)


def iso_millis(millis: int) -> str:
    """Milliseconds since the epoch -> `2024-01-01T00:00:00.123Z`."""
    return (_EPOCH + timedelta(milliseconds=millis)).isoformat(timespec="milliseconds") + "Z"


_FRACTIONS = tuple(f".{ms:03d}" for ms in range(1000))  # a third of the time of formatting each


def unix_seconds(millis: int) -> str:
    """Milliseconds since the epoch -> `"1704067200.123"`, exact (no float on the way)."""
    return str(millis // 1000) + _FRACTIONS[millis % 1000]


# --- billable events ------------------------------------------------------------------------


@dataclass(slots=True)
class Billable:
    """What every platform needs from a track message, read the same way for all of them."""

    id: str
    customer: str
    event: str
    millis: int
    properties: dict[str, Any]


def lookup(message: dict[str, Any], path: tuple[str, ...]) -> Any:
    """The value at a dotted path (as a tuple of keys), or None."""
    value: Any = message
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def customer_id(value: Any, where: str) -> str:
    """A customer id as the platforms take it: a non-empty string; integers become strings."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(exact_float(value, "inexact_customer", f'The customer id at "{where}"')))
    if value is None or value == "":
        raise Invalid("missing_customer", f'The track message has no customer id at "{where}".')
    raise Invalid("missing_customer", f'The customer id at "{where}" is {_kind(value)}, not a string or an integer.')


DEFAULT_TIME_PATHS = tuple((name,) for name in TIME_FIELDS)


def event_time(message: dict[str, Any], paths: tuple[tuple[str, ...], ...] = DEFAULT_TIME_PATHS) -> int:
    """The time to bill on: the first present (not null) of `paths`; by default `timestamp`, else
    `originalTimestamp`, else `receivedAt`. An unreadable one, an empty one included, is an
    error, never passed over for another of the message's times."""
    for path in paths:
        value = lookup(message, path)
        if value is None:
            continue
        millis = parse_time(value)
        if millis is None:
            shown = value if isinstance(value, str) else dumps(value).decode()
            raise Invalid("bad_time", f'The message\'s "{".".join(path)}" ({shown[:60]!r}) {why_not_a_time(value)}.')
        return millis
    names = ", ".join(".".join(path) for path in paths)
    raise Invalid("bad_time", f"The message has no time ({names}).")


# How `derived_id` makes an id, as a key source names it (`Mapping.key_source`, kept in a --state
# file): another way of deriving ids needs another name, so that a state refuses to mix them.
DERIVED_ID = "segbill-sha256"


def derived_id(message: dict[str, Any]) -> str:
    """A stable id for a message that has none: a hash of its whole content, keys sorted."""
    digest = hashlib.sha256(dumps(message, sort_keys=True)).hexdigest()
    return f"segbill-{digest[:32]}"


def check_exact(value: float) -> float:
    """Return a float unless it may be an integer orjson could not hold exactly: then the line
    must be parsed exactly (`InexactNumber`), and converted again `parsed_exactly`."""
    if abs(value) >= _INEXACT_FLOAT and not _PARSED_EXACTLY.get():
        raise InexactNumber
    return value


def exact_float(value: float, kind: str, what: str) -> float:
    """A float that is surely the number the export wrote, else `Invalid`: past 2**53, ids and
    amounts would silently become their float neighbours. May raise `InexactNumber` first
    (see `check_exact`)."""
    if abs(check_exact(value)) >= _EXACT_FLOAT:
        raise Invalid(
            kind,
            f"{what} is a number of 2**53 or more (it reads as {value!r}): a JSON float cannot hold it "
            "exactly, so it may not be the number written.",
        )
    return value


def floats_may_be_integers() -> bool:
    """Whether a large float of the message being converted may stand for an integer orjson
    could not hold (see `check_exact`): never in a message parsed exactly."""
    return not _PARSED_EXACTLY.get()


@contextmanager
def parsed_exactly() -> Iterator[None]:
    """Convert a message `exact_message` read: its large floats are floats (see `check_exact`)."""
    token = _PARSED_EXACTLY.set(True)
    try:
        yield
    finally:
        _PARSED_EXACTLY.reset(token)

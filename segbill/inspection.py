"""`segbill inspect`: what an unknown export holds, before anything is sent.

One streaming pass over the same inputs as `send` (files, folders, gzip by content, stdin), in
memory bounded by the limits below whatever the input size. It answers the questions a first
replay raises: which events there are and over which period, which field can serve as the
customer id, which track messages `send` would dead-letter, what the properties look like, and
whether repeated `messageId`s carry different times (Lago's ClickHouse event store would bill
each copy).

`--json` prints one object (the numbers are sample_data/'s):

    {
      "files": 10,                     # sources read (stdin counts as one)
      "records": 197,                  # as `send` counts them: one per non-blank line, or per
                                       # message of a line holding several
      "interrupted": false,            # Ctrl-C: the report covers what was read until then
      "types": {"track": 163, "identify": 11, "page": 8, ...},   # "(missing)": no usable type
      "unreadable": {"not_json": {"count": 2, "examples": ["sample_data/events.jsonl:13", ...]}},
      "track": {
        "messages": 163, "first_time": "2024-01-05T00:31:27.833Z", "last_time": "...",
        "without_user_id": 11,         # no usable userId: send dead-letters these by default
        "without_message_id": 1,       # send derives a stable id from the message
        "without_time": 0,             # send dead-letters these, and the next three
        "without_event": 0,
        "bad_properties": 0,           # "properties" is not an object
        "property_conflicts": 0        # two properties flatten to the same key
      },
      "events": [EVENT, ...],          # most frequent first, at most limits.events of them
      "other_events": EVENT | null,    # every name past limits.events, together ("name": null)
      "customer_fields": [             # candidate customer ids, most frequent first
        {"path": "userId", "messages": 152, "fraction": 0.9325, "unusable": 0,
         "distinct": 30, "distinct_capped": false}   # capped: "distinct" is a lower bound
      ],
      "message_ids": {                 # track messages only
        "repeated": 8,                 # messageIds seen more than once
        "repeated_time_differs": 6,    # of those, seen with another event time than the first
        "extra_copies": 8,             # messages past the first of each messageId
        "ids_tracked": 154, "cap_hit": false,   # past the cap, new ids are not tracked
        "examples": [{"message_id": "dc7a615d-...", "where": "sample_data/events.jsonl:26",
                      "first_time": "2024-01-08T09:00:05.419Z", "time": "2024-01-08T09:00:05.422Z"}]
      },
      "limits": {"events": 1000, "properties_per_event": 200, "distinct_values": 100000,
                 "message_ids": 5000000, "id_fields": 20}
    }

    EVENT = {"name": "API Call", "messages": 40, "first_time": "...", "last_time": "...",
             "properties": [{"key": "usage.input_tokens", "present": 40, "fraction": 1.0,
                             "types": {"integer": 40}}, ...],   # most present first
             "untracked_properties": 0}   # occurrences of keys past limits.properties_per_event

Memory at the default limits, whatever the input: at most 143 MB for messageIds (one more
table of half that while it grows), about 7 MB per candidate field at the distinct cap, and
the key tables of at most 1,000 events x 200 keys.

Times are ISO 8601 UTC with milliseconds, or null when there is none. Property keys are dotted
the way segbill flattens them (nested objects -> `a.b`); types are string, integer, number,
boolean, array, object (an empty one) and null.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from segbill.deadletter import ENTRIES
from segbill.segment import (
    InexactNumber,
    Invalid,
    Record,
    check_exact,
    customer_id,
    event_time,
    exact_message,
    iso_millis,
    lookup,
    parsed_exactly,
)
from segbill.sources import Source, read_records
from segbill.targets import flatten

MAX_EVENTS = 1000
MAX_KEYS = 200
MAX_DISTINCT = 100_000
MAX_MESSAGE_IDS = 5_000_000
MAX_ID_FIELDS = 20  # property keys found to look like customer ids
MAX_EXAMPLES = 5

# Candidate customer ids outside `properties`, always looked up. Inside `properties`, any
# flattened key matching ID_KEY is a candidate (customer_id, subscription_id, account.id, orgId...).
CUSTOMER_FIELDS = (
    "userId",
    "anonymousId",
    "groupId",
    "context.groupId",
    "context.traits.groupId",
    "context.traits.company_id",
    "context.traits.company.id",
    "context.traits.account_id",
)
ID_KEY = re.compile(
    r"(?:account|customer|subscription|org|organi[sz]ation|workspace|tenant|team|company|group)[._]?id$",
    re.IGNORECASE,
)
PROPERTIES = "properties."

_TYPE_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object", type(None): "null"}
_NO_TIME = -(2**63)  # an unreadable time, in the message-id table


class _MessageIds:
    """Repeated messageIds, exactly, in flat arrays.

    A dict of int -> int costs about 100 bytes per id and an export holds millions, so each id
    is kept as its 64-bit hash (`hash()` of the text: SipHash; the chance of any collision among
    5 million ids is under one in a million) in an open-addressing table of parallel arrays,
    17 bytes a slot: 143 MB at most for the default 5 million ids. Past `capacity` ids new ids
    are not kept (`full`); repeats of the ids kept are still found.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.tracked = 0
        self.full = False
        self.repeated = 0  # ids seen more than once
        self.time_differs = 0  # of those, ids seen with another event time than their first
        self.extra_copies = 0  # occurrences past the first of each id
        self._allocate(1 << 12)

    def _allocate(self, size: int) -> None:
        self._mask = size - 1
        self._keys = array("q", bytes(8 * size))  # 0: empty slot
        self._times = array("q", bytes(8 * size))
        self._state = bytearray(size)  # 0 seen once, 1 repeated, 2 repeated with another time

    def add(self, message_id: str, millis: int | None) -> int | None:
        """Count one occurrence. When it is the first to show another time than the id's first
        occurrence, return that first time (`_NO_TIME` if it had none), for an example."""
        key = hash(message_id) or 1
        millis = _NO_TIME if millis is None else millis
        keys, mask = self._keys, self._mask
        slot = key & mask
        while True:
            found = keys[slot]
            if found == key:
                break
            if found == 0:
                self._insert(slot, key, millis)
                return None
            slot = (slot + 1) & mask
        self.extra_copies += 1
        state = self._state[slot]
        if state == 0:
            self.repeated += 1
            self._state[slot] = state = 1
        first = self._times[slot]
        if state == 1 and first != millis:
            self.time_differs += 1
            self._state[slot] = 2
            return first
        return None

    def _insert(self, slot: int, key: int, millis: int) -> None:
        if self.tracked >= self.capacity:
            self.full = True
            return
        self._keys[slot] = key
        self._times[slot] = millis
        self.tracked += 1
        if self.tracked * 5 > len(self._keys) * 3:  # keep the load under 60%: probes stay short
            self._grow()

    def _grow(self) -> None:
        old = zip(self._keys, self._times, self._state, strict=False)
        self._allocate(2 * len(self._keys))
        keys, mask = self._keys, self._mask
        for key, millis, state in old:
            if key:
                slot = key & mask
                while keys[slot]:
                    slot = (slot + 1) & mask
                keys[slot] = key
                self._times[slot] = millis
                self._state[slot] = state


@dataclass(slots=True)
class _Field:
    """A candidate customer id: in how many track messages it holds a usable id, and how many
    distinct ids (hashes in a set, exact up to `cap`)."""

    path: str
    cap: int
    messages: int = 0
    unusable: int = 0  # present but not an id send accepts ("", a boolean, an object...)
    values: set[int] = field(default_factory=set)
    capped: bool = False

    def count(self, value: Any) -> None:
        text = _id_text(value)
        if text is None:
            self.unusable += 1
            return
        self.messages += 1
        digest = hash(text)
        if len(self.values) < self.cap:
            self.values.add(digest)
        elif not self.capped and digest not in self.values:
            self.capped = True


@dataclass(slots=True)
class _Key:
    present: int = 0
    types: dict[str, int] = field(default_factory=dict)
    candidate: _Field | None = None


@dataclass(slots=True)
class _Event:
    name: str | None
    messages: int = 0
    first: int | None = None
    last: int | None = None
    keys: dict[str, _Key] = field(default_factory=dict)
    untracked: int = 0


@dataclass(slots=True)
class _Track:
    """What one track message says, read in full before anything is counted, so that a message
    read again exactly (integers beyond 64 bits) is counted once."""

    event: str | None
    millis: int | None
    message_id: str | None
    properties_ok: bool
    flat: list[tuple[str, Any]]
    property_conflict: bool
    looked_up: list[tuple[_Field, Any]]


class Inspection:
    """Statistics over records, fed one at a time (`add`), in bounded memory."""

    def __init__(
        self,
        *,
        customer_from: str | None = None,
        max_events: int = MAX_EVENTS,
        max_keys: int = MAX_KEYS,
        max_distinct: int = MAX_DISTINCT,
        max_message_ids: int = MAX_MESSAGE_IDS,
        max_id_fields: int = MAX_ID_FIELDS,
    ) -> None:
        self.limits = {
            "events": max_events,
            "properties_per_event": max_keys,
            "distinct_values": max_distinct,
            "message_ids": max_message_ids,
            "id_fields": max_id_fields,
        }
        self.files = 0
        self.records = 0
        self.interrupted = False
        self.types: dict[str, int] = {}
        self.unreadable: dict[str, dict[str, Any]] = {}
        self.track = 0
        self.without_message_id = 0
        self.without_time = 0
        self.without_event = 0
        self.bad_properties = 0
        self.property_conflicts = 0
        self.first: int | None = None
        self.last: int | None = None
        self._events: dict[str, _Event] = {}
        self._other: _Event | None = None
        self._customer_from = customer_from
        paths = list(CUSTOMER_FIELDS)
        if customer_from is not None and customer_from not in paths:
            paths.append(customer_from)
        self._fields = {path: _Field(path, max_distinct) for path in paths}
        self._always_shown = {path for path in ("userId", customer_from) if path}
        self._lookups = [(tuple(path.split(".")), self._fields[path]) for path in paths]
        self._discovered = 0
        self._ids = _MessageIds(max_message_ids)
        self._id_examples: list[dict[str, Any]] = []

    def read(self, sources: Iterable[Source]) -> None:
        """Every record of every source, in order (the same records `send` reads)."""
        for source in sources:
            self.files += 1
            for record in read_records(source):
                self.add(record)

    def add(self, record: Record) -> None:
        self.records += 1
        message = record.message
        if message is None:
            assert record.invalid is not None
            self._unreadable(record.invalid.kind, record.where())
            return
        kind = message.get("type")
        name = kind if isinstance(kind, str) and kind else "(missing)"
        self.types[name] = self.types.get(name, 0) + 1
        if kind != "track":
            return
        try:
            track = self._read_track(message)
        except InexactNumber:  # orjson read an integer beyond 64 bits as a float (or a float is that large)
            with parsed_exactly():
                self._count_track(self._read_track(exact_message(record, ENTRIES)), record)
            return
        self._count_track(track, record)

    def _unreadable(self, kind: str, where: str) -> None:
        entry = self.unreadable.setdefault(kind, {"count": 0, "examples": []})
        entry["count"] += 1
        if len(entry["examples"]) < MAX_EXAMPLES:
            entry["examples"].append(where)

    def _read_track(self, message: dict[str, Any]) -> _Track:
        event = message.get("event")
        try:
            millis: int | None = event_time(message)
        except Invalid:
            millis = None
        message_id = message.get("messageId")
        if type(message_id) is int:
            message_id = str(message_id)
        elif type(message_id) is not str or not message_id:
            message_id = None
        properties = message.get("properties")
        flat: list[tuple[str, Any]] = []
        too_deep = conflict = False
        if type(properties) is dict:
            try:
                _flatten(properties, "", flat)
            except RecursionError:  # nested about a thousand deep: send dead-letters it (too_deep)
                flat, too_deep = [], True
            conflict = len({key for key, _ in flat}) < len(flat) and _send_refuses(properties)
        looked_up = []
        for path, candidate in self._lookups:
            value = lookup(message, path)
            if value is not None:
                if type(value) is float:
                    check_exact(value)
                looked_up.append((candidate, value))
        return _Track(
            event if isinstance(event, str) and event.strip() else None,
            millis,
            message_id,
            properties is None or (type(properties) is dict and not too_deep),
            flat,
            conflict,
            looked_up,
        )

    def _count_track(self, track: _Track, record: Record) -> None:
        self.track += 1
        millis = track.millis
        if millis is None:
            self.without_time += 1
        else:
            if self.first is None or millis < self.first:
                self.first = millis
            if self.last is None or millis > self.last:
                self.last = millis
        if track.message_id is None:
            self.without_message_id += 1
        else:
            first = self._ids.add(track.message_id, millis)
            if first is not None and len(self._id_examples) < MAX_EXAMPLES:
                self._id_examples.append(
                    {"message_id": track.message_id, "where": record.where(), "first_time": _iso(first), "time": _iso(millis)}
                )
        if not track.properties_ok:
            self.bad_properties += 1
        for candidate, value in track.looked_up:
            candidate.count(value)
        flat = track.flat
        if track.property_conflict:
            self.property_conflicts += 1
        if track.event is None:
            self.without_event += 1
            for key, value in flat:  # no event to describe, but its ids still count
                self._count_id_property(key, value)
            return
        self._count_event(self._event(track.event), millis, flat)

    def _event(self, name: str) -> _Event:
        event = self._events.get(name)
        if event is not None:
            return event
        if len(self._events) < self.limits["events"]:
            event = self._events[name] = _Event(name)
            return event
        if self._other is None:
            self._other = _Event(None)
        return self._other

    def _count_event(self, event: _Event, millis: int | None, flat: list[tuple[str, Any]]) -> None:
        event.messages += 1
        if millis is not None:
            if event.first is None or millis < event.first:
                event.first = millis
            if event.last is None or millis > event.last:
                event.last = millis
        keys = event.keys
        for key, value in flat:
            stats = keys.get(key)
            if stats is None:
                if len(keys) >= self.limits["properties_per_event"]:
                    event.untracked += 1
                    self._count_id_property(key, value)
                    continue
                stats = keys[key] = _Key(candidate=self._candidate(key))
            stats.present += 1
            kind = _TYPE_NAMES[type(value)]
            stats.types[kind] = stats.types.get(kind, 0) + 1
            if stats.candidate is not None and value is not None:
                stats.candidate.count(value)

    def _count_id_property(self, key: str, value: Any) -> None:
        """A property no event key table holds, which may still be a customer id."""
        if value is not None:
            candidate = self._candidate(key)
            if candidate is not None:
                candidate.count(value)

    def _candidate(self, key: str) -> _Field | None:
        """The candidate field a property key feeds, if its name looks like a customer id.
        None for a path already looked up as a whole (`--customer-from properties.x`)."""
        if not ID_KEY.search(key):
            return None
        path = PROPERTIES + key
        if path in self._fields:
            return None if path == self._customer_from else self._fields[path]
        if self._discovered >= self.limits["id_fields"]:
            return None
        self._discovered += 1
        candidate = self._fields[path] = _Field(path, self.limits["distinct_values"])
        return candidate

    def result(self) -> dict[str, Any]:
        """The report as plain data (the `--json` shape in the module docstring)."""
        events = sorted(self._events.values(), key=lambda event: (-event.messages, event.name))
        fields = [
            candidate
            for candidate in self._fields.values()
            if candidate.messages or candidate.unusable or candidate.path in self._always_shown
        ]
        fields.sort(key=lambda candidate: -candidate.messages)
        ids = self._ids
        return {
            "files": self.files,
            "records": self.records,
            "interrupted": self.interrupted,
            "types": dict(sorted(self.types.items(), key=lambda item: (-item[1], item[0]))),
            "unreadable": dict(sorted(self.unreadable.items())),
            "track": {
                "messages": self.track,
                "first_time": _iso(self.first),
                "last_time": _iso(self.last),
                "without_user_id": self.track - self._fields["userId"].messages,
                "without_message_id": self.without_message_id,
                "without_time": self.without_time,
                "without_event": self.without_event,
                "bad_properties": self.bad_properties,
                "property_conflicts": self.property_conflicts,
            },
            "events": [_event_result(event) for event in events],
            "other_events": None if self._other is None else _event_result(self._other),
            "customer_fields": [
                {
                    "path": candidate.path,
                    "messages": candidate.messages,
                    "fraction": _fraction(candidate.messages, self.track),
                    "unusable": candidate.unusable,
                    "distinct": len(candidate.values),
                    "distinct_capped": candidate.capped,
                }
                for candidate in fields
            ],
            "message_ids": {
                "repeated": ids.repeated,
                "repeated_time_differs": ids.time_differs,
                "extra_copies": ids.extra_copies,
                "ids_tracked": ids.tracked,
                "cap_hit": ids.full,
                "examples": self._id_examples,
            },
            "limits": dict(self.limits),
        }


def inspect_sources(sources: Iterable[Source], **options: Any) -> dict[str, Any]:
    """Inspect sources in one pass; `options` are `Inspection`'s (customer_from, limits)."""
    inspection = Inspection(**options)
    inspection.read(sources)
    return inspection.result()


def _flatten(values: dict[str, Any], prefix: str, out: list[tuple[str, Any]]) -> None:
    """Nested objects -> dotted keys, as `targets.flatten` joins them, but every value as read
    (nulls, empty objects and colliding keys kept): their types are what is counted, where
    `targets.flatten` converts values for a platform and refuses a collision (`_send_refuses`)."""
    for name, value in values.items():
        kind = type(value)
        if kind is dict and value:
            _flatten(value, prefix + name + ".", out)
            continue
        if kind is float:
            check_exact(value)
        out.append((prefix + name, value))


def _send_refuses(properties: dict[str, Any]) -> bool:
    """Whether send dead-letters these properties as a property_conflict, by its own flattening:
    it drops nulls and empty objects first, so `{"a.b": null, "a": {"b": 2}}` is no conflict there
    though `_flatten` keeps both keys. Asked only where `_flatten` made a key twice."""
    try:
        flatten(properties, keep_scalar_lists=True)
    except Invalid as error:
        return error.kind == "property_conflict"
    return False


def _id_text(value: Any) -> str | None:
    """The id `send` would bill a value as (numbers -> text), or None where it refuses one."""
    try:
        return customer_id(value, "")
    except Invalid:
        return None


def _event_result(event: _Event) -> dict[str, Any]:
    keys = sorted(event.keys.items(), key=lambda item: (-item[1].present, item[0]))
    return {
        "name": event.name,
        "messages": event.messages,
        "first_time": _iso(event.first),
        "last_time": _iso(event.last),
        "properties": [
            {
                "key": key,
                "present": stats.present,
                "fraction": _fraction(stats.present, event.messages),
                "types": dict(sorted(stats.types.items(), key=lambda item: (-item[1], item[0]))),
            }
            for key, stats in keys
        ],
        "untracked_properties": event.untracked,
    }


def _fraction(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def _iso(millis: int | None) -> str | None:
    if millis is None or millis == _NO_TIME:
        return None
    return iso_millis(millis)

"""Decode only what the mapping reads (issue 14, lever 1).

A Segment line is mostly what segbill never reads: `context` (1-2 KB from a browser),
`integrations`, `traits`, `sentAt`... `orjson.loads` builds all of it as Python objects. The
decoder here is a msgspec schema made from the mapping's top-level keys (type, event, id,
customer, time, properties, amount): msgspec skips every other key in C and builds only these,
and the usual track message then goes through the mapping's own fast path
(`Mapping.fast_billable`) and the same conversion as every other message.

Anything unusual falls back to the exact general path, which stays the authority: a line that
is not one message (an envelope, an array, a dead-letter entry), a type the mapping may bill
besides track, anything the fast path refuses (a missing or odd field, a time it does not
read), a conflict between flattened properties, a line msgspec refuses or one that is not valid
UTF-8 (msgspec does not check the text of keys it skips). msgspec reads integers beyond 64 bits
exactly, as the general path's exact re-parse does; one in the properties makes the line fall
back all the same, so that such integers are converted in one place (the general path's, which
also writes them inside lists sent as JSON text). Its floats are the numbers written, so a float
of 2**63 or more is converted here, as the general path converts it once parsed exactly.

One difference is kept on purpose: a number beyond float64's range (such as 1e400) in a key
the mapping does not read. orjson refuses such a line whole (it is dead-lettered as not JSON);
msgspec skips the key unread, so the line is billed from the fields it does read. Finding
such a number without reading the line costs about what skipping it saves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Annotated, Any, TypedDict

import msgspec
import orjson

from segbill.deadletter import DEAD_LETTER_MARKER, ENTRIES
from segbill.mapping import Mapping, Skipped
from segbill.segment import _PARSED_EXACTLY, Billable, Invalid, Origin, Record, read_line, records_of
from segbill.sources import Line
from segbill.targets import Target

# A converted message: its billable fields (customer and time: for the shard and time bounds) and
# the platform's event (its idempotency key is read from it when claimed, as for any event).
Converted = tuple[Billable, dict[str, Any]]
# What the decoder says about one line: converted; a `str`, the type of a message the mapping
# does not bill; a `Skipped`, left out by the selection rules; None: ask the general path.
Decoded = Converted | str | Skipped | None
# The mapping's fast path (`Mapping.fast_billable`): a usual track message -> its fields, or None.
FastPath = Callable[[dict[str, Any]], Billable | None]
# Builds the platform's event from a message's fields (the conversion step the general path uses).
EventOf = Callable[[Billable, dict[str, Any], Target, Mapping], dict[str, Any]]

# An `Origin` made in C: its class's own constructor is a Python function, 0.1 us a line more.
_new_origin = tuple.__new__

# Properties nested deeper than this fall back: msgspec builds the type below in time and
# memory growing 4x a level (1 ms at 6), and real properties nest 2-3 deep.
_MAX_DEPTH = 6
_Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


def _json_value(depth: int) -> Any:
    """Any JSON value nested at most `depth` deep, whose integers fit in 64 bits: msgspec
    refuses larger ones and the line falls back to the general path, which converts them."""
    scalar = _Int64 | float | str | bool | None
    if depth == 0:
        return scalar
    inner = _json_value(depth - 1)
    return scalar | list[inner] | dict[str, inner]  # type: ignore[valid-type]


_PROPERTIES = _json_value(_MAX_DEPTH)
# A line the general path reads: msgspec gives orjson's values (as fast), but refuses integers
# beyond 64 bits (orjson's floats) and deep nesting, so that what it reads is exact.
_read_whole: Callable[[bytes], Any] = msgspec.json.Decoder(_json_value(_MAX_DEPTH + 1)).decode


def _keys(mapping: Mapping) -> list[str]:
    """The top-level keys the mapping's fast path reads (each field from one top-level key, the
    time from the first of its paths), and the amount's. Everything read from the mapping is
    read here."""
    fields = mapping.fields
    paths = [fields.id.paths[0], fields.customer.paths[0], fields.event.paths[0], fields.time.paths[0]]
    if fields.amount is not None:
        paths += fields.amount.paths
    return list(dict.fromkeys(["type", "properties", *(path[0] for path in paths)]))


class BlockDecoder:
    """Lines -> what each one bills as, reading only the keys the mapping reads."""

    def __init__(self, mapping: Mapping, target: Target, fields: FastPath, event_of: EventOf) -> None:
        self._mapping = mapping
        self._target = target
        self._fields = fields
        self._event_of = event_of
        self._billed_types = set(mapping.events.billable_types)
        # Without property rules or an amount, the event is the platform's conversion alone.
        plain = not mapping.shapes_properties and mapping.fields.amount is None
        self._convert = target.convert if plain else None
        self._separator = mapping.separator
        self._customer_key = mapping.fields.customer.paths[0][0]
        # A TypedDict rather than a Struct: the fast path reads a dict, and making one from a
        # Struct costs more per line (0.4 us) than msgspec's building the dict itself.
        schema = {key: _PROPERTIES if key == "properties" else Any for key in _keys(mapping)}
        message = TypedDict("Message", {**schema, DEAD_LETTER_MARKER: Any}, total=False)  # type: ignore[misc]
        self._decode: Callable[[bytes], dict[str, Any]] = msgspec.json.Decoder(message).decode  # type: ignore[assignment]

    def decode(self, raw: bytes) -> Decoded:
        """What one line bills as, or None: the general path must read it."""
        try:
            message = self._decode(raw)
        except (msgspec.MsgspecError, RecursionError):  # not an object, not JSON, refused, too deep: the general path says why
            return None
        if DEAD_LETTER_MARKER in message:
            return None
        if not raw.isascii():  # orjson refuses a line that is not UTF-8, even in a key segbill skips: so must this
            try:
                raw.decode()
            except UnicodeDecodeError:
                return None
        kind = message.get("type")
        if kind != "track":
            if type(kind) is str and kind and kind not in self._billed_types:
                return kind
            return None
        customer = message.get(self._customer_key)
        if type(customer) is int:  # a numeric user id: the general path makes it this string
            message[self._customer_key] = str(customer)
        # msgspec's numbers are the ones written (integers beyond 64 bits fall back): converted
        # as a message parsed exactly, where no float can be a lost integer.
        exactly = _PARSED_EXACTLY.set(True)
        try:
            fields = self._fields(message)
            if fields is None:
                return None
            if self._convert is not None:
                return fields, self._convert(fields, self._separator)
            return fields, self._event_of(fields, message, self._target, self._mapping)
        except Skipped as skipped:
            return skipped
        except (Invalid, RecursionError):
            return None
        finally:
            _PARSED_EXACTLY.reset(exactly)

    def records(self, lines: Iterable[Line], path: str) -> Iterator[tuple[Record, Decoded]]:
        """The records of `lines` (as `read_records` makes them), each with what it bills as;
        a record the decoder did not read comes from the general path's parse, with None."""
        decode, read_whole = self.decode, _read_whole
        for number, start, end, data, problem in lines:
            origin = _new_origin(Origin, (path, number, start, end))
            if problem is not None:
                yield Record(origin, data, invalid=problem), None
                continue
            decoded = decode(data)
            if decoded is not None:
                yield Record(origin, data), decoded
                continue
            try:
                value = read_whole(data)
            except (msgspec.MsgspecError, RecursionError):  # orjson says why, or reads integers beyond 64 bits
                records = read_line(data, origin, orjson.loads, ENTRIES)
            else:
                records = records_of(value, data, origin, orjson.loads, ENTRIES)
                if type(value) is dict and records[0].message is value:  # a message: its dead letter needs no exact re-read
                    records[0].exact = True
            for record in records:
                yield record, None


def block_decoder(mapping: Mapping, target: Target, fields: FastPath | None, event_of: EventOf) -> BlockDecoder | None:
    """The decoder for this mapping given its fast path, or None when it has none (a field from
    a nested path, a fallback or a constant: no usual case to decode)."""
    return None if fields is None else BlockDecoder(mapping, target, fields, event_of)

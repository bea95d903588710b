"""The mapping: which messages are billable and where each billing field comes from.

Three groups of rules, as in the mapping file (`mapping_file.py` reads it): where each field
comes from (`Fields`), which events bill and under which code (`EventRules`), and what their
properties become (`PropertyRules`).
"""

from __future__ import annotations

import fnmatch
import json
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from segbill.segment import (
    DEFAULT_TIME_PATHS,
    DERIVED_ID,
    Billable,
    Invalid,
    customer_id,
    derived_id,
    event_time,
    exact_float,
    lookup,
    parse_time,
)

MAX_CACHED_NAMES = 10_000  # event names whose code is remembered (names are few; memory stays flat)
MAX_AMOUNT_DIGITS = 64  # an amount written out in full; more is no amount anyone bills
MAX_CACHED_KEYS = 10_000  # property keys whose shaped key is remembered

# How `snake_case` makes a code, as a scope source names it (`Mapping.scope_source`, kept in a
# --state file): another way of making codes needs another name, so that a state that delivered
# under one refuses forgetting under the other. Earlier builds, which dropped letters outside
# A-Z, were kept as `true`.
SNAKE_CASE = "segbill-words-of-every-script"


Path_ = tuple[str, ...]


@dataclass
class Hits:
    """What the selection and property rules met in the input read so far, so that a rule that
    matched nothing (usually a name spelt another way) can be said. Each distinct event name or
    property key is judged once and remembered (bounded), so the cost per record stays flat."""

    rules: set[tuple[str, str]] = field(default_factory=set)  # (rule, glob or key) that matched something
    selected: bool = False  # an event name got past the include/exclude rules
    names: dict[str, str | None] = field(default_factory=dict)  # event name -> why it is left out, or None
    keys: dict[str, str | None] = field(default_factory=dict)  # property key -> its key once shaped, or None: left out
    amount: bool = False  # a message had the configured amount


@dataclass(frozen=True)
class FieldSource:
    """A field's origin: the first present value among dotted paths, or a constant."""

    paths: tuple[Path_, ...] = ()
    constant: Any = None

    def read(self, message: dict[str, Any]) -> tuple[Any, str]:
        """(value, the path it came from); (None, all the paths) when none is present."""
        if self.constant is not None:
            return self.constant, "the configured constant"
        for path in self.paths:
            value = message.get(path[0]) if len(path) == 1 else lookup(message, path)  # the usual case, fast
            if value is not None and value != "":
                return value, ".".join(path)
        return None, " or ".join(".".join(path) for path in self.paths)

    def canonical(self) -> str:
        return f"Source(paths={self.paths!r}, constant={self.constant!r})"


def _single_key(source: FieldSource) -> str | None:
    """The key of a field read from one top-level key (the usual case), else None."""
    if source.constant is None and len(source.paths) == 1 and len(source.paths[0]) == 1:
        return source.paths[0][0]
    return None


def _paths(*names: str) -> FieldSource:
    return FieldSource(tuple(tuple(name.split(".")) for name in names))


DEFAULT_ID = _paths("messageId")


@dataclass(frozen=True)
class Fields:
    """Where each part of a billing event comes from (the platform names them: `Target.fields`)."""

    id: FieldSource = DEFAULT_ID
    customer: FieldSource = field(default_factory=lambda: _paths("userId"))
    event: FieldSource = field(default_factory=lambda: _paths("event"))
    time: FieldSource = field(default_factory=lambda: FieldSource(DEFAULT_TIME_PATHS))
    amount: FieldSource | None = None  # only where the platform takes an amount (`Target.amount_field`)


@dataclass(frozen=True)
class EventRules:
    """Which messages bill, and under which code."""

    billable_types: dict[str, str] = field(default_factory=dict)  # a message type -> its event name
    include: tuple[str, ...] = ()  # globs on the event name
    exclude: tuple[str, ...] = ()
    rename: dict[str, str] = field(default_factory=dict)  # event name -> code
    snake_case: bool = False  # names not renamed become snake_case codes


@dataclass(frozen=True)
class PropertyRules:
    """What an event's properties become, on the flattened keys."""

    include: tuple[str, ...] = ()  # globs
    exclude: tuple[str, ...] = ()
    rename: dict[str, str] = field(default_factory=dict)
    constants: dict[str, Any] = field(default_factory=dict)  # added to every event
    separator: str = "."  # joins nested property keys: "model_name" is reachable from a Lago custom expression

    @property
    def active(self) -> bool:
        """Whether any rule changes the properties (the usual mapping keeps them as they are)."""
        return bool(self.include or self.exclude or self.rename or self.constants)


@dataclass(frozen=True)
class Mapping:
    """Field sources, event rules and property rules; `renamed` and `hits` record what the rules
    met in the input read so far (to say a rule that matched nothing)."""

    fields: Fields = field(default_factory=Fields)
    events: EventRules = field(default_factory=EventRules)
    properties: PropertyRules = field(default_factory=PropertyRules)
    notes: tuple[str, ...] = ()  # what the user should hear about this mapping (said at start and in the summary)
    renamed: set[str] = field(default_factory=set, compare=False, repr=False)  # `rename` keys that matched an event
    hits: Hits = field(default_factory=Hits, compare=False, repr=False)
    # Read for every event: plain attributes, not properties.
    separator: str = field(init=False, compare=False, repr=False)
    shapes_properties: bool = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "separator", self.properties.separator)
        object.__setattr__(self, "shapes_properties", self.properties.active)

    def canonical(self) -> str:
        """The mapping as the conversion digest names it (`Options.conversion`), written out
        field by field in the form segbill 0.1 gave (its dataclass repr), so that a state file
        keeps matching its checkpoints and dead letters whatever these classes look like."""
        fields, events, properties = self.fields, self.events, self.properties
        parts = {
            "id": fields.id.canonical(),
            "customer": fields.customer.canonical(),
            "event": fields.event.canonical(),
            "time": fields.time.canonical(),
            "amount": "None" if fields.amount is None else fields.amount.canonical(),
            "billable_types": repr(events.billable_types),
            "include": repr(events.include),
            "exclude": repr(events.exclude),
            "rename": repr(events.rename),
            "snake_case": repr(events.snake_case),
            "property_include": repr(properties.include),
            "property_exclude": repr(properties.exclude),
            "property_rename": repr(properties.rename),
            "property_constants": repr(properties.constants),
            "separator": repr(properties.separator),
            "notes": repr(self.notes),
        }
        return "Mapping(" + ", ".join(f"{name}={value}" for name, value in parts.items()) + ")"

    def key_source(self) -> str:
        """What the idempotency keys are made from, in a fixed form a `--state` file keeps: the
        id's paths (or constant), and what a message without one gets (an id derived from its
        content, under the default id field alone; else none: it is dead-lettered). Nothing else
        of the mapping changes a key: a run that makes keys another way would send every event
        the state delivered again, under a new key, billed twice."""
        source = self.fields.id
        made = _origin(source)
        made["missing"] = DERIVED_ID if source == DEFAULT_ID else "invalid"
        return json.dumps(made, sort_keys=True)

    def scope_source(self) -> str:
        """What decides where an event is billed on the platform, in a fixed form a `--state`
        file keeps: the customer's paths (or constant: Lago's subscription, Hyperline's
        customer) and how an event gets its code (the event name's paths, billable types,
        renames, snake_case). A reconcile that maps them otherwise looks for the events
        elsewhere than the send put them: forgetting what it calls missing would bill them twice."""
        fields, events = self.fields, self.events
        made = {
            "customer": _origin(fields.customer),
            "event": _origin(fields.event),
            "billable_types": events.billable_types,
            "rename": events.rename,
            "snake_case": SNAKE_CASE if events.snake_case else False,
        }
        return json.dumps(made, sort_keys=True)

    def select(self, message: dict[str, Any]) -> str | None:
        """The Segment event name a message bills as, or None: not a billable type. Raises
        `Skipped` for an event the include/exclude rules leave out."""
        kind = message.get("type")
        if kind == "track":
            value, where = self.fields.event.read(message)
            if not isinstance(value, str) or not value.strip():
                raise Invalid("missing_event", f'The track message has no event name ("{where}").')
            name = value
        elif isinstance(kind, str) and kind in self.events.billable_types:
            self.hits.rules.add(("billable_types", kind))
            name = self.events.billable_types[kind]
        else:
            return None
        self._included(name)
        if name in self.events.rename:
            self.renamed.add(name)
        return name

    def met(self, hits: Hits, renamed: set[str]) -> None:
        """Add what this mapping met in another process (`--jobs`) to what it met here."""
        self.hits.rules.update(hits.rules)
        self.hits.selected = self.hits.selected or hits.selected
        self.hits.amount = self.hits.amount or hits.amount
        self.renamed.update(renamed)

    def unused_renames(self) -> list[str]:
        """`rename` rules that matched no event so far: usually a name spelt another way."""
        return [name for name in self.events.rename if name not in self.renamed]

    def amount_unread(self) -> str | None:
        """The configured amount's paths, when no message read so far had it: a path spelt
        another way sends every event without its amount."""
        amount = self.fields.amount
        if amount is None or amount.constant is not None or self.hits.amount:
            return None
        return " or ".join(".".join(path) for path in amount.paths)

    def unmatched(self) -> list[tuple[str, str]]:
        """(rule, glob or key) of the include/exclude/property rules that matched nothing so far:
        rule is `include`, `exclude`, `billable_types` (a message type), `properties.include`,
        `properties.exclude` or `properties.rename`."""
        events, properties = self.events, self.properties
        rules = [("include", glob) for glob in events.include] + [("exclude", glob) for glob in events.exclude]
        rules += [("billable_types", kind) for kind in events.billable_types]
        if properties.active:
            rules += [("properties.include", glob) for glob in properties.include]
            rules += [("properties.exclude", glob) for glob in properties.exclude]
            rules += [("properties.rename", key) for key in properties.rename]
        return [rule for rule in dict.fromkeys(rules) if rule not in self.hits.rules]

    def _included(self, name: str) -> None:
        """Raise `Skipped` for an event name the include/exclude rules leave out."""
        names = self.hits.names
        reason = names[name] if name in names else self._judge(name)
        if reason is not None:
            raise Skipped(reason)

    def _judge(self, name: str) -> str | None:
        """Why the include/exclude rules leave out a name not met before (or None), noting which globs it matched."""
        included = [glob for glob in self.events.include if fnmatch.fnmatchcase(name, glob)]
        excluded = [glob for glob in self.events.exclude if fnmatch.fnmatchcase(name, glob)]
        self.hits.rules.update([("include", glob) for glob in included] + [("exclude", glob) for glob in excluded])
        reason = "not_included" if self.events.include and not included else "excluded" if excluded else None
        if reason is None:
            self.hits.selected = True
        if len(self.hits.names) < MAX_CACHED_NAMES:
            self.hits.names[name] = reason
        return reason

    def billable(self, message: dict[str, Any], name: str) -> Billable:
        """A selected message -> the fields a billing event is made of, or `Invalid` saying why not."""
        value, where = self.fields.customer.read(message)
        customer = customer_id(value, where)
        millis = self._time(message)
        properties = message.get("properties")
        if properties is None:
            properties = {}
        elif not isinstance(properties, dict):
            raise Invalid("bad_properties", 'The message\'s "properties" is not an object.')
        return Billable(self._id(message), customer, self._code(name), millis, properties)

    def _code(self, name: str) -> str:
        """The event's code on the platform: renamed, snake_cased, or the Segment name as is."""
        return self.events.rename.get(name) or (snake_case(name) if self.events.snake_case else name)

    def _id(self, message: dict[str, Any]) -> str:
        """The idempotency key; with none present, one derived from the whole message, unless
        the mapping names where the id is: then its absence (a path spelt another way) would
        give every event a new id, billed again by a rerun, so the message is invalid."""
        given, where = self.fields.id.read(message)
        if isinstance(given, str):
            return given
        if isinstance(given, int) and not isinstance(given, bool):
            return str(given)
        if self.fields.id != DEFAULT_ID:
            raise Invalid("missing_id", f'The message has no id (a string or an integer) at "{where}", the configured id.')
        return derived_id(message)

    def _time(self, message: dict[str, Any]) -> int:
        time = self.fields.time
        if time.constant is not None:
            return parse_time(time.constant, date_alone=True)  # type: ignore[return-value]  # checked when loaded
        return event_time(message, time.paths)

    def fast_billable(self) -> Callable[[dict[str, Any]], Billable | None] | None:
        """`select` and `billable` for the usual track message in a few dict lookups, or None when
        this mapping has no usual case (a field from a nested path, a fallback or a constant).

        The function returns None for anything unusual (another type, a missing or odd field, an
        unreadable time): the caller then takes the general path, which gives
        the same answer or says what is wrong. It raises `Skipped` as `select` does."""
        sources = self.fields
        id_key, customer_key, event_key = [_single_key(source) for source in (sources.id, sources.customer, sources.event)]
        time_paths = sources.time.paths
        if id_key is None or customer_key is None or event_key is None:
            return None
        if sources.time.constant is not None or not time_paths or len(time_paths[0]) != 1:
            return None
        time_key = time_paths[0][0]
        codes: dict[str, str] = {}  # event name -> its code
        left_out: dict[str, str] = {}  # event name -> why the include/exclude rules leave it out

        def code_of(name: str) -> str:
            try:
                self._included(name)
            except Skipped as skipped:
                if len(left_out) < MAX_CACHED_NAMES:
                    left_out[name] = skipped.reason
                raise
            if name in self.events.rename:
                self.renamed.add(name)
            code = self._code(name)
            if len(codes) < MAX_CACHED_NAMES:
                codes[name] = code
            return code

        def fields(message: dict[str, Any]) -> Billable | None:
            if message.get("type") != "track":
                return None
            name = message.get(event_key)
            if type(name) is not str:
                return None
            code = codes.get(name)
            if code is None:
                reason = left_out.get(name)
                if reason is not None:
                    raise Skipped(reason)  # a new one each time: a raised exception keeps its traceback
                if not name.strip():
                    return None
                code = code_of(name)
            customer = message.get(customer_key)
            ident = message.get(id_key)
            when = message.get(time_key)
            if type(customer) is not str or not customer or type(ident) is not str or not ident:
                return None
            millis = parse_time(when)
            if millis is None:
                return None
            properties = message.get("properties")
            if type(properties) is not dict:
                if properties is not None:
                    return None
                properties = {}
            return Billable(ident, customer, code, millis, properties)

        return fields

    def shape(self, flat: dict[str, Any], protected: str | None = None) -> dict[str, Any]:
        """Property include/exclude/rename/constants, on the flattened (dotted) keys. `protected`
        (Hyperline's record id) is kept as it is and never written over; two properties that would
        become one key (a rename onto a key the event has, a constant over a property) make the
        message invalid rather than one silently winning."""
        shaped: dict[str, Any] = {protected: flat[protected]} if protected in flat else {}
        keys = self.hits.keys
        for key, value in flat.items():
            if key == protected:
                continue
            new_key = keys[key] if key in keys else self._shaped_key(key)
            if new_key is None:
                continue
            if new_key in shaped:
                raise Invalid("property_conflict", self._conflict(flat, protected, key, new_key))
            shaped[new_key] = value
        constants = self.properties.constants
        for key in constants:
            if key in shaped:
                raise Invalid("property_conflict", self._conflict(flat, protected, None, key))
        shaped.update(constants)
        return shaped

    def _conflict(self, flat: dict[str, Any], protected: str | None, key: str | None, new_key: str) -> str:
        """Why the message is invalid, naming both keys: `key`, or None for the constant `new_key`,
        and the property shaped to `new_key` before it."""
        earlier = next(other for other in flat if (other if other == protected else self._shaped_key(other)) == new_key)
        if key is None:
            return f'Property "{earlier}" and the constant "{new_key}" would both be "{new_key}"; exclude or rename the property.'
        return f'Properties "{earlier}" and "{key}" would both be "{new_key}" once renamed; exclude or rename one.'

    def _shaped_key(self, key: str) -> str | None:
        """A property key not met before -> its key once shaped, or None: left out; noting which rules it matched."""
        properties = self.properties
        included = [glob for glob in properties.include if fnmatch.fnmatchcase(key, glob)]
        excluded = [glob for glob in properties.exclude if fnmatch.fnmatchcase(key, glob)]
        rules = [("properties.include", glob) for glob in included] + [("properties.exclude", glob) for glob in excluded]
        new_key: str | None = None
        if not excluded and (included or not properties.include):
            new_key = properties.rename.get(key, key)
            if key in properties.rename:
                rules.append(("properties.rename", key))
        self.hits.rules.update(rules)
        if len(self.hits.keys) < MAX_CACHED_KEYS:
            self.hits.keys[key] = new_key
        return new_key

    def amount_of(self, message: dict[str, Any]) -> str | None:
        """The amount (Lago's precise_total_amount_cents): a decimal string, exact."""
        amount_field = self.fields.amount
        if amount_field is None:
            return None
        value, where = amount_field.read(message)
        if value is None:
            return None
        self.hits.amount = True
        if isinstance(value, float):
            value = repr(exact_float(value, "bad_amount", f'The amount at "{where}"'))
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise Invalid("bad_amount", f'The amount at "{where}" is not a number.')
        try:
            amount = Decimal(str(value))
        except InvalidOperation:
            raise Invalid("bad_amount", f'The amount at "{where}" ({str(value)[:40]!r}) is not a number.') from None
        if not amount.is_finite():
            raise Invalid("bad_amount", f'The amount at "{where}" is not a finite number.')
        text = format(amount, "f")  # plain decimal digits: never "1E+3" or "1E-7"
        if len(text) > MAX_AMOUNT_DIGITS:  # "1e100000" would be a 100,001-digit amount
            raise Invalid(
                "bad_amount", f'The amount at "{where}" ({str(value)[:40]!r}) has more than {MAX_AMOUNT_DIGITS} digits.'
            )
        return text


def _origin(source: FieldSource) -> dict[str, Any]:
    """A field's paths (or constant), as a state file keeps them."""
    if source.constant is not None:
        return {"value": source.constant}
    return {"paths": [".".join(path) for path in source.paths]}


def described_scope(scope_source: str, names: tuple[str, str]) -> str:
    """A scope source (`Mapping.scope_source`) in words, with the platform's `names` for
    (scope, kind); one this version cannot read, as it is."""
    try:
        made = json.loads(scope_source)
        parts = [f"{names[0]} from {_from(made['customer'])}", f"{names[1]} from {_from(made['event'])}"]
        parts += [f"{kind} messages as {name!r}" for kind, name in made["billable_types"].items()]
        parts += [f"{name!r} renamed {code!r}" for name, code in made["rename"].items()]
        if made["snake_case"] is True:
            parts.append("snake_case codes of an earlier segbill (letters outside A-Z dropped)")
        elif made["snake_case"]:
            parts.append("snake_case codes")
    except (ValueError, TypeError, KeyError, AttributeError):
        return scope_source
    return ", ".join(parts)


def _from(origin: dict[str, Any]) -> str:
    return " or ".join(origin["paths"]) if "paths" in origin else f"the constant {origin['value']!r}"


def described(key_source: str) -> str:
    """A key source (`Mapping.key_source`) in words; one this version cannot read, as it is."""
    try:
        made = json.loads(key_source)
        what = " or ".join(made["paths"]) if "paths" in made else f"the constant {made['value']!r}"
    except (ValueError, TypeError, KeyError):
        return key_source
    return f"{what} (else an id derived from the message)" if made.get("missing") == DERIVED_ID else what


class Skipped(Exception):
    """A message the mapping leaves out on purpose: `reason` is its key in the summary."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_WORDS = re.compile(r"A+(?=Aa)|A?a+0*|A+0*|0+|u+0*")
"""The words of a name, read on its shape (`_shape`): "HTTPRequest" -> HTTP, Request; "v2" one word."""


def snake_case(name: str) -> str:
    """ "API Call" -> api_call, "Order Completed" -> order_completed, "pageView" -> page_view, "v2 Upload" -> v2_upload;
    in any script: "Über Ride" -> über_ride, "注文 完了" -> 注文_完了."""
    words = (name[word.start() : word.end()].lower() for word in _WORDS.finditer(_shape(name)))
    return "_".join(words) or name


def _shape_of(char: str) -> str:
    """A character's part in a word: "A" upper (or title) case, "a" lower case, "u" a letter of a
    script without case (注), "0" a digit, " " none (a space, punctuation, "_")."""
    if char.isupper() or char.istitle():
        return "A"
    if char.islower():
        return "a"
    if char.isalpha():
        return "u"
    return "0" if char.isdecimal() else " "


_ASCII_SHAPES = str.maketrans({chr(code): _shape_of(chr(code)) for code in range(128)})


def _shape(name: str) -> str:
    """The name, one shape (`_shape_of`) per character; a combining mark (the accent of a
    decomposed "é", a Devanagari vowel sign) is part of the letter before it."""
    if name.isascii():
        return name.translate(_ASCII_SHAPES)
    shapes: list[str] = []
    for char in name:
        mark = unicodedata.category(char).startswith("M")
        shapes.append((shapes[-1] if shapes else " ") if mark else _shape_of(char))
    return "".join(shapes)

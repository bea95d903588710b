"""The mapping: which messages are billable and where each billing field comes from.

Built from defaults (Segment's usual fields), a TOML file (`--config`) and flags, in that order
of precedence, and checked whole before anything is read: a mistake names its key.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from segbill.segment import (
    DEFAULT_TIME_PATHS,
    Billable,
    InexactNumber,
    Invalid,
    customer_id,
    derived_id,
    event_time,
    lookup,
    parse_time,
)
from segbill.targets import exact

# The platform's field -> the Billable slot it fills.
FIELDS = {
    "lago": {"transaction_id": "id", "external_subscription_id": "customer", "code": "event", "timestamp": "time"},
    "hyperline": {"record_id": "id", "customer_id": "customer", "event_type": "event", "timestamp": "time"},
}
AMOUNT_FIELD = {"lago": "precise_total_amount_cents"}
MAX_CACHED_NAMES = 10_000  # event names whose code is remembered (names are few; memory stays flat)
MAX_CACHED_KEYS = 10_000  # property keys whose shaped key is remembered
EVENT_KEYS = {"billable_types", "include", "exclude", "rename", "other"}
PROPERTY_KEYS = {"include", "exclude", "rename", "constants", "separator"}


class ConfigError(Exception):
    """A mistake in the mapping file or flags, naming the key."""


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


@dataclass(frozen=True)
class Source:
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


def _single_key(source: Source) -> str | None:
    """The key of a field read from one top-level key (the usual case), else None."""
    if source.constant is None and len(source.paths) == 1 and len(source.paths[0]) == 1:
        return source.paths[0][0]
    return None


def _paths(*names: str) -> Source:
    return Source(tuple(tuple(name.split(".")) for name in names))


@dataclass(frozen=True)
class Mapping:
    id: Source = field(default_factory=lambda: _paths("messageId"))
    customer: Source = field(default_factory=lambda: _paths("userId"))
    event: Source = field(default_factory=lambda: _paths("event"))
    time: Source = field(default_factory=lambda: Source(DEFAULT_TIME_PATHS))
    amount: Source | None = None
    billable_types: dict[str, str] = field(default_factory=dict)  # a message type -> its event name
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    rename: dict[str, str] = field(default_factory=dict)
    snake_case: bool = False
    property_include: tuple[str, ...] = ()
    property_exclude: tuple[str, ...] = ()
    property_rename: dict[str, str] = field(default_factory=dict)
    property_constants: dict[str, Any] = field(default_factory=dict)
    separator: str = "."  # joins nested property keys: "model_name" is reachable from a Lago custom expression
    notes: tuple[str, ...] = ()  # what the user should hear about this mapping (said at start and in the summary)
    renamed: set[str] = field(default_factory=set, compare=False, repr=False)  # `rename` keys that matched an event
    hits: Hits = field(default_factory=Hits, compare=False, repr=False)

    @property
    def shapes_properties(self) -> bool:
        return bool(self.property_include or self.property_exclude or self.property_rename or self.property_constants)

    def select(self, message: dict[str, Any]) -> str | None:
        """The Segment event name a message bills as, or None: not a billable type. Raises
        `Skipped` for an event the include/exclude rules leave out."""
        kind = message.get("type")
        if kind == "track":
            value, where = self.event.read(message)
            if not isinstance(value, str) or not value.strip():
                raise Invalid("missing_event", f'The track message has no event name ("{where}").')
            name = value
        elif isinstance(kind, str) and kind in self.billable_types:
            name = self.billable_types[kind]
        else:
            return None
        self._included(name)
        if name in self.rename:
            self.renamed.add(name)
        return name

    def unused_renames(self) -> list[str]:
        """`rename` rules that matched no event so far: usually a name spelt another way."""
        return [name for name in self.rename if name not in self.renamed]

    def unmatched(self) -> list[tuple[str, str]]:
        """(rule, glob or key) of the include/exclude/property rules that matched nothing so far:
        rule is `include`, `exclude`, `properties.include`, `properties.exclude` or `properties.rename`."""
        rules = [("include", glob) for glob in self.include] + [("exclude", glob) for glob in self.exclude]
        if self.shapes_properties:
            rules += [("properties.include", glob) for glob in self.property_include]
            rules += [("properties.exclude", glob) for glob in self.property_exclude]
            rules += [("properties.rename", key) for key in self.property_rename]
        return [rule for rule in dict.fromkeys(rules) if rule not in self.hits.rules]

    def _included(self, name: str) -> None:
        """Raise `Skipped` for an event name the include/exclude rules leave out."""
        names = self.hits.names
        reason = names[name] if name in names else self._judge(name)
        if reason is not None:
            raise Skipped(reason)

    def _judge(self, name: str) -> str | None:
        """Why the include/exclude rules leave out a name not met before (or None), noting which globs it matched."""
        included = [glob for glob in self.include if fnmatch.fnmatchcase(name, glob)]
        excluded = [glob for glob in self.exclude if fnmatch.fnmatchcase(name, glob)]
        self.hits.rules.update([("include", glob) for glob in included] + [("exclude", glob) for glob in excluded])
        reason = "not_included" if self.include and not included else "excluded" if excluded else None
        if reason is None:
            self.hits.selected = True
        if len(self.hits.names) < MAX_CACHED_NAMES:
            self.hits.names[name] = reason
        return reason

    def billable(self, message: dict[str, Any], name: str) -> Billable:
        """A selected message -> the fields a billing event is made of, or `Invalid` saying why not."""
        value, where = self.customer.read(message)
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
        return self.rename.get(name) or (snake_case(name) if self.snake_case else name)

    def _id(self, message: dict[str, Any]) -> str:
        """The idempotency key; with none present, one derived from the whole message."""
        given, _ = self.id.read(message)
        if isinstance(given, str):
            return given
        if isinstance(given, int) and not isinstance(given, bool):
            return str(given)
        return derived_id(message)

    def _time(self, message: dict[str, Any]) -> int:
        if self.time.constant is not None:
            return parse_time(self.time.constant)  # type: ignore[return-value]  # checked when loaded
        return event_time(message, self.time.paths)

    def fast_billable(self) -> Callable[[dict[str, Any]], Billable | None] | None:
        """`select` and `billable` for the usual track message in a few dict lookups, or None when
        this mapping has no usual case (a field from a nested path, a fallback or a constant).

        The function returns None for anything unusual (another type, a missing or odd field, an
        unreadable time): the caller then takes the general path, which gives
        the same answer or says what is wrong. It raises `Skipped` as `select` does."""
        id_key, customer_key, event_key = [_single_key(source) for source in (self.id, self.customer, self.event)]
        time_paths = self.time.paths
        if id_key is None or customer_key is None or event_key is None:
            return None
        if self.time.constant is not None or not time_paths or len(time_paths[0]) != 1:
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
            if name in self.rename:
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
        """Property include/exclude/rename/constants, on the flattened (dotted) keys."""
        shaped: dict[str, Any] = {}
        keys = self.hits.keys
        for key, value in flat.items():
            if key == protected:
                shaped[key] = value
                continue
            new_key = keys[key] if key in keys else self._shaped_key(key)
            if new_key is not None:
                shaped[new_key] = value
        shaped.update(self.property_constants)
        return shaped

    def _shaped_key(self, key: str) -> str | None:
        """A property key not met before -> its key once shaped, or None: left out; noting which rules it matched."""
        included = [glob for glob in self.property_include if fnmatch.fnmatchcase(key, glob)]
        excluded = [glob for glob in self.property_exclude if fnmatch.fnmatchcase(key, glob)]
        rules = [("properties.include", glob) for glob in included] + [("properties.exclude", glob) for glob in excluded]
        new_key: str | None = None
        if not excluded and (included or not self.property_include):
            new_key = self.property_rename.get(key, key)
            if key in self.property_rename:
                rules.append(("properties.rename", key))
        self.hits.rules.update(rules)
        if len(self.hits.keys) < MAX_CACHED_KEYS:
            self.hits.keys[key] = new_key
        return new_key

    def amount_of(self, message: dict[str, Any]) -> str | None:
        """Lago's precise_total_amount_cents: a decimal string, exact."""
        if self.amount is None:
            return None
        value, where = self.amount.read(message)
        if value is None:
            return None
        if isinstance(value, float):
            if abs(value) >= 2**63:
                raise InexactNumber
            value = repr(value)
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise Invalid("bad_amount", f'The amount at "{where}" is not a number.')
        try:
            amount = Decimal(str(value))
        except InvalidOperation:
            raise Invalid("bad_amount", f'The amount at "{where}" ({str(value)[:40]!r}) is not a number.') from None
        if not amount.is_finite():
            raise Invalid("bad_amount", f'The amount at "{where}" is not a finite number.')
        return str(amount)


class Skipped(Exception):
    """A message the mapping leaves out on purpose: `reason` is its key in the summary."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_WORDS = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+\d*|[A-Z]+\d*|\d+")


def snake_case(name: str) -> str:
    """ "API Call" -> api_call, "Order Completed" -> order_completed, "pageView" -> page_view, "v2 Upload" -> v2_upload."""
    return "_".join(word.lower() for word in _WORDS.findall(name)) or name


# --- loading ------------------------------------------------------------------------------------


def load(
    target: str,
    config: Path | None = None,
    *,
    customer_from: str | None = None,
    events: list[str] | None = None,
    exclude_events: list[str] | None = None,
) -> Mapping:
    """Defaults, then the file's table for `target`, then the flags. Raises ConfigError."""
    mapping = Mapping()
    if config is not None:
        mapping = _from_file(config, target)
    if customer_from is not None:
        mapping = replace(mapping, customer=Source((_path(customer_from, "--customer-from"),)))
    if events:
        mapping = replace(mapping, include=tuple(_glob(p, "--event") for p in events))
    if exclude_events:
        mapping = replace(mapping, exclude=tuple(_glob(p, "--exclude-event") for p in exclude_events))
    return mapping


def _from_file(config: Path, target: str) -> Mapping:
    try:
        data = tomllib.loads(config.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"{config}: cannot be read ({error.strerror}).") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{config}: not valid TOML ({error}).") from None
    unknown = set(data) - set(FIELDS)
    if unknown:
        raise ConfigError(f"{config}: unknown table {sorted(unknown)[0]!r}; the tables are [lago] and [hyperline].")
    mappings = {name: _table(config, name, data[name]) for name in data}  # check every table
    if target not in mappings:
        tables = " and ".join(f"[{name}]" for name in mappings) or "no table"
        return Mapping(notes=(f"{config} has no [{target}] table (it has {tables}): {target} gets the default mapping.",))
    return mappings[target]


def _table(config: Path, target: str, table: Any) -> Mapping:
    where = f"{config}: {target}"
    _expect(table, dict, where, "a table")
    fields = FIELDS[target]
    allowed = set(fields) | {"events", "properties"}
    if target in AMOUNT_FIELD:
        allowed.add(AMOUNT_FIELD[target])
    _no_unknown(table, allowed, where)
    mapping = Mapping()
    changes: dict[str, Any] = {}
    for name, slot in fields.items():
        if name in table:
            changes[slot] = _source(table[name], f"{where}.{name}", time=slot == "time")
            if slot == "id" and changes[slot].constant is not None:
                raise ConfigError(
                    f"{where}.{name}: the idempotency key cannot be a constant: every event after the first would be a duplicate."
                )
    amount = AMOUNT_FIELD.get(target)
    if amount and amount in table:
        changes["amount"] = _source(table[amount], f"{where}.{amount}", time=False)
    events = table.get("events", {})
    _expect(events, dict, f"{where}.events", "a table")
    _no_unknown(events, EVENT_KEYS, f"{where}.events")
    if "billable_types" in events:
        changes["billable_types"] = _strings(events["billable_types"], f"{where}.events.billable_types")
        if "track" in changes["billable_types"]:
            raise ConfigError(
                f'{where}.events.billable_types: track is always billable; list the other types (page = "page_viewed").'
            )
    for key in ("include", "exclude"):
        if key in events:
            changes[key] = _globs(events[key], f"{where}.events.{key}")
    if "rename" in events:
        changes["rename"] = _strings(events["rename"], f"{where}.events.rename")
    if "other" in events:
        if events["other"] not in ("keep", "snake_case"):
            raise ConfigError(f'{where}.events.other: must be "keep" or "snake_case", not {events["other"]!r}.')
        changes["snake_case"] = events["other"] == "snake_case"
    properties = table.get("properties", {})
    _expect(properties, dict, f"{where}.properties", "a table")
    _no_unknown(properties, PROPERTY_KEYS, f"{where}.properties")
    for key in ("include", "exclude"):
        if key in properties:
            changes[f"property_{key}"] = _globs(properties[key], f"{where}.properties.{key}")
    if "rename" in properties:
        changes["property_rename"] = _strings(properties["rename"], f"{where}.properties.rename")
    if "constants" in properties:
        constants = properties["constants"]
        _expect(constants, dict, f"{where}.properties.constants", "a table")
        for key, value in constants.items():
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise ConfigError(f"{where}.properties.constants.{key}: must be a string or a number.")
        changes["property_constants"] = {key: exact(value) for key, value in constants.items()}
    if "separator" in properties:
        separator = properties["separator"]
        if not isinstance(separator, str) or not separator:
            raise ConfigError(f'{where}.properties.separator: must be a non-empty string such as "_", not {separator!r}.')
        changes["separator"] = separator
    return replace(mapping, **changes)


def _source(value: Any, where: str, *, time: bool) -> Source:
    if isinstance(value, str):
        return Source((_path(value, where),))
    if isinstance(value, list) and value:
        return Source(tuple(_path(item, f"{where}[{index}]") for index, item in enumerate(value)))
    if isinstance(value, dict) and set(value) == {"value"}:
        constant = value["value"]
        if isinstance(constant, bool) or not isinstance(constant, (str, int)):
            raise ConfigError(f"{where}.value: must be a string or an integer.")
        if time and parse_time(constant) is None:
            raise ConfigError(f"{where}.value: {constant!r} is not an ISO 8601 time.")
        return Source(constant=str(constant) if not time else constant)
    raise ConfigError(f'{where}: must be a dotted path, a list of paths to try in order, or {{ value = "..." }}.')


def _path(value: Any, where: str) -> Path_:
    if not isinstance(value, str) or not value or not all(value.split(".")):
        raise ConfigError(f"{where}: {value!r} is not a dotted path such as userId or context.groupId.")
    return tuple(value.split("."))


def _glob(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f'{where}: {value!r} is not a glob such as "API *".')
    if value.count("[") != value.count("]"):
        raise ConfigError(f"{where}: {value!r} is not a valid glob (an unclosed [ ]).")
    return value


def _globs(value: Any, where: str) -> tuple[str, ...]:
    _expect(value, list, where, "a list of globs")
    return tuple(_glob(item, f"{where}[{index}]") for index, item in enumerate(value))


def _strings(value: Any, where: str) -> dict[str, str]:
    _expect(value, dict, where, "a table of names")
    for key, item in value.items():
        if not isinstance(item, str) or not item:
            raise ConfigError(f"{where}.{key}: must be a non-empty string.")
    return dict(value)


def _expect(value: Any, kind: type, where: str, what: str) -> None:
    if not isinstance(value, kind):
        raise ConfigError(f"{where}: must be {what}, not {type(value).__name__}.")


def _no_unknown(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(allowed))}.")

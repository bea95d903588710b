"""The mapping file (`--config`, TOML) and the flags that override it -> a `Mapping`.

Built from defaults (Segment's usual fields), the file's table for the platform and the flags,
in that order of precedence, and checked whole before anything is read: a mistake names its key.
The field names of each table are its platform's (`Target.fields`, `Target.amount_field`).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

from segbill.mapping import EventRules, Fields, FieldSource, Mapping, Path_, PropertyRules
from segbill.segment import parse_time
from segbill.targets import PLATFORMS, Target, exact, get_target

EVENT_KEYS = {"billable_types", "include", "exclude", "rename", "other"}
PROPERTY_KEYS = {"include", "exclude", "rename", "constants", "separator"}


class ConfigError(Exception):
    """A mistake in the mapping file or flags, naming the key."""


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
        customer = FieldSource((_path(customer_from, "--customer-from"),))
        mapping = replace(mapping, fields=replace(mapping.fields, customer=customer))
    if events:
        include = tuple(_glob(p, "--event") for p in events)
        mapping = replace(mapping, events=replace(mapping.events, include=include))
    if exclude_events:
        exclude = tuple(_glob(p, "--exclude-event") for p in exclude_events)
        mapping = replace(mapping, events=replace(mapping.events, exclude=exclude))
    return mapping


def _from_file(config: Path, target: str) -> Mapping:
    try:
        data = tomllib.loads(config.read_text(encoding="utf-8-sig"))  # a BOM (Windows editors) is no TOML error
    except OSError as error:
        raise ConfigError(f"{config}: cannot be read ({error.strerror}).") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{config}: not valid TOML ({error}).") from None
    unknown = set(data) - set(PLATFORMS)
    if unknown:
        *others, last = [f"[{name}]" for name in PLATFORMS]
        tables = f"{', '.join(others)} and {last}" if others else last
        raise ConfigError(f"{config}: unknown table {sorted(unknown)[0]!r}; the tables are {tables}.")
    mappings = {name: _table(config, get_target(name), data[name]) for name in data}  # check every table
    if target not in mappings:
        tables = " and ".join(f"[{name}]" for name in mappings) or "no table"
        return Mapping(notes=(f"{config} has no [{target}] table (it has {tables}): {target} gets the default mapping.",))
    return mappings[target]


def _table(config: Path, target: Target, table: Any) -> Mapping:
    where = f"{config}: {target.name}"
    _expect(table, dict, where, "a table")
    allowed = set(target.fields) | {"events", "properties"}
    if target.amount_field is not None:
        allowed.add(target.amount_field)
    _no_unknown(table, allowed, where)
    return Mapping(  # checked in this order: fields, events, properties
        fields=_fields(table, target, where),
        events=_event_rules(table.get("events", {}), f"{where}.events"),
        properties=_property_rules(table.get("properties", {}), f"{where}.properties", target),
    )


def _fields(table: dict[str, Any], target: Target, where: str) -> Fields:
    changes: dict[str, FieldSource] = {}
    for name, part in target.fields.items():
        if name in table:
            changes[part] = _source(table[name], f"{where}.{name}", time=part == "time")
            if part == "id" and changes[part].constant is not None:
                raise ConfigError(
                    f"{where}.{name}: the idempotency key cannot be a constant: every event after the first would be a duplicate."
                )
    amount = target.amount_field
    if amount is not None and amount in table:
        changes["amount"] = _source(table[amount], f"{where}.{amount}", time=False)
    return replace(Fields(), **changes)


def _event_rules(events: Any, where: str) -> EventRules:
    _expect(events, dict, where, "a table")
    _no_unknown(events, EVENT_KEYS, where)
    changes: dict[str, Any] = {}
    if "billable_types" in events:
        changes["billable_types"] = _strings(events["billable_types"], f"{where}.billable_types")
        if "track" in changes["billable_types"]:
            raise ConfigError(f'{where}.billable_types: track is always billable; list the other types (page = "page_viewed").')
    changes.update(_matching(events, where))
    if "other" in events:
        if events["other"] not in ("keep", "snake_case"):
            raise ConfigError(f'{where}.other: must be "keep" or "snake_case", not {events["other"]!r}.')
        changes["snake_case"] = events["other"] == "snake_case"
    return EventRules(**changes)


def _property_rules(properties: Any, where: str, target: Target) -> PropertyRules:
    _expect(properties, dict, where, "a table")
    _no_unknown(properties, PROPERTY_KEYS, where)
    changes = _matching(properties, where)
    for key, new_key in changes.get("rename", {}).items():
        _not_protected(new_key, target, f"{where}.rename.{key}")
    if "constants" in properties:
        constants = properties["constants"]
        _expect(constants, dict, f"{where}.constants", "a table")
        for key, value in constants.items():
            _not_protected(key, target, f"{where}.constants.{key}")
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise ConfigError(f"{where}.constants.{key}: must be a string or a number.")
            if isinstance(value, float) and not math.isfinite(value):  # JSON has no nan or inf: sent as null
                raise ConfigError(f"{where}.constants.{key}: must be a finite number, not {value}.")
        changes["constants"] = {key: exact(value) for key, value in constants.items()}
    if "separator" in properties:
        separator = properties["separator"]
        if not isinstance(separator, str) or not separator:
            raise ConfigError(f'{where}.separator: must be a non-empty string such as "_", not {separator!r}.')
        changes["separator"] = separator
    return PropertyRules(**changes)


def _not_protected(key: str, target: Target, where: str) -> None:
    """A property rule never writes the key the platform keeps beside the properties (Hyperline's record id)."""
    if key == target.protected_key:
        raise ConfigError(
            f'{where}: "{key}" would overwrite {target.properties_key}.{key}, {target.label}\'s idempotency key: '
            "every event after the first would be a duplicate; use another name."
        )


def _matching(table: dict[str, Any], where: str) -> dict[str, Any]:
    """The keys event and property rules share: include and exclude (globs), rename (names)."""
    changes: dict[str, Any] = {key: _globs(table[key], f"{where}.{key}") for key in ("include", "exclude") if key in table}
    if "rename" in table:
        changes["rename"] = _strings(table["rename"], f"{where}.rename")
    return changes


def _source(value: Any, where: str, *, time: bool) -> FieldSource:
    if isinstance(value, str):
        return FieldSource((_path(value, where),))
    if isinstance(value, list) and value:
        return FieldSource(tuple(_path(item, f"{where}[{index}]") for index, item in enumerate(value)))
    if isinstance(value, dict) and set(value) == {"value"}:
        constant = value["value"]
        if isinstance(constant, bool) or not isinstance(constant, (str, int)):
            raise ConfigError(f"{where}.value: must be a string or an integer.")
        if time and parse_time(constant, date_alone=True) is None:
            raise ConfigError(f"{where}.value: {constant!r} is not an ISO 8601 time.")
        return FieldSource(constant=str(constant) if not time else constant)
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

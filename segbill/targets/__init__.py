"""Billing platforms. Each module turns a `Billable` into that platform's event format.

A new platform is one new module exposing a `Target` and one line in `TARGETS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from segbill.segment import Billable, Invalid, check_exact, dumps


@dataclass(frozen=True)
class Target:
    name: str
    label: str
    convert: Callable[[Billable], dict[str, Any]]


def flatten(properties: dict[str, Any], *, keep_scalar_lists: bool) -> dict[str, Any]:
    """Nested objects -> dotted keys; nulls dropped; lists kept only where the platform takes them.

    Lists of scalars stay lists when `keep_scalar_lists` (booleans then stay booleans too);
    otherwise booleans become "true"/"false" and lists become their JSON text.
    """
    flat: dict[str, Any] = {}
    _flatten_into(flat, "", properties, keep_scalar_lists)
    return flat


def _flatten_into(flat: dict[str, Any], prefix: str, values: dict[str, Any], keep: bool) -> None:
    for name, value in values.items():
        key = prefix + name
        kind = type(value)
        if kind is dict:
            _flatten_into(flat, key + ".", value, keep)
            continue
        if value is None:
            continue
        if kind is float:
            value = check_exact(value)
        elif kind is bool:
            if not keep:
                value = "true" if value else "false"
        elif kind is list:
            value = value if keep and _scalars(value) else _json_text(value)
        if key in flat:
            raise Invalid(
                "property_conflict",
                f"Two properties become \"{key}\" once nested objects are flattened; rename one.",
            )
        flat[key] = value


def _scalars(values: list[Any]) -> bool:
    for value in values:
        kind = type(value)
        if kind is float:
            check_exact(value)
        elif kind not in (str, int, bool):
            return False
    return True


def _json_text(value: Any) -> str:
    _check_nested(value)
    return dumps(value).decode()


def _check_nested(value: Any) -> None:
    if type(value) is float:
        check_exact(value)
    elif type(value) is list:
        for item in value:
            _check_nested(item)
    elif type(value) is dict:
        for item in value.values():
            _check_nested(item)


def get_target(name: str) -> Target:
    if name == "lago":
        from segbill.targets import lago

        return lago.TARGET
    if name == "hyperline":
        from segbill.targets import hyperline

        return hyperline.TARGET
    raise KeyError(name)


TARGET_NAMES = ("lago", "hyperline")

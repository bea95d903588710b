"""The platforms' documented event rules, stated here so every converted event can be checked.

Lago (its EventInputObject schema): transaction_id, external_subscription_id and code are
required strings; timestamp is Unix seconds (integer, or a numeric string with a fraction);
properties map to strings, integers or numbers; nothing else is read. Hyperline: customer_id and
event_type are non-empty strings, timestamp ISO 8601 UTC, record an object with an id whose
values are strings, numbers, booleans or arrays of those.
"""

from __future__ import annotations

import re
from typing import Any

LAGO_KEYS = {"transaction_id", "external_subscription_id", "code", "timestamp", "properties", "precise_total_amount_cents"}
LAGO_TIMESTAMP = re.compile(r"\d+\.\d{3}")
HYPERLINE_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def assert_lago_event(event: dict[str, Any]) -> None:
    assert set(event) <= LAGO_KEYS, set(event) - LAGO_KEYS
    for key in ("transaction_id", "external_subscription_id", "code"):
        assert isinstance(event[key], str) and event[key], key
    assert isinstance(event["timestamp"], str) and LAGO_TIMESTAMP.fullmatch(event["timestamp"])
    assert isinstance(event["properties"], dict)
    for key, value in event["properties"].items():
        assert isinstance(key, str)
        assert isinstance(value, str) or _number(value), (key, value)


def assert_hyperline_event(event: dict[str, Any]) -> None:
    assert set(event) == {"customer_id", "event_type", "timestamp", "record"}
    assert isinstance(event["customer_id"], str) and event["customer_id"]
    assert isinstance(event["event_type"], str) and event["event_type"]
    assert HYPERLINE_TIMESTAMP.fullmatch(event["timestamp"])
    record = event["record"]
    assert isinstance(record, dict) and isinstance(record["id"], str) and record["id"]
    for key, value in record.items():
        scalar = isinstance(value, (str, bool)) or _number(value)
        array = isinstance(value, list) and all(isinstance(v, (str, bool)) or _number(v) for v in value)
        assert scalar or array, (key, value)


ASSERT_SCHEMA = {"lago": assert_lago_event, "hyperline": assert_hyperline_event}

"""Lago: `POST /api/v1/events/batch`, Unix-seconds timestamps, flat scalar properties."""

from __future__ import annotations

from typing import Any

import orjson

from segbill.segment import Billable, unix_seconds
from segbill.targets import Answer, Target, flatten

DUPLICATE = {"transaction_id": ["value_already_exist"]}


def convert(billable: Billable, separator: str) -> dict[str, Any]:
    """Lago ignores unknown and camelCase keys, reads ISO times as errors, and milliseconds as
    seconds: so snake_case keys, and the time as a seconds string with a millisecond fraction."""
    return {
        "transaction_id": billable.id,
        "external_subscription_id": billable.customer,
        "code": billable.event,
        "timestamp": unix_seconds(billable.millis),
        "properties": flatten(billable.properties, keep_scalar_lists=False, separator=separator),
    }


def body(events: list[bytes]) -> bytes:
    return b'{"events":[' + b",".join(events) + b"]}"


def read_answer(status: int, content: bytes, keys: list[str]) -> Answer | None:
    """200 stores all. A 422 stores nothing: its `error_details` are keyed by position, and a
    duplicate (`value_already_exist`) means the event is already there, not that it failed."""
    size = len(keys)
    if 200 <= status < 300:
        return Answer(delivered=list(range(size)))
    if status != 422:
        return None
    details = _details(content)
    if details is None or not all(key.isdigit() and int(key) < size for key in details):
        return Answer(narrow=True)  # a batch-level 422 such as too_many_events
    answer = Answer()
    for position in range(size):
        error = details.get(str(position))
        if error is None:
            answer.resend.append(position)
        elif error == DUPLICATE:
            answer.already.append(position)
        else:
            answer.rejected[position] = f"Rejected by Lago: {orjson.dumps(error).decode()}."
    return answer


def _details(content: bytes) -> dict[str, Any] | None:
    try:
        details = orjson.loads(content).get("error_details")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return details if isinstance(details, dict) else None


TARGET = Target(
    name="lago",
    label="Lago",
    convert=convert,
    key=lambda event: event["transaction_id"],
    batch_path="/api/v1/events/batch",
    max_batch=100,
    default_batch=100,
    default_url="https://api.getlago.com",
    url_env="LAGO_API_URL",
    key_env="LAGO_API_KEY",
    body=body,
    read_answer=read_answer,
    properties_key="properties",
    shifted_repeat="on Lago's ClickHouse store it would be billed twice",
)

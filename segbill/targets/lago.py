"""Lago: `POST /api/v1/events/batch`, Unix-seconds timestamps, flat scalar properties."""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

import orjson

from segbill.segment import Billable, unix_seconds
from segbill.targets import Answer, RateHeaders, Reader, Reading, Target, flatten

if TYPE_CHECKING:
    from segbill.targets.api import ReadOptions

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
    duplicate (`value_already_exist`) means the event is already there, not that it failed.
    Details that name no position (`too_many_events`, or none at all: `{}`) refuse the batch as
    a whole: resending every event would get the same answer for ever."""
    size = len(keys)
    if 200 <= status < 300:
        return Answer(delivered=list(range(size)))
    if status != 422:
        return None
    details = _details(content)
    if not details or not all(key.isdigit() and int(key) < size for key in details):
        return Answer(narrow=True)
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


def event_millis(event: dict[str, Any]) -> int:
    """The time of a converted Lago event: its Unix-seconds string, exactly, in ms."""
    return int(Decimal(event["timestamp"]) * 1000)


def reader(options: ReadOptions) -> Reader:
    from segbill.targets.lago_api import LagoReader

    return LagoReader(options, TARGET.rates)


READING = Reading(
    reader=reader,
    scope="external_subscription_id",
    kind="code",
    names=("subscription", "code"),
    time=event_millis,
    # Lago answers 200 to events it will never bill; check reads why (see check.py).
    verdicts={
        "billable": "billed in the current or a coming invoice",
        "unknown_code": "no billable metric has this code: stored, never billed",
        "unknown_subscription": "no subscription in any status has this external id: stored, never billed",
        "before_start": "before the subscription's started_at (or it has not started): never billed",
        "after_termination": "after the subscription's terminated_at, which Lago shows to the second: never billed",
        "invoiced": "in a period of a finalized invoice, which is never reopened: never billed",
        "draft": "in a draft invoice's period: billed once the draft is refreshed or finalized",
    },
    billed=("billable", "draft"),
    decided_by="metrics, subscriptions, invoices",
)

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
    fields={"transaction_id": "id", "external_subscription_id": "customer", "code": "event", "timestamp": "time"},
    shifted_repeat="on Lago's ClickHouse store it would be billed twice",
    amount_field="precise_total_amount_cents",
    # A 429 carries the X-RateLimit-* trio, its reset in seconds; Retry-After is not documented,
    # but a proxy in front of a self-hosted Lago may send it.
    rates=RateHeaders(wait=("retry-after", "x-ratelimit-reset")),
    reading=READING,
)

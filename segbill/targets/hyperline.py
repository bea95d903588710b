"""Hyperline: `POST /v1/events/batch`, ISO 8601 UTC times, `record` keyed by the message id."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from segbill.segment import Billable, Invalid, iso_millis, parse_time
from segbill.targets import Answer, RateHeaders, Reader, Reading, Target, flatten

if TYPE_CHECKING:
    from segbill.targets.api import ReadOptions

# A property called `id` would overwrite the record id, Hyperline's idempotency key: it is
# renamed as if it were `id` nested under `properties` ("properties.id" with the default separator).
RENAMED_ID = "properties{separator}id"
NO_REASON = "Rejected by Hyperline, which gives no reason; check that the customer exists."


def convert(billable: Billable, separator: str) -> dict[str, Any]:
    """Hyperline takes scalars, booleans and lists of scalars in `record`, never nested objects."""
    properties = flatten(billable.properties, keep_scalar_lists=True, separator=separator)
    if "id" in properties:
        renamed = RENAMED_ID.format(separator=separator)
        if renamed in properties:
            raise Invalid("property_conflict", f'Properties "id" and "{renamed}" would both be "{renamed}"; rename one.')
        properties[renamed] = properties.pop("id")
    return {
        "customer_id": billable.customer,
        "event_type": billable.event,
        "timestamp": iso_millis(billable.millis),
        "record": {"id": billable.id, **properties},
    }


def body(events: list[bytes]) -> bytes:
    return b"[" + b",".join(events) + b"]"


def read_answer(status: int, content: bytes, keys: list[str]) -> Answer | None:
    """A 2xx can still refuse some events: `events_failed` echoes them, without a reason."""
    if not 200 <= status < 300:
        return None
    failed = _failed_ids(content)
    answer = Answer()
    for position, key in enumerate(keys):
        if key in failed:
            answer.rejected[position] = NO_REASON
        else:
            answer.delivered.append(position)
    return answer


def _failed_ids(content: bytes) -> set[str]:
    try:
        failed = orjson.loads(content).get("events_failed") or []
    except (orjson.JSONDecodeError, AttributeError):
        return set()
    ids = set()
    for echo in failed:
        record = echo.get("record") if isinstance(echo, dict) else None
        if isinstance(record, dict) and isinstance(record.get("id"), str):
            ids.add(record["id"])
    return ids


def reader(options: ReadOptions) -> Reader:
    from segbill.targets.hyperline_api import HyperlineReader

    return HyperlineReader(options, TARGET.rates)


READING = Reading(
    reader=reader,
    scope="customer_id",
    kind="event_type",
    names=("customer", "event_type"),
    time=lambda event: parse_time(event["timestamp"]) or 0,
    # Hyperline's API shows customers, and no metric, subscription or invoice to check an event against.
    verdicts={
        "billable": "billed in the current or a coming invoice",
        "unknown_customer": "Hyperline has no such customer (GET /v1/customers/{id} answers 404): a send is refused",
    },
)

TARGET = Target(
    name="hyperline",
    label="Hyperline",
    convert=convert,
    key=lambda event: event["record"]["id"],
    batch_path="/v1/events/batch",
    max_batch=5000,
    default_batch=1000,
    default_url="https://ingest.hyperline.co",
    url_env="HYPERLINE_API_URL",
    key_env="HYPERLINE_API_KEY",
    body=body,
    read_answer=read_answer,
    properties_key="record",
    fields={"record_id": "id", "customer_id": "customer", "event_type": "event", "timestamp": "time"},
    protected_key="id",
    shifted_repeat="Hyperline would move the stored event to the other time",
    # Every answer carries the X-RateLimit-* trio, its reset a date; a 429 adds Retry-After in seconds.
    rates=RateHeaders(wait=("retry-after", "x-ratelimit-reset")),
    reading=READING,
)

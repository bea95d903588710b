"""Hyperline: `POST /v1/events/batch`, ISO 8601 UTC times, `record` keyed by the message id."""

from __future__ import annotations

from typing import Any

from segbill.segment import Billable, Invalid, iso_millis
from segbill.targets import Target, flatten

# A property called `id` would overwrite the record id, Hyperline's idempotency key.
RENAMED_ID = "properties.id"


def convert(billable: Billable) -> dict[str, Any]:
    """Hyperline takes scalars, booleans and lists of scalars in `record`, never nested objects."""
    properties = flatten(billable.properties, keep_scalar_lists=True)
    if "id" in properties:
        if RENAMED_ID in properties:
            raise Invalid("property_conflict", f"Properties \"id\" and \"{RENAMED_ID}\" would both be \"{RENAMED_ID}\"; rename one.")
        properties[RENAMED_ID] = properties.pop("id")
    return {
        "customer_id": billable.customer,
        "event_type": billable.event,
        "timestamp": iso_millis(billable.millis),
        "record": {"id": billable.id, **properties},
    }


TARGET = Target(name="hyperline", label="Hyperline", convert=convert)

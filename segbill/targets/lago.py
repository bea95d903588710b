"""Lago: `POST /api/v1/events/batch`, Unix-seconds timestamps, flat scalar properties."""

from __future__ import annotations

from typing import Any

from segbill.segment import Billable, unix_seconds
from segbill.targets import Target, flatten


def convert(billable: Billable) -> dict[str, Any]:
    """Lago ignores unknown and camelCase keys, reads ISO times as errors, and milliseconds as
    seconds: so snake_case keys, and the time as a seconds string with a millisecond fraction."""
    return {
        "transaction_id": billable.id,
        "external_subscription_id": billable.customer,
        "code": billable.event,
        "timestamp": unix_seconds(billable.millis),
        "properties": flatten(billable.properties, keep_scalar_lists=False),
    }


TARGET = Target(name="lago", label="Lago", convert=convert)

"""A third platform, for tests/test_platforms.py: all a new platform needs is this module (its
`TARGET`) and one line in `segbill.targets.PLATFORMS`. It has no read API, so check and
reconcile refuse it; a dry run, the mapping file and the options work as for any platform."""

from __future__ import annotations

from typing import Any

from segbill.segment import Billable, iso_millis
from segbill.targets import Answer, Target, flatten


def convert(billable: Billable, separator: str) -> dict[str, Any]:
    return {
        "event_id": billable.id,
        "account": billable.customer,
        "name": billable.event,
        "at": iso_millis(billable.millis),
        "data": flatten(billable.properties, keep_scalar_lists=True, separator=separator),
    }


def read_answer(status: int, content: bytes, keys: list[str]) -> Answer | None:
    """A 2xx stores the whole batch; anything else is read as any platform's answer."""
    return Answer(delivered=list(range(len(keys)))) if 200 <= status < 300 else None


TARGET = Target(
    name="toy",
    label="Toy",
    convert=convert,
    key=lambda event: event["event_id"],
    batch_path="/v1/batch",
    max_batch=50,
    default_batch=50,
    default_url="https://toy.invalid",
    url_env="TOY_API_URL",
    key_env="TOY_API_KEY",
    body=lambda events: b"[" + b",".join(events) + b"]",
    read_answer=read_answer,
    properties_key="data",
    fields={"event_id": "id", "account": "customer", "name": "event", "at": "time"},
)

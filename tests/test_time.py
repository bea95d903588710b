"""Every event-time form Segment libraries write, pinned to the exact instant and both outputs."""

from __future__ import annotations

import pytest

from segbill.segment import Invalid, event_time, iso_millis, parse_time, unix_seconds

# 2024-01-01T00:00:00Z is 1704067200 s.
FORMS = [
    ("2024-01-01T00:00:00.123Z", 1704067200123),  # analytics.js
    ("2024-01-01T00:00:00.123000+00:00", 1704067200123),  # analytics-python
    ("2024-01-01T01:00:00.123456+01:00", 1704067200123),  # Go: microseconds and an offset
    ("2023-12-31T19:00:00.5-05:00", 1704067200500),  # negative offset, one fraction digit
    ("2024-01-01T00:00:00.123456789Z", 1704067200123),  # nanoseconds are truncated, never rounded up
    ("2024-01-01T00:00:00.999999Z", 1704067200999),
    ("2024-01-01T00:00:00Z", 1704067200000),  # no fraction
    ("2024-01-01T00:00:00", 1704067200000),  # no zone: UTC
    ("2024-01-01 00:00:00", 1704067200000),  # a space, no zone (warehouse exports)
    ("2024-1-1T0:00:00Z", 1704067200000),  # unpadded date and hour
    ("2015-2-02T00:00:00.000Z", 1422835200000),
    ("2024-01-01T05:30:00+0530", 1704067200000),  # offset without a colon
    ("2024-01-01t00:00:00z", 1704067200000),  # lower-case separators
    (" 2024-01-01T00:00:00Z ", 1704067200000),  # surrounding blanks
    ("2024-02-29T00:00:00Z", 1709164800000),  # leap day
    ("2024-01-01", 1704067200000),  # a date alone is midnight UTC
    ("1970-01-01T00:00:00Z", 0),
    ("9999-12-31T23:59:59.999Z", 253402300799999),
]


@pytest.mark.parametrize(("text", "millis"), FORMS)
def test_time_forms(text: str, millis: int) -> None:
    assert parse_time(text) == millis


@pytest.mark.parametrize(
    "text",
    [
        "2023-02-29T00:00:00Z",  # not a leap year
        "2024-13-01T00:00:00Z",
        "2024-01-32T00:00:00Z",
        "2024-01-01T24:00:00Z",
        "2024-01-01T00:60:00Z",
        "2024-01-01T00:00:00+25:00",
        "yesterday",
        "1704067200",
        "",
        "1969-12-31T23:59:59.999Z",  # no billing event predates the epoch
        "9999-12-31T23:59:59-01:00",  # past year 9999 once the offset is applied
        "0001-01-01T00:00:00+01:00",
    ],
)
def test_unreadable_times(text: str) -> None:
    assert parse_time(text) is None


@pytest.mark.parametrize("value", [1704067200, 1704067200123, 1.5, None, True, ["2024-01-01"]])
def test_numbers_and_other_types_are_not_times(value: object) -> None:
    """Epoch seconds and milliseconds cannot be told apart, and Segment never writes them."""
    assert parse_time(value) is None


@pytest.mark.parametrize(
    ("millis", "lago", "hyperline"),
    [
        (1704067200123, "1704067200.123", "2024-01-01T00:00:00.123Z"),
        (1704067200000, "1704067200.000", "2024-01-01T00:00:00.000Z"),
        (1704067200005, "1704067200.005", "2024-01-01T00:00:00.005Z"),
        (0, "0.000", "1970-01-01T00:00:00.000Z"),
        (1704067200050, "1704067200.050", "2024-01-01T00:00:00.050Z"),
        (253402300799999, "253402300799.999", "9999-12-31T23:59:59.999Z"),  # the last time a platform can take
    ],
)
def test_output_forms(millis: int, lago: str, hyperline: str) -> None:
    assert unix_seconds(millis) == lago
    assert iso_millis(millis) == hyperline


def test_event_time_prefers_timestamp_then_original_then_received() -> None:
    times = {
        "timestamp": "2024-01-01T00:00:00.001Z",
        "originalTimestamp": "2024-01-01T00:00:00.002Z",
        "receivedAt": "2024-01-01T00:00:00.003Z",
    }
    assert event_time(times) == 1704067200001
    del times["timestamp"]
    assert event_time(times) == 1704067200002
    times["originalTimestamp"] = None
    assert event_time(times) == 1704067200003


def test_an_unreadable_timestamp_is_not_silently_replaced_by_a_later_field() -> None:
    with pytest.raises(Invalid, match='"timestamp"') as caught:
        event_time({"timestamp": "soon", "receivedAt": "2024-01-01T00:00:00Z"})
    assert caught.value.kind == "bad_time"


def test_no_time_at_all() -> None:
    with pytest.raises(Invalid, match="no time") as caught:
        event_time({"sentAt": "2024-01-01T00:00:00Z"})
    assert caught.value.kind == "bad_time"

"""Every event-time form Segment libraries write, pinned to the exact instant and both outputs; every
other form refused, and said why."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from segbill.segment import Invalid, event_time, iso_millis, parse_time, unix_seconds

from .conftest import jsonl, track, write

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
    ("2024-01-01 00:00:00.123+00:00", 1704067200123),  # a space, a fraction and an offset
    ("2024-01-01T00:00:00-00:00", 1704067200000),  # RFC 3339's unknown local offset: UTC
    ("2024-02-29T00:00:00Z", 1709164800000),  # leap day
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
        # ISO 8601 forms Segment never writes, which may be read as another instant than meant
        "2024-01-01",  # a date alone: midnight UTC is a guess
        "2024-W01-1T00:00:00Z",  # a week date
        "2024-001T00:00:00Z",  # an ordinal date
        "20240101T000000Z",  # the basic format
        "2024-01-01T000000Z",
        "2024-01-01T00:00:00+01:00:30",  # an offset with seconds
        "2024-01-01T00:00:00+01",  # an offset of hours alone
        "2024-01-01T00:00:00+1:00",
        "2024-01-01T00:00",  # no seconds
        "2024-01-01T00",
        " 2024-01-01T00:00:00Z",  # blanks around
        "2024-01-01T00:00:00Z ",
        "2024-01-01T00:00:00Z\n",
        "2024-01-01T00:00:00 Z",  # a blank before the zone
        "2024-01-01T00:00:00,5Z",  # a comma before the fraction
        "2024-01-01T00:00:00.Z",  # a point and no fraction
        "2024-01-01T00:00:00.+01:00",
        "2024-01-01T00:00:00.１２３Z",  # digits of another script
        "２０２４-01-01T00:00:00Z",
        "2024-01-01T00:00:00UTC",
        "2024-01-01T00:00:00+01:00Z",
    ],
)
def test_unreadable_times(text: str) -> None:
    assert parse_time(text) is None


@pytest.mark.parametrize(("text", "millis"), [("2024-01-01", 1704067200000), ("2024-1-31", 1706659200000), *FORMS])
def test_a_date_alone_is_midnight_utc_where_a_person_gives_it(text: str, millis: int) -> None:
    """--since, --until and a configured constant: a date is what a person means by a day."""
    assert parse_time(text, date_alone=True) == millis


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


REFUSED = [  # an event's time, and what its dead letter says of it
    ("", "is empty"),  # present: never passed over for originalTimestamp
    ("1969-12-31T23:59:59.999Z", "is before the Unix epoch (1970-01-01T00:00:00Z)"),
    ("1960-05-01", "is a date without a time of day"),
    ("2024-01-01", "is a date without a time of day"),
    ("2024-W01-1", "is not an RFC 3339 time such as 2024-01-31T12:00:00.123Z"),
    ("20240101T000000Z", "is not an RFC 3339 time"),
    ("2024-01-01T00:00:00+01:00:30", "is not an RFC 3339 time"),
    (" 2024-01-01T00:00:00Z ", "is not an RFC 3339 time"),
    ("2024-01-01T00:00:00,5Z", "is not an RFC 3339 time"),
    ("9999-12-31T23:59:59-01:00", "is after the year 9999"),
    (1704067200, "is a number, not a time: epoch seconds and milliseconds cannot be told apart"),
    (True, "is a boolean, not a time"),
]


@pytest.mark.parametrize("target", ["lago", "hyperline"])
def test_an_event_time_that_may_be_misread_is_dead_lettered_with_what_is_wrong(segbill, tmp_path: Path, target: str) -> None:
    """Each message has a good originalTimestamp: a present timestamp is the time, or none is."""
    messages = [
        track(messageId=f"m{i}", timestamp=value, originalTimestamp="2024-02-01T00:00:00Z")
        for i, (value, _) in enumerate(REFUSED)
    ]
    path = write(tmp_path / "times.jsonl", jsonl(*messages))
    run = segbill("send", str(path), "--to", target, "--dry-run", "--json")
    assert run.exit_code == 1 and run.events == []
    for (value, why), letter in zip(REFUSED, run.dead_letters, strict=True):
        shown = value if isinstance(value, str) else orjson.dumps(value).decode()
        assert letter["reason"].startswith(f'The message\'s "timestamp" ({shown!r}) {why}'), letter["reason"]
    summary = orjson.loads(run.stderr.splitlines()[-1])
    assert summary["dead_lettered_by_reason"] == {"bad_time": len(REFUSED)}


def test_every_time_form_read_is_billed_at_its_instant(segbill, tmp_path: Path) -> None:
    messages = [track(messageId=f"m{i}", timestamp=text) for i, (text, _) in enumerate(FORMS)]
    path = write(tmp_path / "times.jsonl", jsonl(*messages))
    for target, key, shown in (("lago", "timestamp", unix_seconds), ("hyperline", "timestamp", iso_millis)):
        run = segbill("send", str(path), "--to", target, "--dry-run")
        assert run.exit_code == 0, run.stderr
        assert [event[key] for event in run.events] == [shown(millis) for _, millis in FORMS]


def test_a_null_timestamp_is_absent_and_the_next_time_is_billed(segbill, tmp_path: Path) -> None:
    path = write(
        tmp_path / "times.jsonl", jsonl(track(timestamp=None, originalTimestamp="2024-02-01T00:00:00Z") | {"timestamp": None})
    )
    run = segbill("send", str(path), "--to", "lago", "--dry-run")
    assert run.exit_code == 0 and [event["timestamp"] for event in run.events] == ["1706745600.000"]

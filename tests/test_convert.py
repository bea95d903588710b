"""Golden conversions: a Segment message in, the exact platform event out, for both platforms."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from segbill.deadletter import ENTRIES
from segbill.mapping_file import load
from segbill.pipeline import to_event
from segbill.segment import Billable, Invalid, Origin, Record, derived_id, exact_message, read_line
from segbill.targets import get_target

from .conftest import track
from .schemas import ASSERT_SCHEMA

NESTED = {
    "tokens": 1200,
    "price": 0.25,
    "model": {"name": "gpt", "limits": {"rpm": 60}},
    "streaming": True,
    "cached": False,
    "tags": ["a", "b"],
    "mixed": [1, "x", True],
    "items": [{"sku": "A", "qty": 2}],
    "nested_list": [[1, 2]],
    "nullable": [1, None],
    "empty_list": [],
    "empty_object": {},
    "removed": None,
    "unicode": "héllo 世界 🚀",
    "big": 2**60 + 1,
}


def convert(target: str, message: dict[str, Any], customer: str = "userId") -> dict[str, Any]:
    """Parse a message the way the pipeline does (from its JSON line) and convert it."""
    line = _huge_line(message) if "huge" in message else orjson.dumps(message)
    [record] = read_line(line, Origin("t", 1, 0, len(line)))
    assert record.message is not None
    mapping = load(target, customer_from=customer)
    name = mapping.select(record.message)
    assert name is not None
    return to_event(record, record.message, name, get_target(target), mapping)[1]


def _huge_line(message: dict[str, Any]) -> bytes:
    body = dict(message)
    body.pop("huge")
    text = orjson.dumps(body).decode()
    return (text[:-1] + ',"properties":{"huge":123456789012345678901234567890,"neg":-99999999999999999999}}').encode()


def test_lago_golden() -> None:
    event = convert("lago", track(properties=NESTED))
    assert event == {
        "transaction_id": "msg-1",
        "external_subscription_id": "user-1",
        "code": "API Call",
        "timestamp": "1704067200.123",
        "properties": {
            "tokens": 1200,
            "price": 0.25,
            "model.name": "gpt",
            "model.limits.rpm": 60,
            "streaming": "true",
            "cached": "false",
            "tags": '["a","b"]',
            "mixed": '[1,"x",true]',
            "items": '[{"sku":"A","qty":2}]',
            "nested_list": "[[1,2]]",
            "nullable": "[1,null]",
            "empty_list": "[]",
            "unicode": "héllo 世界 🚀",
            "big": "1152921504606846977",  # beyond 2**53: exact only as text
        },
    }
    ASSERT_SCHEMA["lago"](event)


def test_hyperline_golden() -> None:
    event = convert("hyperline", track(properties=NESTED))
    assert event == {
        "customer_id": "user-1",
        "event_type": "API Call",
        "timestamp": "2024-01-01T00:00:00.123Z",
        "record": {
            "id": "msg-1",
            "tokens": 1200,
            "price": 0.25,
            "model.name": "gpt",
            "model.limits.rpm": 60,
            "streaming": True,
            "cached": False,
            "tags": ["a", "b"],
            "mixed": [1, "x", True],
            "items": '[{"sku":"A","qty":2}]',
            "nested_list": "[[1,2]]",
            "nullable": "[1,null]",
            "empty_list": [],
            "unicode": "héllo 世界 🚀",
            "big": "1152921504606846977",  # beyond 2**53: exact only as text
        },
    }
    ASSERT_SCHEMA["hyperline"](event)


@pytest.mark.parametrize("target", ["lago", "hyperline"])
def test_integers_beyond_64_bits_stay_exact(target: str) -> None:
    """orjson would read these as floats; the exact re-parse keeps every digit."""
    event = convert(target, track(properties=None, huge=True))
    values = event["properties"] if target == "lago" else event["record"]
    assert values["huge"] == "123456789012345678901234567890"
    assert values["neg"] == "-99999999999999999999"


@pytest.mark.parametrize("target", ["lago", "hyperline"])
def test_integers_beyond_2_53_are_sent_as_decimal_strings(target: str) -> None:
    """Lago's ClickHouse pipeline and Hyperline read JSON numbers as float64: past 2**53 a number
    would change; its decimal text does not."""
    properties = {
        "safe": 2**53,
        "negative_safe": -(2**53),
        "over": 2**53 + 1,
        "under": -(2**53) - 1,
        "list": [1, 2**53 + 1, "x"],
        "deep": {"n": 2**63 - 1},
    }
    event = convert(target, track(properties=properties))
    values = event["properties"] if target == "lago" else event["record"]
    assert values["safe"] == 2**53 and values["negative_safe"] == -(2**53)
    assert (values["over"], values["under"], values["deep.n"]) == ("9007199254740993", "-9007199254740993", "9223372036854775807")
    assert values["list"] == ('[1,9007199254740993,"x"]' if target == "lago" else [1, "9007199254740993", "x"])


def test_the_exact_reparse_finds_the_right_message_in_an_envelope() -> None:
    line = b'{"batch":[{"type":"identify"},{"type":"track","event":"e","userId":"u","messageId":"m2","timestamp":"2024-01-01T00:00:00Z","properties":{"n":18446744073709551616}}]}'
    records = read_line(line, Origin("t", 1, 0, len(line)))
    exact = exact_message(records[1])
    assert exact["messageId"] == "m2" and exact["properties"]["n"] == 2**64


def test_hyperline_property_named_id_never_overwrites_the_record_id() -> None:
    event = convert("hyperline", track(properties={"id": "order-9", "amount": 3}))
    assert event["record"] == {"id": "msg-1", "properties.id": "order-9", "amount": 3}


def test_hyperline_renames_a_property_named_id_with_the_configured_separator() -> None:
    """With `separator = "_"` every nested key is joined with "_": so is the renamed id."""
    event = get_target("hyperline").convert(Billable("m", "c", "e", 0, {"id": "order-9", "a": {"b": 1}}), "_")
    assert event["record"] == {"id": "m", "properties_id": "order-9", "a_b": 1}


@pytest.mark.parametrize("target", ["lago", "hyperline"])
def test_a_property_that_collides_once_flattened_is_invalid(target: str) -> None:
    with pytest.raises(Invalid, match=r'"a\.b"') as caught:
        convert(target, track(properties={"a.b": 1, "a": {"b": 2}}))
    assert caught.value.kind == "property_conflict"


@pytest.mark.parametrize(
    ("customer_from", "message", "expected"),
    [
        ("userId", track(userId="u-7"), "u-7"),
        ("userId", track(userId=42), "42"),
        ("userId", track(userId=42.0), "42"),
        ("context.groupId", track(context={"groupId": "acct-1"}), "acct-1"),
        ("properties.subscription_id", track(properties={"subscription_id": 1001}), "1001"),
    ],
)
def test_customer_field(customer_from: str, message: dict[str, Any], expected: str) -> None:
    assert convert("lago", message, customer_from)["external_subscription_id"] == expected
    assert convert("hyperline", message, customer_from)["customer_id"] == expected


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        (track(userId=None), "missing_customer"),
        (track(userId=""), "missing_customer"),
        (track(userId=True), "missing_customer"),
        (track(userId={"id": 1}), "missing_customer"),
        (track(event=None), "missing_event"),
        (track(event=""), "missing_event"),
        (track(event=7), "missing_event"),
        (track(timestamp="soon"), "bad_time"),
        (track(timestamp=None), "bad_time"),
        (track(properties=[1]), "bad_properties"),
    ],
)
def test_invalid_track_messages(message: dict[str, Any], kind: str) -> None:
    with pytest.raises(Invalid) as caught:
        convert("lago", message)
    assert caught.value.kind == kind
    assert caught.value.reason.endswith(".")


def test_anonymous_only_messages_have_no_customer_unless_asked() -> None:
    message = track(userId=None, anonymousId="anon-1")
    with pytest.raises(Invalid):
        convert("lago", message)
    assert convert("lago", message, "anonymousId")["external_subscription_id"] == "anon-1"


def test_missing_message_id_is_derived_from_the_content_deterministically() -> None:
    message = track(messageId=None)
    first = derived_id(message)
    assert first.startswith("segbill-") and len(first) == len("segbill-") + 32
    assert derived_id(dict(reversed(list(message.items())))) == first  # key order does not matter
    assert derived_id(track(messageId=None, timestamp="2024-01-01T00:00:00.124Z")) != first
    empty = track(messageId="")
    assert convert("lago", empty)["transaction_id"] == derived_id(empty)  # "" is no id either
    assert convert("lago", message)["transaction_id"] == first
    assert convert("hyperline", message)["record"]["id"] == first


def test_message_ids_are_kept_as_given() -> None:
    for given in ["ajs-next-1700000000000-abc", "free text with spaces", "f" * 100]:
        assert convert("lago", track(messageId=given))["transaction_id"] == given
    assert convert("lago", track(messageId=12345))["transaction_id"] == "12345"


def test_envelope_context_and_integrations_merge_into_each_item() -> None:
    line = orjson.dumps(
        {
            "batch": [
                track(messageId="a", context={"ip": "1.2.3.4"}),
                track(messageId="b", context={"groupId": "own"}),
                {"type": "identify", "userId": "u"},
            ],
            "context": {"groupId": "shared", "library": {"name": "analytics-node"}},
            "integrations": {"All": True},
            "sentAt": "2024-01-01T00:00:01Z",
        }
    )
    records = read_line(line, Origin("f", 3, 10, 10 + len(line)))
    assert [r.index for r in records] == [0, 1, 2]
    first, second, third = (r.message for r in records)
    assert first["context"] == {"groupId": "shared", "library": {"name": "analytics-node"}, "ip": "1.2.3.4"}
    assert second["context"]["groupId"] == "own"  # the item's own value wins
    assert first["integrations"] == {"All": True} and third["integrations"] == {"All": True}
    assert convert("lago", first, "context.groupId")["external_subscription_id"] == "shared"
    assert all(r.path == "f" and r.line == 3 for r in records)


def test_a_json_array_line_holds_several_messages() -> None:
    line = orjson.dumps([track(messageId="a"), "oops", track(messageId="b")])
    records = read_line(line, Origin("f", 1, 0, len(line)))
    assert [r.message["messageId"] if r.message else r.invalid.kind for r in records] == ["a", "not_object", "b"]
    assert records[1].raw == b'"oops"' and records[1].where() == "f:1 (message 1)"


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        (b"not json", "not_json"),
        (b'{"type":"track",', "not_json"),
        (b'"a string"', "not_object"),
        (b"42", "not_object"),
        (b"null", "not_object"),
        (b"[]", "empty_batch"),
        (b'{"batch":[]}', "empty_batch"),
        (b'{"event":"\xff\xfe"}', "not_utf8"),
        (b'{"a":NaN}', "not_json"),
    ],
)
def test_unreadable_lines(line: bytes, kind: str) -> None:
    [record] = read_line(line, Origin("f", 9, 0, len(line)))
    assert record.message is None and record.invalid is not None
    assert record.invalid.kind == kind
    assert record.raw == line


def test_a_message_with_a_type_field_and_a_batch_property_is_a_message() -> None:
    message = track(batch=[1, 2])
    [record] = read_line(orjson.dumps(message), Origin("f", 1, 0, 0))
    assert record.message == message


def test_dead_letter_lines_are_read_back_as_their_original_record() -> None:
    original = track(messageId="m-9")
    entry = {"segbill_dead_letter": 1, "reason": "x", "record": original, "source": {"path": "a", "line": 4}}
    [record] = read_line(orjson.dumps(entry), Origin("dl.jsonl", 1, 0, 0), wrapper=ENTRIES)
    assert record.message == original and record.first_source == {"path": "a", "line": 4}
    raw_entry = {"segbill_dead_letter": 1, "reason": "x", "raw": orjson.dumps(original).decode()}
    [again] = read_line(orjson.dumps(raw_entry), Origin("dl.jsonl", 2, 0, 0), wrapper=ENTRIES)
    assert again.message == original


def test_record_source() -> None:
    record = Record(Origin("f.jsonl", 3, 0, 1), b"", index=2)
    assert record.source() == {"path": "f.jsonl", "line": 3, "index": 2}

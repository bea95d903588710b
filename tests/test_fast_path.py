"""The fast path (`Mapping.fast_billable`) and the decoder in front of it (`segbill.decode`) must
give exactly the general path's answers.

Each input is run twice through the real CLI, once as is (decoder and fast path) and once with
the fast path switched off (the decoder needs it, so it is off too), and everything a user sees
is compared: the printed events, the dead letters (minus their time), the summary and the exit
code.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from segbill.decode import BlockDecoder, block_decoder
from segbill.mapping import Mapping
from segbill.mapping_file import load
from segbill.segment import Billable, dumps
from segbill.targets import Target, get_target
from segbill.testing.corpus import messages

from .conftest import jsonl, track, write

BIG = 2**63

ODD_MESSAGES: list[Any] = [
    track(),
    track(messageId="m-naive", timestamp="2024-01-01T00:00:00"),  # no zone: UTC
    track(messageId="m-offset", timestamp="2024-01-01T01:00:00+01:00"),
    track(messageId="m-unpadded", timestamp="2024-1-5T3:04:05Z"),  # fromisoformat refuses: general path
    track(messageId="m-nanos", timestamp="2024-01-01T00:00:00.123456789Z"),
    track(messageId="m-empty-time", timestamp="", originalTimestamp="2024-01-02T00:00:00Z"),
    track(messageId="m-number-time", timestamp=1704067200),
    track(messageId="m-bad-time", timestamp="yesterday"),
    track(messageId="m-1969", timestamp="1969-12-31T23:59:59.999Z"),  # 1 ms before the epoch
    track(messageId="m-10000", timestamp="9999-12-31T23:59:59.999+00:00"),
    track(messageId="m-no-time", timestamp=None, receivedAt="2024-01-03T00:00:00Z"),
    track(messageId="m-int-user", userId=42),
    track(messageId="m-big-user", userId=BIG + 5),
    track(messageId="m-empty-user", userId=""),
    track(messageId="m-no-user", userId=None),
    track(messageId=""),
    track(messageId=None, event="No Id"),
    track(messageId=17),
    track(messageId="m-blank-event", event="   "),
    track(messageId="m-number-event", event=5),
    track(messageId="m-no-props", properties=None),
    track(messageId="m-list-props", properties=[1, 2]),
    track(messageId="m-conflict-1", properties={"a.b": 1, "a": {"b": 2}}),
    track(messageId="m-conflict-2", properties={"a": {"b": 2}, "a.b": 1}),
    track(messageId="m-deep", properties={"a": {"b": {"c": [1, {"d": None}]}, "e": None}, "f": True, "g": 1.5}),
    track(messageId="m-big-float", properties={"n": BIG * 4, "small": 1e300 / 1e300}),
    track(messageId="m-big-in-list", properties={"xs": [1, BIG * 2]}),
    track(messageId="m-past-2-53", properties={"n": 2**53 + 1, "m": -(2**53), "xs": [2**60, True], "o": {"p": -(2**62)}}),
    track(messageId="m-conflict-3", properties={"a_b": 1, "a": {"b": 2}}),  # a conflict with the "_" separator
    track(messageId="m-renamed", event="Order Completed"),
    track(messageId="m-excluded", event="Internal Ping"),
    track(messageId="m-rename-conflict", properties={"total_tokens": 1, "tokens": 2}),  # a rename onto a key it has
    track(messageId="m-renamed-prop", properties={"tokens": 2}),
    track(messageId="m-constant-conflict", properties={"source": "web"}),  # a constant over a property
    {"type": "identify", "userId": "u", "messageId": "id-1"},
    {"type": "page", "userId": "u", "messageId": "page-1", "timestamp": "2024-01-01T00:00:00Z", "name": "Home"},
    {"type": 7, "event": "x"},
    {"event": "no type"},
    {"batch": [track(messageId="env-1"), track(messageId="env-2", userId=None)], "context": {"ip": "1"}},
    [track(messageId="arr-1"), 3],
    track(messageId="m-unicode", event="Größe 東京 🚀", userId="usér-ü", properties={"ü": 'naïve \u2028 "q" \\', "😀": "x"}),
    track(messageId="m-floats", properties={"a": 1e18, "b": -2.5e-300, "c": 0.1, "d": -0.0, "e": 9.2e18, "f": [1e-7, 3.0]}),
    track(messageId="m-large-floats", properties={"f": 1e300, "g": -9.3e18, "xs": [1e19, "e+19"], "o": {"p": 2.0**64}}),
    track(messageId="m-float-user", userId=5.0),
    track(messageId="m-list-user", userId=["u"]),
    track(messageId={"a": 1}, event="Dict Id"),
    track(messageId="m-bool-user", userId=True),
    track(messageId="m-huge-context", context={"n": BIG * 1000, "f": 1e300, "deep": [[{"x": None}]]}),
    track(messageId="m-big-scalar", properties={"n": BIG * 8, "m": -BIG - 1, "xs": [-BIG - 1], "o": {"p": BIG * 3}}),
    track(messageId="m-flat", properties={"s": "x", "i": 3, "f": 1.25, "b": False, "n": None}),
    track(messageId="m-props-string", properties="oops"),
    track(messageId="m-type-id", type="Track"),
    track(messageId="m-empty-type", type=""),
    {"type": "identify", "userId": "u", "messageId": "id-1", "segbill_dead_letter": 2},
    {"segbill_dead_letter": 1, "reason": "x", "record": track(messageId="dl-1")},
    track(messageId="m-time-0", timestamp="2024-01-01T00:00:00Z"),
    track(messageId="m-time-1", timestamp="2024-01-01T00:00:00.1Z"),
    track(messageId="m-time-2", timestamp="2024-01-01T00:00:00.123456+00:00"),
    track(messageId="m-time-3", timestamp="2024-01-01T01:02:03.999999-05:30"),
    track(messageId="m-time-4", timestamp="2024-01-01 00:00:00"),
    track(messageId="m-time-5", timestamp="2024-01-01T00:00"),
    track(messageId="m-time-6", timestamp="2024-01-01"),
    track(messageId="m-time-7", timestamp="2024-01-01T00:00:00z"),
    track(messageId="m-time-8", timestamp="2024-01-01T00:00:00+0100"),
    track(messageId="m-time-9", timestamp="2024-01-01T00:00:00,5Z"),
    track(messageId="m-time-10", timestamp=" 2024-01-01T00:00:00Z "),
    track(messageId="m-time-11", timestamp="2024-02-30T00:00:00Z"),
    track(messageId="m-time-12", timestamp="2024-01-01T24:00:00Z"),
    track(messageId="m-time-13", timestamp="20240101T000000Z"),
    track(messageId="m-time-14", timestamp="2024-01-01T00:00:00+01"),
    track(messageId="m-time-15", timestamp="1970-01-01T00:00:00Z"),
    track(messageId="m-time-16", timestamp="2024-01-01T00:00:00.123456789123+02:00"),
    track(messageId="m-time-17", timestamp="2024-W01-1T00:00:00Z"),  # fromisoformat reads these, segbill does not
    track(messageId="m-time-18", timestamp="2024-01-01T00:00:00+01:00:30"),
    track(messageId="m-time-19", timestamp="2024-01-01T00:00:00.Z"),
    track(messageId="m-time-20", timestamp="2024-01-01T00:00:00 +01:00"),
    track(messageId="m-time-21", timestamp="2024-01-01t00:00:00.5-01:00"),
    track(messageId="m-time-22", timestamp="2024-01-01T00:00:00.１Z"),
    track(messageId="m-time-23", timestamp="2024-01-01T00:00:00.123-0100"),
    track(messageId="m-time-24", timestamp="2024-13-01T00:00:00.123Z"),
    track(messageId="m-time-25", timestamp="1969-12-31T23:59:59.999+00:00"),
    track(messageId="m-time-26", timestamp="2024-01-01", originalTimestamp="2024-01-02T00:00:00Z"),
    track(messageId="msg-1"),  # a repeat of the first
    track(messageId="msg-1", timestamp="2024-01-01T00:00:01Z"),  # a repeat with another time
]

CONFIG = """
[lago.events]
billable_types = { page = "page_viewed" }
exclude = ["Internal *", "Never *"]
rename = { "Order Completed" = "order", "Page viewed" = "never_matched" }
other = "snake_case"

[lago.properties]
separator = "_"
exclude = ["a_b", "never_*"]
rename = { tokens = "total_tokens" }
constants = { source = "segment" }
"""


def run_both(segbill, monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[Any, Any]:
    fast = segbill(*args)
    with monkeypatch.context() as patch:
        patch.setattr(Mapping, "fast_billable", lambda self: None)
        general = segbill(*args, dead_letter="dead-general.jsonl")
    return fast, general


RUN_KEYS = {"run_id", "started_at", "ended_at"}


def untimed(stderr: str) -> list[Any]:
    """stderr's lines, with the summary's timings and run id (the only things allowed to differ) left out."""
    lines: list[Any] = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            lines.append({k: v for k, v in orjson.loads(line).items() if "second" not in k and k not in RUN_KEYS})
        elif not line.lstrip().startswith(("elapsed", "run ")):
            lines.append(line)
    return lines


def assert_same(fast: Any, general: Any) -> None:
    assert fast.exit_code == general.exit_code
    assert fast.stdout == general.stdout
    assert untimed(fast.stderr.replace("dead.jsonl", "DEAD")) == untimed(general.stderr.replace("dead-general.jsonl", "DEAD"))
    strip = [{k: v for k, v in letter.items() if k != "at"} for letter in fast.dead_letters]
    assert strip == [{k: v for k, v in letter.items() if k != "at"} for letter in general.dead_letters]


@pytest.mark.parametrize("target", ["lago", "hyperline"])
@pytest.mark.parametrize("options", [(), ("--config", "segbill.toml"), ("--event", "API *", "--exclude-event", "*Ping")])
def test_odd_messages_get_the_general_paths_answers(
    segbill, monkeypatch, tmp_path: Path, target: str, options: tuple[str, ...]
) -> None:
    (tmp_path / "segbill.toml").write_text(CONFIG.replace("lago", target))
    write(tmp_path / "odd.jsonl", b"".join(dumps(message) + b"\n" for message in ODD_MESSAGES))  # integers past 64 bits too
    fast, general = run_both(segbill, monkeypatch, "send", "odd.jsonl", "--to", target, "--dry-run", "--json", *options)
    assert_same(fast, general)
    summary = orjson.loads(fast.stderr.strip().splitlines()[-1])
    assert summary["converted"] >= 8 and summary["dead_lettered"] >= 8 and summary["skipped"] >= 3  # every outcome is exercised
    if "--config" in options:  # the rule hits agree: of each pair, one rule matched, the other did not
        assert [warning.split(" matched")[0] for warning in summary["warnings"]] == [
            'rename "Page viewed"',
            f'[{target}.events] exclude "Never *"',
            f'[{target}.properties] exclude "never_*"',
        ]
        reasons = {letter["reason"] for letter in fast.dead_letters}
        assert (
            'Properties "total_tokens" and "tokens" would both be "total_tokens" once renamed; exclude or rename one.' in reasons
        )
        assert 'Property "source" and the constant "source" would both be "source"; exclude or rename the property.' in reasons


@pytest.mark.parametrize("target", ["lago", "hyperline"])
@pytest.mark.parametrize("browser", [False, True])
def test_generated_exports_get_the_general_paths_answers(
    segbill, monkeypatch, tmp_path: Path, target: str, browser: bool
) -> None:
    generated = list(itertools.islice(messages(3000, seed=11, duplicate_ratio=0.05, browser=browser), 3000))
    write(tmp_path / "export.jsonl", jsonl(*generated))
    fast, general = run_both(segbill, monkeypatch, "send", "export.jsonl", "--to", target, "--dry-run")
    assert_same(fast, general)
    assert len(fast.events) > 1500


def _platform_event(fields: Billable, message: dict[str, Any], target: Target, mapping: Mapping) -> dict[str, Any]:
    return target.convert(fields, mapping.separator)


def _decoder(target: str, **event_rules: Any) -> BlockDecoder:
    mapping = load(target)
    mapping = replace(mapping, events=replace(mapping.events, **event_rules))
    decoder = block_decoder(mapping, get_target(target), mapping.fast_billable(), _platform_event)
    assert decoder is not None
    return decoder


@pytest.mark.parametrize("target", ["lago", "hyperline"])
def test_the_decoder_converts_the_usual_messages_itself(target: str) -> None:
    """The comparisons above prove nothing if every line fell back: most lines of an export
    (all but the odd ones) are the decoder's."""
    decoder = _decoder(target)
    lines = [dumps(message) for message in messages(500, seed=3, browser=True)]
    decoded = [decoder.decode(line) for line in lines]
    tracks = sum(b'"type":"track"' in line for line in lines)
    assert sum(type(answer) is tuple for answer in decoded) > 0.8 * tracks
    assert sum(type(answer) is str for answer in decoded) > 0.8 * (len(lines) - tracks)  # identify, page...: not billed


@pytest.mark.parametrize(
    "line",
    [
        b'{"type":"track","event":"A","userId":"u","messageId":"m","timestamp":"2024-01-01T00:00:00Z","context":{"x":"\xff"}}',
        dumps({"segbill_dead_letter": 1, "record": track()}),
        dumps({"batch": [track()]}),
        dumps([track()]),
        dumps(track(properties={"xs": [1, BIG * 4]})),
        dumps(track(properties={"a": {"b": 1}, "a.b": 2})),
        dumps({"type": "page", "userId": "u", "messageId": "p", "timestamp": "2024-01-01T00:00:00Z"}),
    ],
)
def test_the_decoder_leaves_the_unusual_to_the_general_path(line: bytes) -> None:
    assert _decoder("lago", billable_types={"page": "page_viewed"}).decode(line) is None


def test_the_decoder_converts_large_floats_itself() -> None:
    """msgspec's floats are the numbers written (an integer beyond 64 bits is refused, and falls
    back): a float of 2**63 or more needs no exact re-read, in a list either."""
    decoded = _decoder("lago").decode(dumps(track(properties={"f": 1e300, "xs": [-1e19, 2.0**64]})))
    assert type(decoded) is tuple
    assert decoded[1]["properties"] == {"f": 1e300, "xs": orjson.dumps([-1e19, 2.0**64]).decode()}


def test_a_key_given_twice_counts_once_its_last_value() -> None:
    """As orjson and the general path read it: the last value, at the first one's place."""
    line = dumps(track(properties={"a": 1, "b": 2}))[:-1] + b',"userId":"u2","properties":{"a":1,"b":2,"a":3}}'
    decoded = _decoder("lago").decode(line)
    assert type(decoded) is tuple
    fields, event = decoded
    parsed = orjson.loads(line)
    assert fields.customer == parsed["userId"] == "u2"
    assert list(event["properties"].items()) == list(parsed["properties"].items()) == [("a", 3), ("b", 2)]


def test_a_number_beyond_float64_in_a_key_segbill_does_not_read_is_billed(segbill, tmp_path: Path) -> None:
    """The one difference the decoder keeps (see segbill/decode.py): orjson refuses the whole
    line, msgspec never reads `context`; the same number in a key segbill reads is refused."""
    unread = dumps(track(messageId="unread"))[:-1] + b',"context":{"n":1e400}}'
    read = dumps(track(messageId="read"))[:-1].replace(b'"properties":{}', b'"properties":{"n":1e400}') + b"}"
    write(tmp_path / "in.jsonl", unread + b"\n" + read + b"\n")
    result = segbill("send", "in.jsonl", "--to", "lago", "--dry-run", "--json")
    assert [event["transaction_id"] for event in result.events] == ["unread"]
    assert [letter["reason"][:27] for letter in result.dead_letters] == ["The line is not valid JSON "]


def test_a_left_out_event_does_not_grow_a_traceback_per_message() -> None:
    """Raising one cached exception again and again chains every raise into its traceback."""
    from segbill.mapping import Skipped
    from segbill.mapping_file import load

    fields = load("lago", events=["API *"]).fast_billable()
    assert fields is not None
    depths = []
    for _ in range(50):
        try:
            fields(track(event="Internal Ping"))
        except Skipped as skipped:
            depth, tb = 0, skipped.__traceback__
            while tb is not None:
                depth, tb = depth + 1, tb.tb_next
            depths.append(depth)
    assert len(depths) == 50 and len(set(depths[1:])) == 1 and depths[-1] <= depths[0]  # no growth


AMOUNT_CONFIG = """
[lago]
precise_total_amount_cents = "properties.revenue"

[lago.properties]
exclude = ["products", "usage.*"]
rename = { tokens = "total_tokens" }
constants = { source = "segment" }
"""


@pytest.mark.parametrize(
    "options",
    [("--config", "amount.toml"), ("--since", "2024-01-05T12:00:00Z", "--until", "2024-01-07T00:00:00Z"), ("--shard", "1/3")],
)
def test_generated_exports_with_amounts_rules_bounds_and_shards(
    segbill, monkeypatch, tmp_path: Path, options: tuple[str, ...]
) -> None:
    (tmp_path / "amount.toml").write_text(AMOUNT_CONFIG)
    generated = [*messages(1500, seed=12, browser=True), *messages(1500, seed=13, duplicate_ratio=0.05)]
    write(tmp_path / "export.jsonl", jsonl(*generated))
    fast, general = run_both(segbill, monkeypatch, "send", "export.jsonl", "--to", "lago", "--dry-run", *options)
    assert_same(fast, general)
    assert len(fast.events) > 300
    if "--config" in options:
        assert sum("precise_total_amount_cents" in event for event in fast.events) > 100
        assert all(event["properties"]["source"] == "segment" for event in fast.events)

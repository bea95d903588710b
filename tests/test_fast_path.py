"""The fast path (`Mapping.fast_billable`) must give exactly the general path's answers.

Each input is run twice through the real CLI, once as is and once with the fast path switched
off, and everything a user sees is compared: the printed events, the dead letters (minus their
time), the summary and the exit code.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import orjson
import pytest

from segbill.mapping import Mapping
from segbill.segment import dumps
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
    {"type": "identify", "userId": "u", "messageId": "id-1"},
    {"type": "page", "userId": "u", "messageId": "page-1", "timestamp": "2024-01-01T00:00:00Z", "name": "Home"},
    {"type": 7, "event": "x"},
    {"event": "no type"},
    {"batch": [track(messageId="env-1"), track(messageId="env-2", userId=None)], "context": {"ip": "1"}},
    [track(messageId="arr-1"), 3],
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


@pytest.mark.parametrize("target", ["lago", "hyperline"])
def test_generated_exports_get_the_general_paths_answers(segbill, monkeypatch, tmp_path: Path, target: str) -> None:
    generated = list(itertools.islice(messages(3000, seed=11, duplicate_ratio=0.05), 3000))
    write(tmp_path / "export.jsonl", jsonl(*generated))
    fast, general = run_both(segbill, monkeypatch, "send", "export.jsonl", "--to", target, "--dry-run")
    assert_same(fast, general)
    assert len(fast.events) > 1500


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

"""`segbill inspect`: checked against an independent count of sample_data/, and on the edges."""

from __future__ import annotations

import gzip
import io
import json
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

import segbill.inspection as inspection_module
from segbill.cli import app
from segbill.cli.inspect import inspect_command, render_inspect
from segbill.inspection import Inspection, inspect_sources
from segbill.segment import Origin, read_line
from segbill.sources import expand

from .conftest import SAMPLE_DATA, jsonl, track, write

EVENTS = SAMPLE_DATA / "events.jsonl"


@pytest.fixture(scope="module", autouse=True)
def registered() -> None:
    """`inspect` on the real app, as cli.py registers it (once it does, this adds nothing)."""
    if not any(command.name == "inspect" for command in app.registered_commands):
        app.command("inspect")(inspect_command)


def run(*args: str, input: bytes | None = None) -> Any:
    return CliRunner().invoke(app, ["inspect", *args], input=input, catch_exceptions=False)


def report(*args: str, input: bytes | None = None) -> dict[str, Any]:
    result = run(*args, "--json", input=input)
    assert result.exit_code == 0, result.stderr
    return orjson.loads(result.stdout)


# --- an independent count: stdlib json and datetime, none of segbill's reading code -----------


def _millis(value: Any) -> int | None:
    if not isinstance(value, str):
        return None
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp()) * 1000 + moment.microsecond // 1000


def _records(path: Path) -> Iterator[tuple[int, Any]]:
    """(line, message or the unreadable line's kind) for every record of a sample file."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    for number, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError:
            yield number, "not_json"
            continue
        if isinstance(value, dict) and isinstance(value.get("batch"), list):
            for item in value["batch"]:
                yield number, {"context": value.get("context"), **item}
        elif isinstance(value, list):
            for item in value:
                yield number, item
        else:
            yield number, value if isinstance(value, dict) else "not_object"


def independent_count(root: Path) -> dict[str, Any]:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".gz", ".jsonl"))
    types: Counter[str] = Counter()
    unreadable: Counter[str] = Counter()
    events: Counter[str] = Counter()
    times: dict[str, list[int]] = {}
    ids: dict[str, set[int | None]] = {}
    copies: Counter[str] = Counter()
    fields = {"userId": set(), "anonymousId": set(), "context.groupId": set()}
    counts: Counter[str] = Counter()
    records = 0
    for path in files:
        for _line, message in _records(path):
            records += 1
            if isinstance(message, str):
                unreadable[message] += 1
                continue
            types[message["type"]] += 1
            if message["type"] != "track":
                continue
            millis = _millis(message.get("timestamp"))
            events[message["event"]] += 1
            times.setdefault(message["event"], []).append(millis)
            if "messageId" in message:
                copies[message["messageId"]] += 1
                ids.setdefault(message["messageId"], set()).add(millis)
            values = {
                "userId": message.get("userId"),
                "anonymousId": message.get("anonymousId"),
                "context.groupId": (message.get("context") or {}).get("groupId"),
            }
            for name, value in values.items():
                if value not in (None, ""):
                    counts[name] += 1
                    fields[name].add(str(value))
    repeated = [mid for mid, n in copies.items() if n > 1]
    return {
        "files": len(files),
        "records": records,
        "types": dict(types),
        "unreadable": dict(unreadable),
        "events": dict(events),
        "first": {name: min(t) for name, t in times.items()},
        "last": {name: max(t) for name, t in times.items()},
        "track": sum(events.values()),
        "repeated": len(repeated),
        "repeated_time_differs": sum(len(ids[mid]) > 1 for mid in repeated),
        "extra_copies": sum(copies[mid] - 1 for mid in repeated),
        "fields": {name: (counts[name], len(values)) for name, values in fields.items()},
    }


# --- sample_data -----------------------------------------------------------------------------


def test_the_sample_data_agrees_with_an_independent_count() -> None:
    expected = independent_count(SAMPLE_DATA)
    result = report(str(SAMPLE_DATA))
    assert result["files"] == expected["files"] == 10
    assert result["records"] == expected["records"]
    assert result["types"] == expected["types"]
    assert {kind: entry["count"] for kind, entry in result["unreadable"].items()} == expected["unreadable"]
    track = result["track"]
    assert track["messages"] == expected["track"]
    assert track["without_user_id"] == expected["track"] - expected["fields"]["userId"][0] > 1
    events = {event["name"]: event for event in result["events"]}
    assert {name: event["messages"] for name, event in events.items()} == expected["events"]
    for name, event in events.items():
        assert _millis(event["first_time"]) == expected["first"][name]
        assert _millis(event["last_time"]) == expected["last"][name]
    assert _millis(track["first_time"]) == min(expected["first"].values())
    assert _millis(track["last_time"]) == max(expected["last"].values())
    fields = {field["path"]: field for field in result["customer_fields"]}
    for name, (messages, distinct) in expected["fields"].items():
        assert (fields[name]["messages"], fields[name]["distinct"]) == (messages, distinct)
    ids = result["message_ids"]
    assert (ids["repeated"], ids["repeated_time_differs"], ids["extra_copies"]) == (
        expected["repeated"],
        expected["repeated_time_differs"],
        expected["extra_copies"],
    )
    assert ids["repeated_time_differs"] > 1 and not ids["cap_hit"]


def test_events_jsonl_as_its_readme_describes_it() -> None:
    result = report(str(EVENTS))
    # 38 messages and 4 unreadable lines (13, 17, 18, 20); line 15 is blank.
    assert result["records"] == 42
    assert sum(result["types"].values()) == 38 and result["types"]["track"] == 32
    assert result["unreadable"] == {
        "not_json": {"count": 2, "examples": [f"{EVENTS}:13", f"{EVENTS}:20"]},
        "not_object": {"count": 2, "examples": [f"{EVENTS}:17", f"{EVENTS}:18"]},
    }
    track = result["track"]
    assert (track["without_user_id"], track["without_message_id"], track["without_time"]) == (1, 1, 0)
    ids = result["message_ids"]
    assert (ids["repeated"], ids["repeated_time_differs"], ids["extra_copies"]) == (1, 1, 1)
    [example] = ids["examples"]
    assert example["where"] == f"{EVENTS}:26"
    assert _millis(example["time"]) - _millis(example["first_time"]) == 3
    lines = EVENTS.read_bytes().splitlines()
    assert example["message_id"] == json.loads(lines[1])["messageId"] == json.loads(lines[25])["messageId"]
    # trace_id 2**53 + 1 and 2**64 + 5 (line 27, which orjson reads as a float) are integers.
    trace = [key for event in result["events"] for key in event["properties"] if key["key"] == "trace_id"]
    assert trace and all(key["types"] == {"integer": key["present"]} for key in trace)


def test_the_plain_report_on_sample_data() -> None:
    result = run(str(SAMPLE_DATA))
    assert result.exit_code == 0
    assert "not reading 2 file(s)" in result.stderr  # README.md and the script, as send says
    out = result.stdout
    assert out.startswith("segbill inspect: ")
    assert "\nMessage types\n" in out and "\nEvents\n" in out and "\nProperties of API Call (" in out
    assert f"  not_json        2  {EVENTS}:13, {EVENTS}:20\n" in out
    assert "  usage.input_tokens " in out  # nested objects as dotted keys
    assert "null 5" in out or "null 4" in out  # a key holding null in some messages, with its share
    assert "billed twice" in out and f"{EVENTS}:26: " in out
    assert "\x1b[" not in out and "┃" not in out  # not a terminal: no colours, no boxes


def test_the_terminal_report_is_rich_tables_and_names_are_not_markup() -> None:
    result = _inspect_bytes(jsonl(track(event="[bold]Odd[/bold]", properties={"n": 1})))
    out = io.StringIO()
    render_inspect(result, out, terminal=True)
    assert "┃" in out.getvalue() and "[bold]Odd[/bold]" in out.getvalue()


# --- inputs ----------------------------------------------------------------------------------


def test_an_export_without_track_messages() -> None:
    data = jsonl({"type": "identify", "userId": "u1"}, {"type": "page", "name": "Home"}, {"event": "no type"})
    result = run("-", input=data)
    assert result.exit_code == 0
    assert "No track messages: nothing here would be billed." in result.stdout
    parsed = report("-", input=data)
    assert parsed["types"] == {"(missing)": 1, "identify": 1, "page": 1}
    assert parsed["track"]["messages"] == 0 and parsed["track"]["first_time"] is None
    assert parsed["events"] == [] and parsed["other_events"] is None
    assert parsed["message_ids"]["repeated"] == 0


def test_an_empty_input_is_a_usage_error_as_for_send(tmp_path: Path) -> None:
    empty = write(tmp_path / "empty.jsonl", b"\n \n")
    for result, name in ((run("-", input=b""), "<stdin>"), (run(str(empty)), str(empty))):
        assert result.exit_code == 2 and "No track messages" in result.stdout
        assert f"no records in {name}: the input is empty" in result.stderr


def test_gzip_by_content_on_stdin_and_in_a_file(tmp_path: Path, inflate: str) -> None:
    plain = report(str(EVENTS))
    packed = write(tmp_path / "events.jsonl", EVENTS.read_bytes(), compress=True)  # gzip named .jsonl
    from_file = report(str(packed))
    from_stdin = report(input=gzip.compress(EVENTS.read_bytes()))
    for result, name in ((from_file, str(packed)), (from_stdin, "<stdin>")):
        text = orjson.dumps(result).decode().replace(name, str(EVENTS))
        assert orjson.loads(text) == plain


def test_a_truncated_gzip_file_is_reported_with_what_was_read_before(tmp_path: Path, inflate: str) -> None:
    packed = gzip.compress(jsonl(*(track(messageId=f"m{i}") for i in range(2000))))
    path = write(tmp_path / "cut.gz", packed[: len(packed) // 2])
    result = report(str(path))
    [(kind, entry)] = result["unreadable"].items()
    assert kind == "bad_gzip" and entry["count"] == 1
    assert 0 < result["track"]["messages"] < 2000 and entry["examples"] == [f"{path}:{result['track']['messages'] + 1}"]


def test_an_empty_gz_file_is_counted_as_bad_gzip(tmp_path: Path) -> None:
    write(tmp_path / "exports" / "a.gz", jsonl(track()), compress=True)
    write(tmp_path / "exports" / "b.gz", b"")
    result = report(str(tmp_path / "exports"))
    assert (result["records"], result["track"]["messages"]) == (2, 1)
    assert result["unreadable"] == {"bad_gzip": {"count": 1, "examples": [f"{tmp_path / 'exports' / 'b.gz'}:1"]}}


def test_the_json_shape() -> None:
    result = report(str(EVENTS))
    assert set(result) == {
        "files",
        "records",
        "interrupted",
        "types",
        "unreadable",
        "track",
        "events",
        "other_events",
        "customer_fields",
        "message_ids",
        "limits",
    }
    assert set(result["track"]) == {
        "messages",
        "first_time",
        "last_time",
        "without_user_id",
        "without_message_id",
        "without_time",
        "without_event",
        "bad_properties",
        "property_conflicts",
    }
    event = result["events"][0]
    assert set(event) == {"name", "messages", "first_time", "last_time", "properties", "untracked_properties"}
    assert [e["messages"] for e in result["events"]] == sorted((e["messages"] for e in result["events"]), reverse=True)
    key = event["properties"][0]
    assert set(key) == {"key", "present", "fraction", "types"} and 0 < key["fraction"] <= 1
    assert set(key["types"]) <= {"string", "integer", "number", "boolean", "array", "object", "null"}
    assert set(result["customer_fields"][0]) == {"path", "messages", "fraction", "unusable", "distinct", "distinct_capped"}
    assert set(result["message_ids"]) == {
        "repeated",
        "repeated_time_differs",
        "extra_copies",
        "ids_tracked",
        "cap_hit",
        "examples",
    }
    assert set(result["message_ids"]["examples"][0]) == {"message_id", "where", "first_time", "time"}
    assert result["limits"] == {
        "events": 1000,
        "properties_per_event": 200,
        "distinct_values": 100_000,
        "message_ids": 5_000_000,
        "id_fields": 20,
    }


# --- what it reports -------------------------------------------------------------------------


def _inspect_bytes(data: bytes, **options: Any) -> dict[str, Any]:
    inspection = Inspection(**options)
    for number, line in enumerate(data.splitlines(), 1):
        for record in read_line(line, Origin("x.jsonl", number, 0, 0)):
            inspection.add(record)
    return inspection.result()


def test_track_checks_and_property_types() -> None:
    result = _inspect_bytes(
        jsonl(
            track(messageId="a", properties={"n": 1, "x": {"y": "s"}, "z": None, "e": {}, "l": [1], "f": 1.5, "b": True}),
            track(messageId="b", userId=42, properties={"n": 2.5}),
            track(messageId="c", userId="", timestamp="tomorrow"),
            track(messageId="d", userId=None, properties=[1]),
            track(messageId="e", event=" ", properties={"a.b": 1, "a": {"b": 2}}),
        )
    )
    track_ = result["track"]
    assert (track_["messages"], track_["without_user_id"], track_["without_time"]) == (5, 2, 1)
    assert (track_["without_event"], track_["bad_properties"], track_["property_conflicts"]) == (1, 1, 1)
    [event] = result["events"]
    keys = {key["key"]: key["types"] for key in event["properties"]}
    assert keys == {
        "n": {"integer": 1, "number": 1},
        "x.y": {"string": 1},
        "z": {"null": 1},
        "e": {"object": 1},
        "l": {"array": 1},
        "f": {"number": 1},
        "b": {"boolean": 1},
    }
    assert next(key for key in event["properties"] if key["key"] == "n")["fraction"] == 0.5
    user = next(field for field in result["customer_fields"] if field["path"] == "userId")
    assert (user["messages"], user["unusable"], user["distinct"]) == (3, 1, 2)  # "user-1" twice, 42; "" unusable


def test_property_conflicts_are_the_messages_send_dead_letters_for_one(segbill, tmp_path: Path) -> None:
    """send drops nulls and empty objects before two keys can meet: only "both" collides there."""
    messages = [
        track(messageId="null", properties={"a.b": None, "a": {"b": 2}}),
        track(messageId="empty", properties={"a.b": {}, "a": {"b": 2}}),
        track(messageId="nested-null", properties={"a": {"b": None}, "a.b": 1}),
        track(messageId="both", properties={"a.b": 1, "a": {"b": 2}}),
    ]
    path = write(tmp_path / "in.jsonl", jsonl(*messages))
    sent = segbill("send", str(path), "--to", "lago", "--dry-run", "--json")
    assert orjson.loads(sent.stderr.strip().splitlines()[-1])["dead_lettered_by_reason"] == {"property_conflict": 1}
    assert [entry["record"]["messageId"] for entry in sent.dead_letters] == ["both"]
    assert report(str(path))["track"]["property_conflicts"] == 1
    assert "  two properties, one flat key         1  dead-letters them\n" in run(str(path)).stdout


def test_track_messages_without_a_readable_time_are_said_in_words(tmp_path: Path) -> None:
    path = write(tmp_path / "in.jsonl", jsonl(track(timestamp="bad"), track(messageId="m2", timestamp=None)))
    out = run(str(path)).stdout
    assert "Track messages: 2, none with a readable time (send dead-letters them).\n" in out
    assert "None" not in out


def test_customer_ids_are_counted_as_send_bills_them() -> None:
    """7, 7.0 and "7" are one customer for send; a boolean, an object and 7.5 are refused."""
    users: list[Any] = [7, 7.0, "7", True, {"id": 7}, 7.5]
    result = _inspect_bytes(jsonl(*(track(messageId=f"m{n}", userId=user) for n, user in enumerate(users))))
    user = next(field for field in result["customer_fields"] if field["path"] == "userId")
    assert (user["messages"], user["unusable"], user["distinct"]) == (3, 3, 1)


def test_customer_id_candidates_found_in_properties() -> None:
    result = _inspect_bytes(
        jsonl(
            track(messageId="a", properties={"workspace_id": "w1", "account": {"id": 7}, "product_id": "p", "orgId": "o"}),
            track(messageId="b", properties={"workspace_id": "w2", "account": {"id": 7}}),
        )
    )
    fields = {field["path"]: (field["messages"], field["distinct"]) for field in result["customer_fields"]}
    assert fields == {
        "userId": (2, 1),
        "properties.workspace_id": (2, 2),
        "properties.account.id": (2, 1),
        "properties.orgId": (1, 1),
    }


def test_customer_from_is_reported_and_never_counted_twice() -> None:
    data = jsonl(*(track(messageId=f"m{i}", properties={"account_id": f"a{i % 2}"}) for i in range(3)))
    for path in ("properties.account_id", "properties.nowhere", "context.traits.plan"):
        fields = {field["path"]: field for field in report("--customer-from", path, input=data)["customer_fields"]}
        assert fields["properties.account_id"]["messages"] == 3
        assert fields["properties.account_id"]["distinct"] == 2
        assert path in fields


def test_a_time_outside_1970_to_9999_is_unreadable_not_a_crash() -> None:
    result = _inspect_bytes(jsonl(track(timestamp="0000-01-01T00:00:00Z"), track(timestamp="9999-12-31T23:59:59-01:00")))
    assert result["track"]["without_time"] == 2 and result["track"]["first_time"] is None


# --- bounded memory ----------------------------------------------------------------------------


def test_caps_on_events_keys_distinct_values_and_message_ids() -> None:
    messages = [
        track(messageId=f"m{i}", userId=f"u{i}", event=f"E{i % 4}", properties={f"k{i % 5}": i, "workspace_id": f"w{i}"})
        for i in range(20)
    ]
    repeats = [track(messageId="m0", userId="u0", event="E0", timestamp="2024-01-02T00:00:00Z")] * 2
    repeats.append(track(messageId="m19", event="E3"))  # m19 was not tracked: the cap was hit first
    result = _inspect_bytes(
        jsonl(*messages, *repeats), max_events=2, max_keys=2, max_distinct=3, max_message_ids=4, max_id_fields=1
    )
    assert [event["name"] for event in result["events"]] == ["E0", "E1"]
    other = result["other_events"]
    assert other["name"] is None and other["messages"] == 11
    assert sum(len(event["properties"]) for event in result["events"]) == 4
    assert result["events"][0]["untracked_properties"] > 0
    fields = {field["path"]: field for field in result["customer_fields"]}
    assert fields["userId"]["distinct"] == 3 and fields["userId"]["distinct_capped"]
    assert fields["properties.workspace_id"]["messages"] == 20  # counted beyond the key cap too
    ids = result["message_ids"]
    assert ids["cap_hit"] and ids["ids_tracked"] == 4
    assert (ids["repeated"], ids["repeated_time_differs"], ids["extra_copies"]) == (1, 1, 2)
    assert run("-", input=jsonl(*messages)).exit_code == 0


def test_the_message_id_table_grows_and_stays_exact(tmp_path: Path) -> None:
    """10,000 ids, each sent twice (one in ten at another time): the table grows past its first
    size and every repeat is found."""
    messages = [
        track(messageId=f"id-{i}", timestamp=f"2024-01-01T00:00:0{copy if i % 10 == 0 else 0}.000Z")
        for copy in range(2)
        for i in range(10_000)
    ]
    result = run(str(write(tmp_path / "ids.jsonl", jsonl(*messages))), "--json")
    ids = orjson.loads(result.stdout)["message_ids"]
    assert (ids["ids_tracked"], ids["repeated"], ids["extra_copies"], ids["repeated_time_differs"]) == (
        10_000,
        10_000,
        10_000,
        1_000,
    )
    assert not ids["cap_hit"]


# --- the command -------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [("/no/such/export",), ("--customer-from", "a..b", str(EVENTS)), ("--nope",)])
def test_usage_errors_exit_2_without_a_traceback(args: tuple[str, ...]) -> None:
    result = run(*args)
    assert result.exit_code == 2
    assert result.stdout == "" and "Traceback" not in result.stderr


def test_ctrl_c_prints_what_was_read_and_exits_130(monkeypatch: pytest.MonkeyPatch) -> None:
    real = inspection_module.read_records

    def interrupted(source: Any) -> Iterator[Any]:
        for number, record in enumerate(real(source), 1):
            if number == 3:
                raise KeyboardInterrupt
            yield record

    monkeypatch.setattr(inspection_module, "read_records", interrupted)
    result = run(str(EVENTS), "--json")
    assert result.exit_code == 130
    parsed = orjson.loads(result.stdout)
    assert parsed["interrupted"] and parsed["records"] == 2


def test_inspect_sources_is_usable_without_the_cli() -> None:
    result = inspect_sources(expand([str(SAMPLE_DATA)], stdin_is_terminal=False), customer_from="context.groupId")
    assert any(field["path"] == "context.groupId" for field in result["customer_fields"])

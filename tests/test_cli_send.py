"""`segbill send --dry-run` as a user runs it: inputs, dead letters, summary, exit codes."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import typer

from segbill import __version__
from segbill.cli import app
from segbill.testing.fake_platform import FakePlatform

from .conftest import SAMPLE_DATA, assert_adds_up, jsonl, platform_env, send, track, write
from .schemas import ASSERT_SCHEMA

GOOD = [track(messageId=f"m{i}", userId=f"u{i % 3}", properties={"n": i}) for i in range(5)]
OTHERS = [{"type": "identify", "userId": "u"}, {"type": "page", "name": "Home"}, {"type": "identify"}]


def summary_of(run) -> dict:
    """The --json summary (stderr in a dry run, where stdout holds the events)."""
    return orjson.loads(run.stderr.strip().splitlines()[-1])


@pytest.mark.parametrize("target", ["lago", "hyperline"])
def test_dry_run_prints_every_billable_event_and_counts_the_rest(segbill, tmp_path: Path, target: str) -> None:
    path = write(tmp_path / "events.jsonl", jsonl(*GOOD, *OTHERS))
    run = segbill("send", str(path), "--to", target, "--dry-run", "--json")
    assert run.exit_code == 0, run.stderr
    assert len(run.events) == 5
    for event in run.events:
        ASSERT_SCHEMA[target](event)
    summary = summary_of(run)
    assert summary["read"] == 8 and summary["converted"] == 5
    assert summary["skipped_by_reason"] == {"identify": 2, "page": 1}
    assert_adds_up(summary)
    assert not run.dead_letter.exists()  # created only when something is written


def test_the_human_summary_goes_to_stderr_and_adds_up(segbill, tmp_path: Path) -> None:
    path = write(tmp_path / "events.jsonl", jsonl(*GOOD, *OTHERS) + b"bad\n")
    run = segbill("send", str(path), "--to", "lago", "--dry-run")
    assert run.exit_code == 1
    assert "read             9" in run.stderr
    assert "converted        5" in run.stderr
    assert "skipped          3  (identify 2, page 1)" in run.stderr
    assert "dead-lettered    1  (not_json 1)" in run.stderr
    assert run.stdout.count("\n") == 5


def test_stdin_with_a_dash_or_no_path(segbill) -> None:
    for args in (["-"], []):
        run = segbill("send", *args, "--to", "lago", "--dry-run", input=jsonl(*GOOD))
        assert run.exit_code == 0
        assert [e["transaction_id"] for e in run.events] == [f"m{i}" for i in range(5)]


def test_gzip_on_stdin(segbill, inflate: str) -> None:
    import gzip

    run = segbill("send", "--to", "hyperline", "--dry-run", input=gzip.compress(jsonl(*GOOD)))
    assert [e["record"]["id"] for e in run.events] == [f"m{i}" for i in range(5)]


def test_a_folder_in_the_s3_layout_with_gzip_named_or_not(segbill, tmp_path: Path) -> None:
    root = tmp_path / "exports" / "segment-logs" / "src1"
    write(root / "1704067200000" / "b.gz", jsonl(GOOD[1]), compress=True)
    write(root / "1704067200000" / "a.gz", jsonl(GOOD[0]), compress=True)
    write(root / "1704153600000" / "c.gz", jsonl(GOOD[2]))  # already decompressed, still .gz
    write(root / "1704153600000" / ".partial", b"garbage\n")
    run = segbill("send", str(tmp_path / "exports"), "--to", "lago", "--dry-run")
    assert run.exit_code == 0, run.stderr
    assert [e["transaction_id"] for e in run.events] == ["m0", "m1", "m2"]


def test_an_empty_gz_file_is_a_broken_download_dead_lettered_until_downloaded_again(
    segbill, fake: FakePlatform, tmp_path: Path
) -> None:
    """Segment never writes a 0-byte .gz: read as an empty hour, it would lose that hour in silence."""
    day = tmp_path / "exports" / "1704067200000"
    write(day / "a.gz", jsonl(GOOD[0]), compress=True)
    write(day / "b.gz", b"")
    run, summary = send(segbill, fake.url, "exports", "--state", "s.db")
    assert run.exit_code == 1 and summary and (summary["delivered"], summary["dead_lettered_by_reason"]) == (1, {"bad_gzip": 1})
    assert f"{Path('exports', '1704067200000', 'b.gz')}:1: The gzip file is empty (0 bytes)" in run.stderr
    [entry] = run.dead_letters
    assert entry["source"]["line"] == 1 and "Download it again" in entry["reason"]
    write(day / "b.gz", jsonl(GOOD[1]), compress=True)  # downloaded again: another file, read
    run, summary = send(segbill, fake.url, "exports", "--state", "s.db")
    assert run.exit_code == 0 and summary and (summary["files_already_done"], summary["delivered"]) == (1, 1)
    assert fake.counts("lago") == {"m0": 1, "m1": 1}


def test_the_bundled_sample_data(segbill) -> None:
    """The README's main job: the deliberately bad sample lines, and nothing else, are dead-lettered."""
    run = segbill("send", str(SAMPLE_DATA), "--to", "lago", "--dry-run", "--json")
    assert run.exit_code == 1
    assert "not reading 2 file(s) in folders that do not look like exports" in run.stderr
    events_file = str(SAMPLE_DATA / "events.jsonl")
    bad = [(e["source"]["line"], e["reason"].split(" (")[0]) for e in run.dead_letters if e["source"]["path"] == events_file]
    assert bad == [
        (12, 'The track message has no customer id at "userId".'),
        (13, "The line is not valid JSON"),
        (17, "The line is JSON but not an object"),
        (18, "The line is JSON but not an object"),
        (20, "The line is not valid JSON"),
    ]
    others = {e["reason"] for e in run.dead_letters if e["source"]["path"] != events_file}
    assert others == {'The track message has no customer id at "userId".'}  # anonymous-only tracks
    for event in run.events:
        ASSERT_SCHEMA["lago"](event)
    summary = summary_of(run)
    assert summary["converted"] == len(run.events) > 100
    assert_adds_up(summary)


def test_bad_lines_are_dead_lettered_with_file_and_line_and_the_rest_goes_through(segbill, tmp_path: Path) -> None:
    lines = [
        orjson.dumps(GOOD[0]),
        b"{not json",
        b"[1,2]",
        b'{"type":"track","event":"\xff"}',
        orjson.dumps(track(messageId="no-user", userId=None)),
        orjson.dumps(track(messageId="late", timestamp="tomorrow")),
        orjson.dumps(GOOD[1]),
    ]
    path = write(tmp_path / "mixed.jsonl", b"\n".join(lines) + b"\n")
    run = segbill("send", str(path), "--to", "lago", "--dry-run", "--json")
    assert run.exit_code == 1
    assert [e["transaction_id"] for e in run.events] == ["m0", "m1"]
    warnings = [line for line in run.stderr.splitlines() if line.startswith("segbill: ")]
    assert warnings[0].startswith(f"segbill: {path}:2: The line is not valid JSON (")  # then orjson's words
    assert warnings[1:] == [
        f"segbill: {path}:3 (message 0): This array item is not an object (it is a number).",
        f"segbill: {path}:3 (message 1): This array item is not an object (it is a number).",
        f"segbill: {path}:4: The line is not valid UTF-8 text.",
        f'segbill: {path}:5: The track message has no customer id at "userId".',
        f"segbill: {path}:6: The message's \"timestamp\" ('tomorrow') is not an RFC 3339 time such as "
        "2024-01-31T12:00:00.123Z (the README lists the forms read).",
    ]
    entries = run.dead_letters
    assert [e["source"] for e in entries] == [
        {"path": str(path), "line": 2},
        {"path": str(path), "line": 3, "index": 0},
        {"path": str(path), "line": 3, "index": 1},
        {"path": str(path), "line": 4},
        {"path": str(path), "line": 5},
        {"path": str(path), "line": 6},
    ]
    for entry in entries:
        assert entry["segbill_dead_letter"] == 1 and entry["target"] == "lago"
        assert entry["at"].endswith("Z") and entry["reason"].endswith(".")
    assert entries[0]["raw"] == "{not json"
    assert entries[1]["raw"] == "1"
    assert entries[3]["raw_base64"] and "record" not in entries[3]
    assert entries[4]["record"] == track(messageId="no-user", userId=None)
    assert entries[5]["record"]["messageId"] == "late"
    assert stat.S_IMODE(run.dead_letter.stat().st_mode) == 0o600
    summary = summary_of(run)
    assert summary["dead_lettered_by_reason"] == {
        "bad_time": 1,
        "missing_customer": 1,
        "not_json": 1,
        "not_object": 2,
        "not_utf8": 1,
    }
    assert_adds_up(summary)


def test_the_dead_letter_file_replays_its_records_and_keeps_their_first_source(segbill, tmp_path: Path) -> None:
    anonymous = track(messageId=None, userId=None, anonymousId="anon-1")
    path = write(tmp_path / "in.jsonl", jsonl(GOOD[0], anonymous) + b"oops\n")
    first = segbill("send", str(path), "--to", "hyperline", "--dry-run", dead_letter="first.jsonl")
    assert first.exit_code == 1 and len(first.dead_letters) == 2
    retry = segbill(
        "send",
        str(first.dead_letter),
        "--to",
        "hyperline",
        "--dry-run",
        "--customer-from",
        "anonymousId",
        dead_letter="second.jsonl",
    )
    assert retry.exit_code == 1
    [event] = retry.events
    assert event["customer_id"] == "anon-1"
    direct = segbill("send", "--to", "hyperline", "--dry-run", "--customer-from", "anonymousId", input=jsonl(anonymous))
    assert event == direct.events[0]  # the derived id survives the round trip
    [again] = retry.dead_letters
    assert again["raw"] == "oops"
    assert again["source"] == {"path": str(first.dead_letter), "line": 2}
    assert again["first_source"] == {"path": str(path), "line": 3}


def test_a_message_dead_lettered_while_reading_keeps_every_integer_exact(segbill, tmp_path: Path) -> None:
    """The fast parse holds an integer beyond 64 bits as a float; the dead letter is the original."""
    line = b'{"type":"track","event":"API Call","messageId":"m","timestamp":"2024-01-01T00:00:00Z","properties":{"n":123456789012345678901234567890,"m":-99999999999999999999}}\n'
    path = write(tmp_path / "in.jsonl", line)
    run = segbill("send", str(path), "--to", "lago", "--dry-run", dead_letter="dead.jsonl")
    assert run.exit_code == 1
    [entry] = [json.loads(line) for line in run.dead_letter.read_bytes().splitlines()]  # orjson would read floats
    assert entry["reason"].startswith("The track message has no customer id")
    assert entry["record"]["properties"] == {"n": 123456789012345678901234567890, "m": -99999999999999999999}


def dumps_line(message: dict[str, object]) -> bytes:
    return orjson.dumps(message) + b"\n"


LARGE_NUMBERS = (
    b'{"type":"track","event":"API Call","userId":100000000000000000000,"messageId":"m1","timestamp":"2024-01-01T00:00:00Z",'
    b'"properties":{"f":1e300,"g":-9.5e18,"l":[1,18446744073709551616],"k":[2,1e300],"n":18446744073709551616,"cents":100000000000000000000}}\n'
)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (
            "lago",
            {"f": 1e300, "g": -9.5e18, "l": "[1,18446744073709551616]", "k": "[2,1e+300]", "n": "18446744073709551616"},
        ),
        (
            "hyperline",
            {
                "id": "m1",
                "f": 1e300,
                "g": -9.5e18,
                "l": [1, "18446744073709551616"],
                "k": [2, 1e300],
                "n": "18446744073709551616",
            },
        ),
    ],
)
def test_floats_of_2_63_and_more_are_floats_and_integers_beyond_64_bits_stay_exact(
    segbill, tmp_path: Path, target: str, expected: dict[str, object]
) -> None:
    """A float that large may be an integer orjson could not hold, so the line is read again
    exactly; a float the export really holds (1e300) is then sent as the float it is, never an
    internal error that stops the run, and an integer inside a list keeps every digit (as the
    customer id and the amount do)."""
    path = write(tmp_path / "in.jsonl", LARGE_NUMBERS)
    field, source = ("precise_total_amount_cents", "properties.cents") if target == "lago" else ("customer_id", "userId")
    config = write(tmp_path / "segbill.toml", f'[{target}]\n{field} = "{source}"\n'.encode())
    run = segbill("send", str(path), "--to", target, "--dry-run", "--config", str(config))
    assert run.exit_code == 0, run.stderr
    [event] = [json.loads(line) for line in run.stdout.splitlines()]  # orjson would read 2**64 as a float
    values = event["properties"] if target == "lago" else event["record"]
    values.pop("cents", None)
    assert values == expected
    assert event["external_subscription_id" if target == "lago" else "customer_id"] == "100000000000000000000"
    if target == "lago":
        assert event["precise_total_amount_cents"] == "100000000000000000000"


INEXACT = [  # (the customer id or amount as the export writes it, what is sent or None: dead-lettered)
    ("9007199254740991.0", "9007199254740991"),  # 2**53 - 1: every float up to it is the integer written
    ("-9007199254740991.0", "-9007199254740991"),
    ("9007199254740993.0", None),  # 2**53 + 1 reads as 2**53: another customer
    ("9007199254740992.0", None),  # 2**53 itself may be 2**53 + 1 read
    ("1e300", None),  # an id of 301 digits the export never held
    ("-1e20", None),
    ("1e20", None),  # below 2**64, orjson's float: read exactly, still a float
    ("100000000000000000000", "100000000000000000000"),  # an integer beyond 64 bits stays exact
]


@pytest.mark.parametrize(("target", "written", "sent"), [(t, w, s) for t in ("lago", "hyperline") for w, s in INEXACT])
def test_a_float_customer_id_of_2_53_or_more_is_dead_lettered_not_billed_to_another_customer(
    segbill, fake: FakePlatform, tmp_path: Path, target: str, written: str, sent: str | None
) -> None:
    line = f'{{"type":"track","event":"API Call","userId":{written},"messageId":"m1","timestamp":"2024-01-05T00:00:00Z"}}\n'
    path = write(tmp_path / "in.jsonl", line.encode() + jsonl(track(messageId="m2")))
    run, summary = send(segbill, fake.url, str(path), to=target)
    field = "external_subscription_id" if target == "lago" else "customer_id"
    customers = sorted(event[field] for event in fake.events(target))
    if sent is not None:
        assert run.exit_code == 0 and customers == sorted([sent, "user-1"])
        return
    assert run.exit_code == 1 and customers == ["user-1"]
    assert summary is not None and summary["dead_lettered_by_reason"] == {"inexact_customer": 1}
    [letter] = run.dead_letters
    assert letter["reason"].startswith('The customer id at "userId" is a number of 2**53 or more (it reads as ')
    assert letter["reason"].endswith("): a JSON float cannot hold it exactly, so it may not be the number written.")


@pytest.mark.parametrize(
    ("written", "sent"),
    [
        ("12.5", "12.5"),
        ("9007199254740991.0", "9007199254740991.0"),
        ("123456789012345678901.5", None),  # once "1.2345678901234568E+20"
        ("-9007199254740993.0", None),
        ("1e19", None),
        ("123456789012345678901", "123456789012345678901"),
        ('"123456789012345678901.5"', "123456789012345678901.5"),  # a string stays exact at any size
    ],
)
def test_a_float_amount_of_2_53_or_more_is_dead_lettered_not_rounded(
    segbill, fake: FakePlatform, tmp_path: Path, written: str, sent: str | None
) -> None:
    line = f'{{"type":"track","event":"API Call","userId":"u","messageId":"m1","timestamp":"2024-01-05T00:00:00Z","properties":{{"cents":{written}}}}}\n'
    path = write(tmp_path / "in.jsonl", line.encode())
    config = write(tmp_path / "segbill.toml", b'[lago]\nprecise_total_amount_cents = "properties.cents"\n')
    run, summary = send(segbill, fake.url, str(path), "--config", str(config))
    amounts = [event["precise_total_amount_cents"] for event in fake.events("lago")]
    if sent is not None:
        assert run.exit_code == 0 and amounts == [sent]
        return
    assert run.exit_code == 1 and amounts == []
    assert summary is not None and summary["dead_lettered_by_reason"] == {"bad_amount": 1}
    [letter] = run.dead_letters
    assert letter["reason"].startswith('The amount at "properties.cents" is a number of 2**53 or more')


def test_inspect_reads_floats_of_2_63_and_more(segbill, tmp_path: Path) -> None:
    run = segbill("inspect", str(write(tmp_path / "in.jsonl", LARGE_NUMBERS)), "--json")
    assert run.exit_code == 0, run.stderr
    report = orjson.loads(run.stdout)
    assert report["records"] == 1 and report["track"]["messages"] == 1 and report["unreadable"] == {}


def _nested(key: str, inner: bytes, depth: int) -> bytes:
    return (
        b'{"type":"track","event":"API Call","userId":"u","messageId":"'
        + key.encode()
        + b'","timestamp":"2024-01-01T00:00:00Z",'
        + inner.replace(b"NEST", b'{"a":' * depth + b"1" + b"}" * depth).replace(b"LIST", b"[" * depth + b"]" * depth)
        + b"}\n"
    )


@pytest.mark.parametrize("target", ["lago", "hyperline"])
def test_a_message_nested_a_thousand_deep_is_one_dead_letter_not_the_end_of_the_run(segbill, tmp_path: Path, target: str) -> None:
    """Properties nested ~990 deep cannot be flattened in Python: that record is dead-lettered
    (too_deep, its line kept, replayable), the others are billed; unread keys nested as deep
    (a context) are no trouble at all."""
    lines = [
        _nested("deep", b'"properties":NEST', 990),
        _nested("deep-context", b'"context":{"x":LIST},"properties":{"n":1}', 990),
        dumps_line(track(messageId="plain")),
    ]
    path = write(tmp_path / "in.jsonl", b"".join(lines))
    run = segbill("send", str(path), "--to", target, "--dry-run", "--dead-letter", "dead.jsonl")
    assert run.exit_code == 1, run.stderr
    assert len(run.stdout.splitlines()) == 2 and '"deep-context"' in run.stdout and '"plain"' in run.stdout
    [entry] = [json.loads(line) for line in run.dead_letter.read_bytes().splitlines()]
    assert entry["reason"].startswith("The message nests objects or lists too deep") and entry["raw"].encode() + b"\n" == lines[0]
    again = segbill("send", str(run.dead_letter), "--to", target, "--dry-run", "--json", dead_letter="again.jsonl")
    assert again.exit_code == 1 and orjson.loads(again.stderr.splitlines()[-1])["dead_lettered_by_reason"] == {"too_deep": 1}
    report = orjson.loads(segbill("inspect", str(path), "--json").stdout)
    assert report["track"]["messages"] == 3 and report["track"]["bad_properties"] == 1


def test_a_replayed_dead_letter_keeps_every_integer_exact(segbill, tmp_path: Path) -> None:
    """A dead letter's record is read back with the fast parse too: an integer beyond 64 bits
    sends its exact re-read through the dead-letter reading, not the line as a message."""
    line = b'{"type":"track","event":"API Call","messageId":"m","timestamp":"2024-01-01T00:00:00Z","properties":{"n":123456789012345678901234567890}}\n'
    first = segbill("send", str(write(tmp_path / "in.jsonl", line)), "--to", "lago", "--dry-run", dead_letter="dead.jsonl")
    assert first.exit_code == 1 and len(first.dead_letters) == 1  # no customer id
    replay = segbill(
        "send", "dead.jsonl", "--to", "lago", "--dry-run", "--customer-from", "properties.n", dead_letter="again.jsonl"
    )
    assert replay.exit_code == 0, replay.stderr
    [event] = replay.events
    assert event["external_subscription_id"] == "123456789012345678901234567890"
    assert event["properties"]["n"] == "123456789012345678901234567890"


def test_the_dead_letter_file_is_never_read_while_written(segbill, tmp_path: Path) -> None:
    path = write(tmp_path / "in.jsonl", b"bad one\n")
    segbill("send", str(path), "--to", "lago", "--dry-run")
    dead = tmp_path / "dead.jsonl"
    assert len(dead.read_bytes().splitlines()) == 1
    run = segbill("send", str(dead), "--to", "lago", "--dry-run")
    assert run.exit_code == 2
    assert "is both an input and the dead-letter file" in run.stderr
    assert len(dead.read_bytes().splitlines()) == 1


@pytest.mark.parametrize("link", [os.link, os.symlink])
@pytest.mark.parametrize("given", ["x.jsonl", "exports"])
def test_the_dead_letter_file_under_another_name_is_refused_as_an_input(
    segbill, fake: FakePlatform, tmp_path: Path, given: str, link: Callable[[Path, Path], None]
) -> None:
    """A link is the same file under another name: a run reading it would read the dead
    letters it appends, for ever. Given itself or found in a folder, it is refused before
    anything is sent (here the replay would deliver, so the run would end without the check),
    with the advice to copy it: a link moved is still the same file."""
    message = track(userId=None, anonymousId="anon-1")
    run, _ = send(segbill, fake.url, str(write(tmp_path / "in.jsonl", jsonl(message))))
    dead = tmp_path / "dead.jsonl"
    assert run.exit_code == 1 and len(dead.read_bytes().splitlines()) == 1  # missing_customer
    (tmp_path / "exports").mkdir()
    link(dead, tmp_path / "exports" / "x.jsonl")
    link(dead, tmp_path / "x.jsonl")
    requests = len(fake.requests())
    run = segbill("send", given, "--to", "lago", "--customer-from", "anonymousId", env=platform_env(fake.url))
    assert run.exit_code == 2 and "is the dead-letter file dead.jsonl under another name (a link)" in run.stderr
    assert "Send a copy (cp " in run.stderr
    assert len(dead.read_bytes().splitlines()) == 1 and len(fake.requests()) == requests


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
@pytest.mark.parametrize("name", ["cfg.toml", "hard.toml", "soft.toml"])
@pytest.mark.parametrize("mapping", [b"", b'[lago]\ntransaction_id = "messageId"\n'], ids=["empty", "lago"])
def test_a_dead_letter_path_that_is_the_config_file_is_refused(
    segbill, fake: FakePlatform, tmp_path: Path, dry_run: list[str], name: str, mapping: bytes
) -> None:
    """Dead letters appended to the mapping file would make the next run's --config invalid
    TOML (an empty file too, which is a valid mapping): refused by any name, before anything is read."""
    config = write(tmp_path / "cfg.toml", mapping)
    os.link(config, tmp_path / "hard.toml")
    (tmp_path / "soft.toml").symlink_to(config)
    write(tmp_path / "in.jsonl", jsonl(track(userId=None)))  # would be dead-lettered
    run = segbill(
        "send", "in.jsonl", "--to", "lago", "--config", "cfg.toml", *dry_run, dead_letter=name, env=platform_env(fake.url)
    )
    error = [line for line in run.stderr.splitlines() if not line.startswith("segbill: warning:")]  # an empty mapping warns
    assert run.exit_code == 2 and run.stdout == "" and len(error) == 1, run.stderr
    assert error[0].startswith(f"segbill: error: --dead-letter {name} and --config cfg.toml are one file")
    assert config.read_bytes() == mapping and fake.requests() == []


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
@pytest.mark.parametrize(
    "held",
    [
        None,  # another shard's state file
        b'[lago]\ntransaction_id = "messageId"\n',
        jsonl(track(), track(messageId="msg-2")),  # an export
        b'{"segbill_dead_letter": true, "reason": "not segbill\'s marker"}\n',
        b"\n\nnotes\n",
    ],
    ids=["state", "toml", "export", "other-marker", "blank-first-line"],
)
def test_a_dead_letter_path_holding_something_else_is_refused(
    segbill, fake: FakePlatform, tmp_path: Path, dry_run: list[str], held: bytes | None
) -> None:
    write(tmp_path / "in.jsonl", jsonl(track(userId=None)))
    if held is None:
        send(segbill, fake.url, str(write(tmp_path / "shard.jsonl", jsonl(track()))), "--state", "other")
    else:
        write(tmp_path / "other", held)
    before, requests = (tmp_path / "other").read_bytes(), len(fake.requests())
    run = segbill("send", "in.jsonl", "--to", "lago", *dry_run, dead_letter="other", env=platform_env(fake.url))
    assert run.exit_code == 2 and run.stdout == "" and run.stderr.count("\n") == 1, run.stderr
    assert "--dead-letter other holds something else (its first line is no segbill dead-letter entry)" in run.stderr
    assert (tmp_path / "other").read_bytes() == before and len(fake.requests()) == requests


def test_an_empty_file_or_a_dead_letter_file_takes_dead_letters(segbill, fake: FakePlatform, tmp_path: Path) -> None:
    """A first entry longer than what is read of it (a long unreadable line, kept whole) still
    reads as a dead-letter file."""
    write(tmp_path / "long.jsonl", b"{" + b"x" * 100_000 + b"\n")
    write(tmp_path / "in.jsonl", jsonl(track(userId=None)))
    write(tmp_path / "empty.jsonl", b"")
    for dead in ("dead.jsonl", "dead.jsonl", "empty.jsonl"):
        run, summary = send(segbill, fake.url, "long.jsonl", "in.jsonl", "--dead-letter", dead)
        assert run.exit_code == 1 and summary is not None and summary["dead_lettered"] == 2, run.stderr
    assert len((tmp_path / "dead.jsonl").read_bytes().splitlines()) == 4
    assert len((tmp_path / "dead.jsonl").read_bytes().splitlines()[0]) > 100_000
    assert len((tmp_path / "empty.jsonl").read_bytes().splitlines()) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["send", "missing.jsonl", "--to", "lago", "--dry-run"], "segbill: error: missing.jsonl: no such file or directory."),
        (["send", "in.jsonl", "--to", "lago", "--dry-run", "--customer-from", "context..x"], "is not a dotted path"),
        (
            ["send", "in.jsonl", "--to", "lago", "--dry-run", "--dead-letter", "nowhere/dl.jsonl"],
            "the folder nowhere does not exist",
        ),
        (["send", "in.jsonl", "--to", "stripe", "--dry-run"], "'stripe' is not one of"),
        (["send", "in.jsonl", "--dry-run"], "Missing option '--to'"),
    ],
)
def test_usage_errors_exit_2_before_anything_is_read(segbill, tmp_path: Path, args: list[str], message: str) -> None:
    write(tmp_path / "in.jsonl", b"garbage\n")
    run = segbill(*args, dead_letter="dl.jsonl")
    assert run.exit_code == 2
    assert message in run.stderr
    assert run.stdout == "" and not (tmp_path / "dl.jsonl").exists()


def test_version(segbill) -> None:
    run = segbill("--version")
    assert run.exit_code == 0 and run.stdout == f"segbill {__version__}\n"


def test_every_command_and_option_has_help_text() -> None:
    group = typer.main.get_command(app)
    assert group.help
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        assert command.help, name
        for param in command.params:
            assert getattr(param, "help", None), f"{name} {param.name}"


def _subprocess(*args: str, unbuffered: bool = True, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
    env = {key: value for key, value in (env or os.environ).items() if key != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    return subprocess.Popen([sys.executable, "-m", "segbill", *args], env=env, **kwargs)


def test_subprocess_dry_run_and_a_reader_that_goes_away(tmp_path: Path) -> None:
    path = write(tmp_path / "many.jsonl", jsonl(*(track(messageId=f"m{i}") for i in range(50_000))))
    whole = subprocess.run(
        [
            sys.executable,
            "-m",
            "segbill",
            "send",
            str(path),
            "--to",
            "lago",
            "--dry-run",
            "--json",
            "--dead-letter",
            str(tmp_path / "d"),
        ],
        capture_output=True,
        check=False,
    )
    assert whole.returncode == 0, whole.stderr
    assert whole.stdout.count(b"\n") == 50_000
    assert orjson.loads(whole.stderr.splitlines()[-1])["converted"] == 50_000
    # `| head -1`: the rest is not attempted, the summary says so, and there is no traceback.
    process = _subprocess(
        "send",
        str(path),
        "--to",
        "lago",
        "--dry-run",
        "--json",
        "--dead-letter",
        str(tmp_path / "d"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.readline()
    process.stdout.close()
    stderr = process.stderr.read()
    assert process.wait(timeout=60) == 3
    assert b"Traceback" not in stderr
    summary = orjson.loads(stderr.splitlines()[-1])
    assert summary["stopped"] == "stdout was closed" and summary["not_attempted"] >= 1
    assert_adds_up(summary)


def test_subprocess_interrupted_exits_130_with_a_summary(tmp_path: Path) -> None:
    # Buffered stdout, as in a user's pipe: an event from stdin is printed as soon as it is read.
    process = _subprocess(
        "send",
        "--to",
        "lago",
        "--dry-run",
        "--json",
        "--dead-letter",
        str(tmp_path / "d"),
        unbuffered=False,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(jsonl(GOOD[0]))
    process.stdin.flush()
    assert orjson.loads(process.stdout.readline())["transaction_id"] == "m0"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130
    assert b"Traceback" not in stderr
    summary = orjson.loads(stderr.splitlines()[-1])
    assert summary["read"] == 1 and summary["converted"] == 1


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_send_waiting_on_an_idle_stdin_stops_on_a_signal(tmp_path: Path, signum: int) -> None:
    """A pipe that stays open without a line (a stalled producer) does not hold a send: the
    signal ends the wait, the events read but not yet sent are not attempted (a rerun sends
    them), and the summary adds up."""
    from segbill.testing.fake_platform import FakePlatform

    with FakePlatform(api_key="k") as fake:
        process = _subprocess(
            *("send", "--to", "lago", "--json", "--quiet", "--api-url", fake.url, "--dead-letter", str(tmp_path / "d")),
            env={**os.environ, "LAGO_API_KEY": "k"},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert process.stdin is not None and process.stderr is not None
        process.stdin.write(jsonl(GOOD[0], GOOD[1]) + b"not json\n")
        process.stdin.flush()  # and the pipe stays open
        assert process.stderr.readline().startswith(b"segbill: <stdin>:3: ")  # all three read: it waits for a fourth
        process.send_signal(signum)
        out, err = process.communicate(timeout=30)
        assert process.returncode == 130, err
        summary = orjson.loads(out)
        assert summary["interrupted"] is True and summary["read"] == 3
        assert summary["not_attempted"] == 2 and summary["dead_lettered"] == 1
        assert_adds_up(summary)
        assert fake.requests("lago") == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_an_unwritable_dead_letter_folder_exits_2_before_reading(segbill, tmp_path: Path) -> None:
    write(tmp_path / "in.jsonl", b"bad\n")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    run = segbill("send", "in.jsonl", "--to", "lago", "--dry-run", "--dead-letter", str(locked / "dl.jsonl"))
    assert run.exit_code == 2 and "cannot write there" in run.stderr


def test_a_state_path_that_cannot_be_opened_exits_2(segbill, tmp_path: Path) -> None:
    write(tmp_path / "in.jsonl", jsonl(GOOD[0]))
    (tmp_path / "folder.db").mkdir()
    run = segbill("send", "in.jsonl", "--to", "lago", "--dry-run", "--state", "folder.db")
    assert run.exit_code == 2 and run.stderr.startswith("segbill: error: --state folder.db: ")
    assert "Traceback" not in run.stderr


def test_the_garbage_collector_settings_are_restored_after_a_run(segbill, tmp_path: Path) -> None:
    """send tunes the cyclic collector for the run only: a program embedding the CLI gets its own
    settings back."""
    import gc

    before = gc.get_threshold(), gc.get_freeze_count()
    write(tmp_path / "in.jsonl", jsonl(*GOOD))
    assert segbill("send", "in.jsonl", "--to", "lago", "--dry-run").exit_code == 0
    assert (gc.get_threshold(), gc.get_freeze_count()) == before


@pytest.mark.parametrize("dry_run", [True, False])
def test_notices_follow_input_order(segbill, fake: FakePlatform, tmp_path: Path, dry_run: bool) -> None:
    """A repeat is judged with the block of events around it, a bad line as it is read: a bad
    line's notice came before the notice of a repeat on an earlier line."""
    lines = [jsonl(track(messageId=f"m{i}", timestamp=f"2024-01-01T00:00:{i:02d}Z")) for i in range(1, 31)]
    lines[4] = jsonl(track(messageId="m1", timestamp="2024-01-02T00:00:00Z"))  # line 5: a shifted repeat
    lines[9] = b"not json\n"
    lines[20] = jsonl(track(messageId="m2", timestamp="2024-01-02T00:00:00Z"))
    lines[21] = jsonl(track(messageId="m22", userId=None))
    lines[22] = b"{\n"
    path = write(tmp_path / "in.jsonl", b"".join(lines))
    if dry_run:
        run = segbill("send", str(path), "--to", "lago", "--dry-run", "--json")
    else:
        run, summary = send(segbill, fake.url, str(path))
        assert summary is not None and summary["delivered"] == 25
    noticed = [int(line.split(":")[2]) for line in run.stderr.splitlines() if line.startswith(f"segbill: {path}:")]
    assert noticed == [5, 10, 21, 22, 23]
    assert run.exit_code == 1

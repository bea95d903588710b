"""A mapping that does not do what its author meant is said, at start and in the summary: a config
without a table for the platform sent to, and `rename` rules that matched no event."""

from __future__ import annotations

from pathlib import Path

import orjson

from .conftest import jsonl, track, write

MESSAGES = [track(messageId="m1", event="Api Request Made"), track(messageId="m2", event="Seat Added")]


def test_a_config_without_a_table_for_the_platform_is_said_at_start_and_in_the_summary(segbill, tmp_path: Path) -> None:
    write(tmp_path / "in.jsonl", jsonl(*MESSAGES))
    (tmp_path / "segbill.toml").write_text('[hyperline]\ncustomer_id = "context.groupId"\n')
    run = segbill("send", "in.jsonl", "--to", "lago", "--dry-run", "--config", "segbill.toml", "--json")
    assert run.exit_code == 0 and len(run.events) == 2
    note = "segbill.toml has no [lago] table (it has [hyperline]): lago gets the default mapping."
    assert run.stderr.splitlines()[0] == f"segbill: warning: {note}"  # before anything is read
    assert orjson.loads(run.stderr.splitlines()[-1])["warnings"] == [note]
    human = segbill("send", "in.jsonl", "--to", "lago", "--dry-run", "--config", "segbill.toml")
    assert f"  warning          {note}" in human.stderr


def test_a_rename_that_matched_no_event_is_said_in_the_summary(segbill, tmp_path: Path) -> None:
    write(tmp_path / "in.jsonl", jsonl(*MESSAGES))
    (tmp_path / "segbill.toml").write_text('[lago.events]\nrename = { "API Request Made" = "api_requests", "Seat Added" = "seats" }\n')
    run = segbill("send", "in.jsonl", "--to", "lago", "--dry-run", "--config", "segbill.toml")
    assert run.exit_code == 0
    assert [event["code"] for event in run.events] == ["Api Request Made", "seats"]
    warnings = [line for line in run.stderr.splitlines() if "warning" in line]
    assert warnings == ['  warning          rename "API Request Made" matched no event read: names are matched exactly, case included (segbill inspect lists them).']

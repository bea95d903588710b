"""A mapping that does not do what its author meant is said, at start and in the summary: a config
without a table for the platform sent to, `rename` rules that matched no event, selection and
property rules that matched nothing, and a selection that left out every event read (exit 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from segbill.testing.fake_platform import FakePlatform

from .conftest import jsonl, send, track, write

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
    (tmp_path / "segbill.toml").write_text(
        '[lago.events]\nrename = { "API Request Made" = "api_requests", "Seat Added" = "seats" }\n'
    )
    run = segbill("send", "in.jsonl", "--to", "lago", "--dry-run", "--config", "segbill.toml")
    assert run.exit_code == 0
    assert [event["code"] for event in run.events] == ["Api Request Made", "seats"]
    warnings = [line for line in run.stderr.splitlines() if "warning" in line]
    assert warnings == [
        '  warning          rename "API Request Made" matched no event read: names are matched exactly, case included (segbill inspect lists them).'
    ]


HINT = "globs and names match exactly, case included (segbill inspect lists them)."
MIXED = [
    track(messageId="a1", event="API Call", properties={"tokens": 3, "model": {"name": "m"}}),
    track(messageId="a2", event="API Call", properties={"tokens": 4}),
    track(messageId="s1", event="Seat Added", properties={"seats": 1}),
    {"type": "identify", "userId": "user-1", "messageId": "i1"},
]


def summary_of(run: Any) -> dict[str, Any]:
    return orjson.loads(run.stderr.strip().splitlines()[-1])


@pytest.mark.parametrize("target", ["lago", "hyperline"])
def test_globs_and_property_rules_that_matched_nothing_are_said(segbill, tmp_path: Path, target: str) -> None:
    write(tmp_path / "in.jsonl", jsonl(*MIXED))
    (tmp_path / "segbill.toml").write_text(
        f'[{target}.events]\ninclude = ["API *", "api*"]\nexclude = ["* (test)", "Seat *"]\n'
        f'[{target}.properties]\ninclude = ["tokens", "tokenz", "model*"]\nexclude = ["model.internal"]\n'
        'rename = { tokens = "total_tokens", Tokens = "t" }\n'
    )
    run = segbill("send", "in.jsonl", "--to", target, "--dry-run", "--json", "--config", "segbill.toml")
    assert run.exit_code == 0 and len(run.events) == 2  # "Seat Added" is excluded: that rule matched
    assert summary_of(run)["warnings"] == [
        f'[{target}.events] include "api*" matched no event read: {HINT}',
        f'[{target}.events] exclude "* (test)" matched no event read: {HINT}',
        f'[{target}.properties] include "tokenz" matched no property key read: {HINT}',
        f'[{target}.properties] exclude "model.internal" matched no property key read: {HINT}',
        f'[{target}.properties] rename "Tokens" matched no property key read: {HINT}',
    ]
    every_rule_used = segbill(
        "send", "in.jsonl", "--to", target, "--dry-run", "--json", "--event", "API *", "--exclude-event", "Seat *"
    )
    assert every_rule_used.exit_code == 0 and summary_of(every_rule_used)["warnings"] == []


def test_flags_are_named_as_typed(segbill, tmp_path: Path) -> None:
    write(tmp_path / "in.jsonl", jsonl(*MIXED))
    run = segbill("send", "in.jsonl", "--to", "lago", "--dry-run", "--event", "API *", "--exclude-event", "Api Call")
    assert run.exit_code == 0 and len(run.events) == 2
    warnings = [line for line in run.stderr.splitlines() if "warning" in line]
    assert warnings == [f'  warning          --exclude-event "Api Call" matched no event read: {HINT}']


@pytest.mark.parametrize("selection", [("--event", "api call"), ("--exclude-event", "*"), ("--config", "segbill.toml")])
def test_a_selection_that_leaves_out_every_event_read_exits_2(segbill, tmp_path: Path, selection: tuple[str, ...]) -> None:
    """A cron backfill whose --event was mistyped bills nothing: it must not exit 0."""
    write(tmp_path / "in.jsonl", jsonl(*MIXED))
    (tmp_path / "segbill.toml").write_text('[lago.events]\ninclude = ["api*"]\n')
    run = segbill("send", "in.jsonl", "--to", "lago", "--dry-run", "--json", *selection)
    summary = summary_of(run)
    assert run.exit_code == 2 == summary["exit_code"] and run.events == []
    assert summary["skipped"] == 4 and summary["skipped_by_reason"]["identify"] == 1
    rules = "the include/exclude rules" if selection[0] == "--config" else "--event/--exclude-event"
    assert summary["warnings"][-1] == f"{rules} left out every event read (3): nothing was converted (exit 2)."
    assert "the input is empty" not in run.stderr


def test_a_send_whose_selection_leaves_out_everything_sends_nothing_and_exits_2(segbill, tmp_path: Path) -> None:
    write(tmp_path / "in.jsonl", jsonl(*MIXED))
    with FakePlatform(api_key="k") as fake:
        run = segbill(
            "send",
            "in.jsonl",
            "--to",
            "lago",
            "--json",
            "--quiet",
            "--event",
            "api call",
            env={"LAGO_API_URL": fake.url, "LAGO_API_KEY": "k"},
        )
        assert fake.requests() == []
    summary = orjson.loads(run.stdout)
    assert run.exit_code == 2 == summary["exit_code"] and summary["delivered"] == 0
    assert summary["warnings"][-1] == "--event/--exclude-event left out every event read (3): nothing was sent (exit 2)."


def test_a_rerun_of_a_send_that_selected_nothing_says_so_again(segbill, tmp_path: Path) -> None:
    """With --state, a run that selected nothing keeps no checkpoint: its rerun reads the file
    again and exits 2 again (never "finished by an earlier run", exit 0), and once the rules
    are fixed, the same state sends what they select."""
    write(tmp_path / "in.jsonl", jsonl(*MIXED))
    with FakePlatform(api_key="k") as fake:
        env = {"LAGO_API_URL": fake.url, "LAGO_API_KEY": "k"}
        for _ in range(2):
            run = segbill(
                "send", "in.jsonl", "--to", "lago", "--json", "--quiet", "--state", "s.db", "--event", "api call", env=env
            )
            summary = orjson.loads(run.stdout)
            assert run.exit_code == 2 and summary["read"] == len(MIXED) and summary["files_already_done"] == 0
        assert fake.requests() == []
        run = segbill("send", "in.jsonl", "--to", "lago", "--json", "--quiet", "--state", "s.db", "--event", "API *", env=env)
        assert run.exit_code == 0 and orjson.loads(run.stdout)["delivered"] == 2
        run = segbill("send", "in.jsonl", "--to", "lago", "--json", "--quiet", "--state", "s.db", "--event", "API *", env=env)
        assert run.exit_code == 0 and orjson.loads(run.stdout)["files_already_done"] == 1


def test_only_some_files_holding_no_selected_event_is_not_an_error(segbill, tmp_path: Path) -> None:
    write(tmp_path / "a.jsonl", jsonl(MIXED[2]))
    write(tmp_path / "b.jsonl", jsonl(MIXED[0]))
    run = segbill("send", "a.jsonl", "b.jsonl", "--to", "lago", "--dry-run", "--json", "--event", "API *")
    assert run.exit_code == 0 and len(run.events) == 1 and summary_of(run)["warnings"] == []


WINDOWED = [
    track(messageId=f"w{i}", userId=f"user-{i}", context={"groupId": f"group-{i}"}, timestamp="2024-01-05T12:00:00Z")
    for i in range(6)
] + [{"type": "identify", "userId": "user-1", "messageId": "i1"}]
# The decoder's path (userId) and the general path (a nested customer field).
PATHS = [(), ("--customer-from", "context.groupId")]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    ("window", "named"),
    [
        (("--until", "2024-01-01"), "--until"),
        (("--since", "2024-02-01"), "--since"),
        (("--since", "2023-01-01", "--until", "2024-01-05"), "--since/--until"),
    ],
)
def test_a_time_window_that_leaves_out_every_event_read_exits_2(
    segbill, tmp_path: Path, window: tuple[str, ...], named: str, path: tuple[str, ...]
) -> None:
    """A cron job whose --since/--until was mistyped bills nothing: it must not exit 0."""
    write(tmp_path / "in.jsonl", jsonl(*WINDOWED))
    run = segbill("send", "in.jsonl", "--to", "lago", "--dry-run", "--json", *window, *path)
    summary = summary_of(run)
    assert run.exit_code == 2 == summary["exit_code"] and run.events == []
    assert summary["warnings"] == [f"{named} left out every event read (6): nothing was converted (exit 2)."]


def test_a_send_whose_window_leaves_out_everything_sends_nothing_keeps_no_checkpoint_and_exits_2(segbill, tmp_path: Path) -> None:
    write(tmp_path / "in.jsonl", jsonl(*WINDOWED))
    with FakePlatform(api_key="k") as fake:
        env = {"LAGO_API_URL": fake.url, "LAGO_API_KEY": "k"}
        for _ in range(2):  # the rerun reads the file again and says so again
            run = segbill(
                "send", "in.jsonl", "--to", "lago", "--json", "--quiet", "--state", "s.db", "--until", "2024-01-01", env=env
            )
            summary = orjson.loads(run.stdout)
            assert run.exit_code == 2 == summary["exit_code"] and summary["delivered"] == 0
            assert summary["skipped_by_reason"] == {"after_until": 6, "identify": 1} and summary["files_already_done"] == 0
            assert summary["warnings"] == ["--until left out every event read (6): nothing was sent (exit 2)."]
        assert fake.requests() == []


def test_the_rest_of_a_windowed_backfill_past_until_is_no_error(segbill, tmp_path: Path) -> None:
    """A --state backfill whose later files (or the rest of a file) lie past --until: the run
    that finishes them selects nothing new, and that is how a time-ordered export ends, not a
    mistake. It exits 0. A window reads its files again each time (see `Options.partial`), so
    it judges the window on every event read, and the ledger sends nothing twice."""
    write(tmp_path / "a.jsonl", jsonl(*WINDOWED))
    write(tmp_path / "b.jsonl", jsonl(track(messageId="late", timestamp="2024-03-01T00:00:00Z")))
    with FakePlatform(api_key="k") as fake:
        env = {"LAGO_API_URL": fake.url, "LAGO_API_KEY": "k"}
        send = ("send", "--to", "lago", "--json", "--quiet", "--state", "s.db", "--until", "2024-02-01")
        first = segbill(*send, "a.jsonl", env=env)
        assert first.exit_code == 0 and orjson.loads(first.stdout)["delivered"] == 6
        rest = segbill(*send, "a.jsonl", "b.jsonl", env=env)
        summary = orjson.loads(rest.stdout)
        assert rest.exit_code == 0 and summary["warnings"] == []
        assert summary["skipped_by_reason"] == {"duplicate": 6, "after_until": 1, "identify": 1}
        again = segbill(*send, "a.jsonl", "b.jsonl", env=env)
        assert again.exit_code == 0 and orjson.loads(again.stdout)["delivered"] == 0 and len(fake.requests()) == 1


@pytest.mark.parametrize("path", PATHS)
def test_rules_and_window_that_together_leave_out_everything_are_both_named(
    segbill, tmp_path: Path, path: tuple[str, ...]
) -> None:
    write(tmp_path / "in.jsonl", jsonl(*WINDOWED, track(messageId="s1", event="Seat Added")))
    run = segbill("send", "in.jsonl", "--to", "lago", "--dry-run", "--json", "--event", "API *", "--since", "2024-02-01", *path)
    summary = summary_of(run)
    assert run.exit_code == 2 and summary["skipped_by_reason"]["before_since"] == 6
    assert summary["warnings"][-1] == (
        "--event/--exclude-event and --since left out every event read (7): nothing was converted (exit 2)."
    )


@pytest.mark.parametrize("path", PATHS)
def test_a_window_that_keeps_some_events_or_a_shard_that_owns_none_is_not_an_error(
    segbill, tmp_path: Path, path: tuple[str, ...]
) -> None:
    write(
        tmp_path / "in.jsonl",
        jsonl(*WINDOWED, track(messageId="old", context={"groupId": "g"}, timestamp="2023-06-01T00:00:00Z")),
    )
    run = segbill("send", "in.jsonl", "--to", "lago", "--dry-run", "--json", "--since", "2024-01-01", *path)
    assert run.exit_code == 0 and len(run.events) == 6 and summary_of(run)["warnings"] == []
    # One customer, so one shard of 8 owns everything and most own nothing: none of them is an
    # error while the window keeps events; every one of them is once it keeps none.
    write(tmp_path / "one.jsonl", jsonl(*[track(messageId=f"m{i}") for i in range(3)]))
    codes: dict[tuple[str, int], list[int]] = {}
    for until in ("2024-02-01", "2023-01-01"):
        for k in range(8):
            shard = segbill("send", "one.jsonl", "--to", "lago", "--dry-run", "--json", "--shard", f"{k}/8", "--until", until)
            codes.setdefault((until, len(shard.events)), []).append(shard.exit_code)
    assert codes == {("2024-02-01", 3): [0], ("2024-02-01", 0): [0] * 7, ("2023-01-01", 0): [2] * 8}


@pytest.mark.parametrize(("target", "key"), [("lago", "transaction_id"), ("hyperline", "record_id")])
def test_a_configured_id_that_a_message_lacks_dead_letters_it_instead_of_deriving_one(
    segbill, tmp_path: Path, target: str, key: str
) -> None:
    """An id path spelt another way gave every event an id derived from its content: a rerun
    with --state after a run with the right path billed every event again, in silence."""
    write(tmp_path / "in.jsonl", jsonl(*MESSAGES, track(messageId="m3", properties={"request_id": 7})))
    with FakePlatform(api_key="k") as fake:
        env = {f"{target.upper()}_API_URL": fake.url, f"{target.upper()}_API_KEY": "k"}
        first = segbill("send", "in.jsonl", "--to", target, "--state", "s.db", "--quiet", env=env)
        assert first.exit_code == 0 and len(fake.counts(target)) == 3
        (tmp_path / "typo.toml").write_text(f'[{target}]\n{key} = "messageID"\n')
        refused = segbill("send", "in.jsonl", "--to", target, "--state", "s.db", "--config", "typo.toml", env=env)
        assert refused.exit_code == 2 and "keys were made from messageId" in refused.stderr  # the state's own guard
        rerun = segbill("send", "in.jsonl", "--to", target, "--state", "t.db", "--config", "typo.toml", "--json", env=env)
        assert rerun.exit_code == 1 and len(fake.counts(target)) == 3  # nothing billed twice
        summary = orjson.loads(rerun.stdout)
        assert summary["delivered"] == 0 and summary["dead_lettered_by_reason"] == {"missing_id": 3}
        assert [letter["reason"] for letter in rerun.dead_letters][-1] == (
            'The message has no id (a string or an integer) at "messageID", the configured id.'
        )
    (tmp_path / "some.toml").write_text(f'[{target}]\n{key} = ["properties.request_id"]\n')
    some = segbill("send", "in.jsonl", "--to", target, "--dry-run", "--config", "some.toml", dead_letter="some.jsonl")
    assert some.exit_code == 1 and len(some.events) == 1 and len(some.dead_letters) == 2
    without = segbill("send", "in.jsonl", "--to", target, "--dry-run", dead_letter="none.jsonl")
    assert without.exit_code == 0 and len(without.events) == 3  # messageId, the default, is not "configured"


def test_an_amount_that_no_event_had_is_said_in_the_summary(segbill, tmp_path: Path) -> None:
    write(tmp_path / "in.jsonl", jsonl(track(messageId="m1", properties={"amount_cents": 120}), track(messageId="m2")))
    (tmp_path / "typo.toml").write_text('[lago]\nprecise_total_amount_cents = "properties.amount_cent"\n')
    typo = segbill("send", "in.jsonl", "--to", "lago", "--dry-run", "--config", "typo.toml", "--json")
    assert typo.exit_code == 0 and not any("precise_total_amount_cents" in event for event in typo.events)
    assert orjson.loads(typo.stderr.splitlines()[-1])["warnings"] == [
        'precise_total_amount_cents = "properties.amount_cent" was in no event converted: every event went without its amount.'
    ]
    (tmp_path / "right.toml").write_text('[lago]\nprecise_total_amount_cents = "properties.amount_cents"\n')
    right = segbill("send", "in.jsonl", "--to", "lago", "--dry-run", "--config", "right.toml", "--json")
    assert [event.get("precise_total_amount_cents") for event in right.events] == ["120", None]
    assert orjson.loads(right.stderr.splitlines()[-1])["warnings"] == []  # one event had it: no warning


def test_an_input_without_a_message_of_a_type_that_bills_exits_2(segbill, tmp_path: Path, fake: FakePlatform) -> None:
    """Only identify and page calls (a wrong Segment source, a wrong folder, a jq filter that
    kept the wrong type): nothing can bill, and a cron job must not see a quiet success."""
    calls = [
        {"type": "identify", "userId": "u", "messageId": "i1"},
        {"type": "page", "userId": "u", "messageId": "p1", "timestamp": "2024-01-01T00:00:00Z"},
        {"type": "identify", "userId": "v", "messageId": "i2"},
    ]
    write(tmp_path / "calls.jsonl", jsonl(*calls))
    warning = "no message of a type that bills (track) was read, only: identify 2, page 1; nothing was sent (exit 2)."
    for attempt in range(2):  # no checkpoint is kept: the rerun reads the file and says so again
        run, summary = send(segbill, fake.url, "calls.jsonl", "--state", "s.db")
        assert run.exit_code == 2 and summary is not None, attempt
        assert summary["warnings"] == [warning] and summary["files_already_done"] == 0 and summary["read"] == 3
    assert fake.requests("lago") == []
    dry = segbill("send", "calls.jsonl", "--to", "lago", "--dry-run", "--json")
    assert dry.exit_code == 2 and orjson.loads(dry.stderr.splitlines()[-1])["warnings"] == [warning.replace("sent", "converted")]
    piped = segbill("send", "--to", "lago", "--dry-run", input=jsonl(*calls))
    assert piped.exit_code == 2 and "no message of a type that bills" in piped.stderr
    (tmp_path / "pages.toml").write_text('[lago.events]\nbillable_types = { page = "Page Viewed" }\n')
    pages = segbill("send", "calls.jsonl", "--to", "lago", "--dry-run", "--config", "pages.toml")
    assert pages.exit_code == 0 and [event["code"] for event in pages.events] == ["Page Viewed"]
    other_shard = segbill("send", "calls.jsonl", "--to", "lago", "--dry-run", "--shard", "1/2")
    assert other_shard.exit_code == 0  # shard 0 bills (and judges) the messages no shard bills


def test_a_billable_type_that_no_message_had_is_said_in_the_summary(segbill, tmp_path: Path) -> None:
    """`billable_types = { pgae = ... }`, a type spelt another way, billed no page call, in silence."""
    page = {"type": "page", "userId": "u", "messageId": "p1", "timestamp": "2024-01-01T00:00:00Z", "name": "Home"}
    write(tmp_path / "in.jsonl", jsonl(*MESSAGES, page))
    (tmp_path / "typo.toml").write_text('[lago.events]\nbillable_types = { pgae = "Page Viewed", page = "Page Viewed" }\n')
    run = segbill("send", "in.jsonl", "--to", "lago", "--dry-run", "--config", "typo.toml", "--json")
    assert run.exit_code == 0 and [event["code"] for event in run.events] == ["Api Request Made", "Seat Added", "Page Viewed"]
    assert orjson.loads(run.stderr.splitlines()[-1])["warnings"] == [
        '[lago.events] billable_types "pgae" matched no message type read: globs and names match exactly, case included '
        "(segbill inspect lists them)."
    ]

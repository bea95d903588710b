"""A process started with stdin (`<&-`) or stdout (`>&-`) really closed: no command crashes.

A closed stdin is not a terminal and has nothing to read; a closed stdout is handled as a reader
that went away. Each case runs segbill in a subprocess whose fd the shell closed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from segbill.testing.fake_platform import FakePlatform

from .conftest import jsonl, track, write

KEY = "sk-closed-streams"
COMMANDS = {
    "send": ["send", "--to", "lago", "--quiet"],
    "dry run": ["send", "--to", "lago", "--dry-run"],
    "inspect": ["inspect"],
    "check": ["check", "--to", "lago"],
    "reconcile": ["reconcile", "--to", "lago"],
}


@pytest.fixture
def fake() -> Iterator[FakePlatform]:
    with FakePlatform(api_key=KEY) as platform:
        platform.add_billable_metric("api_calls")
        platform.add_subscription("acme", started_at="2024-01-01T00:00:00Z")
        yield platform


@pytest.fixture
def export(tmp_path: Path) -> Path:
    return write(tmp_path / "in.jsonl", jsonl(*(track(messageId=f"m{i}", event="api_calls", userId="acme") for i in range(3))))


def segbill_with(closed: str, args: list[str], fake: FakePlatform, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`segbill ARGS` with fd `closed` ('<&-' or '>&-') closed by the shell, as a user's script would."""
    env = {**os.environ, "LAGO_API_URL": fake.url, "LAGO_API_KEY": KEY}
    command = ["sh", "-c", f'exec "$0" -m segbill "$@" {closed}', sys.executable, *args]
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, check=False, timeout=120)


def assert_no_crash(done: subprocess.CompletedProcess[str]) -> None:
    assert "internal error" not in done.stderr and "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_a_closed_stdin_with_files_given_runs_normally(command: str, fake: FakePlatform, export: Path, tmp_path: Path) -> None:
    done = segbill_with("<&-", [*COMMANDS[command], str(export)], fake, tmp_path)
    assert_no_crash(done)
    assert done.returncode in (0, 1), done.stderr  # check and reconcile judge the organization; neither is a usage error
    if command == "send":
        assert len(fake.events("lago")) == 3
    if command == "dry run":
        assert len(done.stdout.splitlines()) == 3


@pytest.mark.parametrize("command", COMMANDS)
def test_a_closed_stdin_and_no_files_is_a_usage_error(command: str, fake: FakePlatform, tmp_path: Path) -> None:
    for args in (COMMANDS[command], [*COMMANDS[command], "-"]):
        done = segbill_with("<&-", args, fake, tmp_path)
        assert_no_crash(done)
        assert done.returncode == 2 and "stdin is closed" in done.stderr, done.stderr
        assert len(done.stderr.splitlines()) == 1
    assert not fake.events("lago")


def test_a_send_to_a_closed_stdout_delivers_and_puts_the_summary_on_stderr(
    fake: FakePlatform, export: Path, tmp_path: Path
) -> None:
    done = segbill_with(">&-", [*COMMANDS["send"], str(export), "--json"], fake, tmp_path)
    assert_no_crash(done)
    error, summary = done.stderr.splitlines()[-2:]
    assert error.startswith("segbill: error: cannot write the summary to stdout (stdout is closed)")
    assert orjson.loads(summary)["delivered"] == 3 and done.returncode == 0
    assert len(fake.events("lago")) == 3


def test_a_dry_run_to_a_closed_stdout_stops_as_when_the_reader_went_away(
    fake: FakePlatform, export: Path, tmp_path: Path
) -> None:
    done = segbill_with(">&-", [*COMMANDS["dry run"], str(export), "--json"], fake, tmp_path)
    assert_no_crash(done)
    summary = orjson.loads(done.stderr.splitlines()[-1])
    assert done.returncode == 3 and summary["stopped"] == "stdout was closed"
    assert summary["converted"] == 0 and summary["not_attempted"] == 3


@pytest.mark.parametrize("command", ["inspect", "check", "reconcile"])
def test_a_report_for_a_closed_stdout_goes_to_stderr_after_an_error_line(
    command: str, fake: FakePlatform, export: Path, tmp_path: Path
) -> None:
    done = segbill_with(">&-", [*COMMANDS[command], str(export), "--json"], fake, tmp_path)
    assert_no_crash(done)
    error, report = done.stderr.splitlines()[-2:]
    assert error == "segbill: error: stdout is closed; the report follows on stderr."
    result = orjson.loads(report)
    if command == "inspect":
        assert result["records"] == 3 and done.returncode == 0
    else:
        assert result["exit_code"] == done.returncode


def test_a_closed_stderr_keeps_notices_out_of_the_event_stream(fake: FakePlatform, tmp_path: Path) -> None:
    """With stderr closed, Python would print notices to stdout: a dry run's events must stay pure."""
    path = write(tmp_path / "in.jsonl", jsonl(track(messageId="m1"), track(messageId="m2", userId=None)) + b"oops\n")
    done = segbill_with(
        "2>&-", ["send", "--to", "lago", "--dry-run", "--dead-letter", str(tmp_path / "dead.jsonl"), str(path)], fake, tmp_path
    )
    assert done.returncode == 1
    [event] = [orjson.loads(line) for line in done.stdout.splitlines()]  # every line is an event
    assert event["transaction_id"] == "m1"
    assert len((tmp_path / "dead.jsonl").read_bytes().splitlines()) == 2

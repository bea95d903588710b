"""The README is documentation that is tested: its examples load, its JSON matches what the
commands print, and every option of every command is described in it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import typer.main

from segbill.cli import app

from .conftest import ROOT, SAMPLE_DATA, jsonl, platform_env, track, write

README = (ROOT / "README.md").read_text(encoding="utf-8")


def fenced(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.DOTALL)


def test_the_readme_mapping_example_does_what_its_comments_say(segbill, tmp_path: Path) -> None:
    [example] = fenced("toml")
    config = write(tmp_path / "segbill.toml", example.encode())
    message = track(
        event="API Call",
        context={"groupId": "acct-9"},
        properties={
            "subscription_id": "sub-1",
            "tokens": 5,
            "model": {"name": "m", "internal_id": 7},
            "other": 1,
            "amount_cents": 12,
        },
    )
    path = write(
        tmp_path / "in.jsonl",
        jsonl(message, track(event="API Call (test)", messageId="m2"), track(event="Signup", messageId="m3")),
    )
    lago = segbill("send", str(path), "--to", "lago", "--dry-run", "--config", str(config))
    [event] = lago.events
    assert (event["code"], event["external_subscription_id"], event["precise_total_amount_cents"]) == ("api_calls", "sub-1", "12")
    assert event["properties"] == {"total_tokens": 5, "model.name": "m", "source": "segment"}
    assert "excluded" in lago.stderr and "not_included" in lago.stderr
    hyperline = segbill("send", str(path), "--to", "hyperline", "--dry-run", "--config", str(config))
    assert [event["customer_id"] for event in hyperline.events] == ["acct-9"]


def test_the_readme_summary_example_has_the_keys_json_prints(segbill, tmp_path: Path) -> None:
    [example] = [block for block in fenced("json") if '"exit_code"' in block]
    documented = orjson.loads(example)
    path = write(tmp_path / "in.jsonl", jsonl(track(), {"type": "identify", "userId": "u"}))
    run = segbill("send", str(path), "--to", "lago", "--dry-run", "--json")
    printed = orjson.loads(run.stderr.strip().splitlines()[-1])
    assert list(printed) == list(documented)


def test_the_readme_machine_summary_example_writes_json(tmp_path: Path) -> None:
    """Run as written, in a shell, over an export whose dead letters are named on stderr first."""
    [command] = [
        line.split("#")[0].strip() for block in fenced("sh") for line in block.splitlines() if line.endswith("# machine summary")
    ]
    shutil.copytree(SAMPLE_DATA, tmp_path / "exports")
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # this venv's segbill first
    done = subprocess.run(
        ["sh", "-c", command], cwd=tmp_path, env={**os.environ, "PATH": path}, capture_output=True, check=False, timeout=60
    )
    assert done.returncode == 0 and done.stderr == b""  # the pipeline's status is tail's; the summary says how segbill ended
    summary = orjson.loads((tmp_path / "summary.json").read_bytes())
    assert summary["dry_run"] is True and summary["dead_lettered"] > 0 and summary["exit_code"] == 1


def _options() -> list[tuple[str, str]]:
    group = typer.main.get_command(app)
    found = []
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        for param in command.params:
            for option in param.opts:
                if option.startswith("--") and option != "--help":
                    found.append((name, option))
    return found


@pytest.mark.parametrize(("command", "option"), _options())
def test_every_option_of_every_command_is_in_the_readme(command: str, option: str) -> None:
    assert re.search(rf"`[^`]*{re.escape(option)}\b[^`]*`", README), f"segbill {command} {option} is not described in the README"


def _params(command: str) -> dict[str, Any]:
    """A command's parameters by name, as typer built them (with their help)."""
    group = typer.main.get_command(app)
    return {param.name: param for param in group.commands[command].params}  # type: ignore[attr-defined]


@pytest.mark.parametrize("command", ["send", "inspect", "check", "reconcile"])
def test_the_help_says_stdin_is_read_only_where_it_is(segbill, fake, command: str) -> None:
    """What a command does with '-' (against the fake, so nothing leaves the machine), and what
    its help promises."""
    run = segbill(
        command, "-", *([] if command == "inspect" else ["--to", "lago"]), input=jsonl(track()), env=platform_env(fake.url)
    )
    refused = run.exit_code == 2 and "not stdin" in run.stderr
    help_text = " ".join(_params(command)["paths"].help.split())
    assert ("reads stdin" in help_text) == (not refused), (help_text, run.stderr)
    assert ("not stdin" in help_text) == refused


@pytest.mark.parametrize("command", ["send", "check", "reconcile"])
def test_the_shard_help_names_a_state_only_where_the_command_takes_one(command: str) -> None:
    params = _params(command)
    assert "--state" not in params["shard"].help or "state" in params, command

"""Platforms are declared once, in their own module, and registered in one line: a third one
works through the command line, nothing outside the platform modules names one, a dry run loads
no read API, and regrouping the mapping keeps the state files written before."""

from __future__ import annotations

import os
import subprocess
import sys
import tokenize
from pathlib import Path

import httpx
import orjson
import pytest

import segbill
from segbill import delivery
from segbill.delivery import Pacer, wait_hint
from segbill.mapping_file import load
from segbill.pipeline import Options
from segbill.targets import RateHeaders, get_target

from .conftest import ROOT, jsonl, track, write

# `segbill` with one more line in the registry, as a new platform's module would add it.
REGISTERED = (
    "import sys; from segbill.targets import PLATFORMS; PLATFORMS['toy'] = 'tests.toy_platform'; "
    "from segbill import main; sys.argv[0] = 'segbill'; main()"
)


def segbill_with_toy(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", REGISTERED, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_a_third_platform_is_one_module_and_one_registry_line(tmp_path: Path) -> None:
    messages = [
        track(messageId="m1", properties={"tokens": 3, "model": {"name": "small"}}),
        track(messageId="m2", event="Seat Added", properties={"account_id": "acct-9"}),
    ]
    write(tmp_path / "in.jsonl", jsonl(*messages))
    write(
        tmp_path / "segbill.toml", b'[toy]\naccount = ["properties.account_id", "userId"]\n[toy.events]\nother = "snake_case"\n'
    )
    run = segbill_with_toy(tmp_path, "send", "in.jsonl", "--to", "toy", "--dry-run", "--config", "segbill.toml")
    assert run.returncode == 0, run.stderr
    assert [orjson.loads(line) for line in run.stdout.splitlines()] == [
        {
            "event_id": "m1",
            "account": "user-1",
            "name": "api_call",
            "at": "2024-01-01T00:00:00.123Z",
            "data": {"tokens": 3, "model.name": "small"},
        },
        {
            "event_id": "m2",
            "account": "acct-9",
            "name": "seat_added",
            "at": "2024-01-01T00:00:00.123Z",
            "data": {"account_id": "acct-9"},
        },
    ]
    assert "segbill dry run to toy" in run.stderr and "converted        2" in run.stderr  # the summary, as for any platform

    assert "lago|hyperline|toy" in segbill_with_toy(tmp_path, "send", "--help").stdout  # --to offers the registry

    write(tmp_path / "wrong.toml", b'[toy]\ntransaction_id = "messageId"\n')  # Lago's name is not Toy's
    wrong = segbill_with_toy(tmp_path, "send", "in.jsonl", "--to", "toy", "--dry-run", "--config", "wrong.toml")
    assert wrong.returncode == 2
    assert (
        "wrong.toml: toy: unknown key 'transaction_id'; known keys: account, at, event_id, events, name, properties."
        in wrong.stderr
    )
    write(tmp_path / "stripe.toml", b"[stripe]\n")
    stripe = segbill_with_toy(tmp_path, "send", "in.jsonl", "--to", "toy", "--dry-run", "--config", "stripe.toml")
    assert "the tables are [lago], [hyperline] and [toy]." in stripe.stderr

    check = segbill_with_toy(tmp_path, "check", "in.jsonl", "--to", "toy")
    assert check.returncode == 2
    assert "segbill cannot read Toy's API: check and reconcile do not work with --to toy." in check.stderr
    send_check = segbill_with_toy(tmp_path, "send", "in.jsonl", "--to", "toy", "--check", "--api-key", "k")
    assert send_check.returncode == 2 and "--check works with a Lago send" in send_check.stderr


def test_without_its_registry_line_a_platform_is_not_offered(segbill) -> None:
    run = segbill("send", "-", "--to", "toy", "--dry-run", input=jsonl(track()))
    assert run.exit_code == 2 and "'toy' is not one of 'lago', 'hyperline'" in run.stderr


def test_no_code_outside_the_platform_modules_names_a_platform() -> None:
    """The core and the command line read a platform's capabilities, never its name: only the
    registry and the platforms' own modules (and the fake server) hold "lago" or "hyperline"."""
    package = Path(segbill.__file__).parent
    allowed = {package / "targets" / "__init__.py"}  # the registry
    named = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package).as_posix()
        if path in allowed or relative.startswith(("targets/lago", "targets/hyperline", "testing/")):
            continue
        with tokenize.open(path) as source:
            for token in tokenize.generate_tokens(source.readline):
                if token.type == tokenize.STRING and token.string.strip("\"'").lower() in ("lago", "hyperline"):
                    named.append(f"{relative}:{token.start[0]}: {token.line.strip()}")
    assert named == []


def test_a_dry_run_loads_no_read_api_and_no_http_client(tmp_path: Path) -> None:
    write(tmp_path / "in.jsonl", jsonl(track()))
    code = (
        "import atexit, sys; "
        "atexit.register(lambda: print(sorted({'httpx', 'segbill.targets.lago_api', 'segbill.targets.hyperline_api', 'segbill.targets.api', "
        "'segbill.check', 'segbill.reconcile'} & set(sys.modules)), file=sys.stderr)); "
        "from segbill import main; sys.argv[0] = 'segbill'; main()"
    )
    for target in ("lago", "hyperline"):
        run = subprocess.run(
            [sys.executable, "-c", code, "send", "in.jsonl", "--to", target, "--dry-run"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert run.returncode == 0, run.stderr
        assert run.stderr.rstrip().endswith("\n[]"), run.stderr


def test_the_pacer_and_a_429_read_the_headers_their_platform_declares() -> None:
    rates = RateHeaders(
        wait=("ratelimit-reset",), limit="ratelimit-limit", remaining="ratelimit-remaining", reset="ratelimit-reset"
    )
    pacer = Pacer(None, rates)
    pacer.observe(httpx.Headers({"X-RateLimit-Limit": "50", "X-RateLimit-Remaining": "49", "X-RateLimit-Reset": "1"}))
    assert pacer.pace is None  # another platform's headers
    pacer.observe(httpx.Headers({"RateLimit-Limit": "50", "RateLimit-Remaining": "49", "RateLimit-Reset": "1"}))
    assert pacer.pace == pytest.approx(50 * delivery.PACE_MARGIN)
    assert wait_hint(httpx.Headers({"Retry-After": "7", "RateLimit-Reset": "2"}), rates) == 2.0
    assert wait_hint(httpx.Headers({"Retry-After": "7"}), rates) is None


# The README's mapping example as it stood when the conversion digest was pinned.
FULL = b"""
[lago]
transaction_id = "messageId"
external_subscription_id = ["properties.subscription_id", "context.groupId", "userId"]
code = "event"
timestamp = ["timestamp", "originalTimestamp", "receivedAt"]
precise_total_amount_cents = "properties.amount_cents"

[lago.events]
billable_types = { page = "Page Viewed", screen = "Screen Viewed" }
include = ["API *", "Page *", "Seat *"]
exclude = ["* (test)"]
rename = { "API Call" = "api_calls", "Seat Added" = "seats" }
other = "snake_case"

[lago.properties]
include = ["tokens", "model.*"]
exclude = ["model.internal_*"]
rename = { tokens = "total_tokens" }
constants = { source = "segment" }
separator = "."

[hyperline]
customer_id = "context.groupId"
event_type = "event"
record_id = "messageId"
timestamp = "timestamp"
"""


@pytest.mark.parametrize(
    ("target", "config", "flags", "digest"),
    [
        ("lago", None, {}, "7d92e73b65c216b3b4799bebde64f731"),
        ("hyperline", None, {}, "fd742deed8f6cca5587d3e0df47c738c"),
        ("lago", "full.toml", {}, "56f2e54432caaef439a071c1205878da"),
        ("hyperline", "full.toml", {}, "ae47b8d1d24c7fe133a7e2625802f26c"),
        (
            "lago",
            None,
            {"customer_from": "context.groupId", "events": ["API *"], "exclude_events": ["* (test)"]},
            "9de5c892d3e4b1fa6522e5ac51b580df",
        ),
        ("lago", "only_hyperline.toml", {}, "a1afb8328514533f13bfe61616a1cfac"),
    ],
    ids=["default-lago", "default-hyperline", "full-lago", "full-hyperline", "flags", "no-table"],
)
def test_a_state_file_from_before_the_mapping_was_regrouped_keeps_its_conversion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str, config: str | None, flags: dict[str, object], digest: str
) -> None:
    """The digests segbill 0.1.0 (f6eb331, before Mapping's fields were grouped) wrote for these
    mappings: a state file keeps matching its checkpoints and earlier dead letters."""
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "full.toml", FULL)
    write(tmp_path / "only_hyperline.toml", b'[hyperline]\ncustomer_id = "context.groupId"\n')
    mapping = load(target, Path(config) if config else None, **flags)  # type: ignore[arg-type]
    assert Options([], get_target(target), mapping).conversion() == digest

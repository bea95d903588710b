"""The reports a terminal gets (rich tables) show names from the input and the config as they are:
read as markup, `[/x] Call` stopped the report with an internal error (exit 3, no summary) after
a send had delivered, and `[red]` hid itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from segbill.testing.fake_platform import FakePlatform

from .conftest import KEY, in_terminal, jsonl, platform_env, track, write


@pytest.mark.parametrize("dry_run", [False, True], ids=["send", "dry-run"])
def test_the_summary_shows_message_types_and_config_keys_as_they_are(tmp_path: Path, dry_run: bool) -> None:
    odd_types = [{"type": kind, "userId": "u", "messageId": kind} for kind in ("[/x]", "[red]")]
    write(tmp_path / "in.jsonl", jsonl(track(), *odd_types))
    write(tmp_path / "segbill.toml", b'[lago.events]\nrename = { "[/y]" = "z" }\n')
    args = ["send", "in.jsonl", "--to", "lago", "--config", "segbill.toml", "--quiet", *(["--dry-run"] if dry_run else [])]
    with FakePlatform(api_key=KEY) as fake:
        code, out = in_terminal(*args, env=platform_env(fake.url), cwd=tmp_path)
        assert len(fake.events("lago")) == (0 if dry_run else 1)
    assert code == 0, out
    assert "│ skipped       │ 2 " in out  # a rich table
    assert "│ [/x] 1, [red] 1 " in out
    assert 'rename "[/y]" matched no event read' in out


@pytest.mark.parametrize(
    ("command", "rows"),
    [
        ("check", ["│ unknown_code │ 1 │", "│ [/x] Call on [bold red]acme: 1 at 2024-01-01T00:00:00.123Z │"]),
        ("reconcile", ["│ [bold red]acme: 1 missing, 0 extra ", "│ [/x] Call: 1 missing, 0 extra "]),
    ],
)
def test_check_and_reconcile_show_an_event_and_a_subscription_named_as_markup(
    tmp_path: Path, command: str, rows: list[str]
) -> None:
    write(tmp_path / "in.jsonl", jsonl(track(event="[/x] Call", userId="[bold red]acme")))
    with FakePlatform(api_key=KEY) as fake:
        code, out = in_terminal(command, "in.jsonl", "--to", "lago", env=platform_env(fake.url), cwd=tmp_path)
    assert code == 1, out
    assert all(row in out for row in rows), out

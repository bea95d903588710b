"""Mistakes a user makes on the command line exit 2 with one line before anything is read or sent,
and an input with nothing in it never looks like success to cron."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from segbill.cli import app
from segbill.testing.fake_platform import FakePlatform

from .conftest import jsonl, track, write

KEY = "sk-test-usage"


def assert_usage_error(run, words: str) -> None:
    assert run.exit_code == 2, run.stderr
    assert f"segbill: error: {words}" in run.stderr
    assert run.stdout == "" and not run.dead_letter.exists()


@pytest.fixture
def export(tmp_path: Path) -> Path:
    return write(tmp_path / "in.jsonl", jsonl(track(messageId="m1"), track(messageId="m2")) + b"not json\n")


def test_a_dead_letter_path_that_cannot_be_created_is_a_usage_error(segbill, export: Path) -> None:
    run = segbill("send", str(export), "--to", "lago", "--dry-run", dead_letter="/proc/x")
    assert run.exit_code == 2 and run.stdout == ""
    assert "segbill: error: --dead-letter /proc/x: cannot write there (No such file or directory)" in run.stderr


def test_the_probe_leaves_no_dead_letter_file_behind(segbill, tmp_path: Path) -> None:
    write(tmp_path / "good.jsonl", jsonl(track()))
    run = segbill("send", "good.jsonl", "--to", "lago", "--dry-run")
    assert run.exit_code == 0 and not run.dead_letter.exists()


def test_an_empty_api_url_is_a_usage_error_not_the_production_host(segbill, export: Path) -> None:
    """`--api-url "$LAGO_URL"` with the variable unset: the empty value used to mean the default."""
    with FakePlatform(api_key=KEY) as fake:
        run = segbill("send", str(export), "--to", "lago", "--api-url", "", env={"LAGO_API_URL": fake.url, "LAGO_API_KEY": KEY})
        assert fake.requests() == []
    assert_usage_error(run, "--api-url is empty (an unset variable?)")


@pytest.mark.parametrize(
    ("command", "option", "value"),
    [("send", "--rate", "nan"), ("send", "--grace", "inf"), ("send", "--timeout", "nan"), ("check", "--timeout", "inf")],
)
def test_a_number_of_seconds_or_events_per_second_must_be_finite(
    segbill, export: Path, command: str, option: str, value: str
) -> None:
    """click's ranges let nan and inf through: --timeout nan stopped the send with an internal error."""
    with FakePlatform(api_key=KEY) as fake:
        run = segbill(command, str(export), "--to", "lago", option, value, env={"LAGO_API_URL": fake.url, "LAGO_API_KEY": KEY})
        assert fake.requests() == []
    assert run.exit_code == 2 and run.stdout == "" and not run.dead_letter.exists()
    assert f"Invalid value for '{option}': {value} is not a finite number." in run.stderr


@pytest.mark.parametrize(("target", "variable"), [("lago", "LAGO_API_URL"), ("hyperline", "HYPERLINE_API_URL")])
def test_an_empty_url_variable_is_a_usage_error(segbill, export: Path, target: str, variable: str) -> None:
    key = "LAGO_API_KEY" if target == "lago" else "HYPERLINE_API_KEY"
    run = segbill("send", str(export), "--to", target, env={variable: "", key: KEY})
    assert_usage_error(run, f"${variable} is set but empty")


@pytest.mark.parametrize(
    ("since", "until"),
    [("2024-02-01", "2024-01-01"), ("2024-01-07", "2024-01-07"), ("2024-01-07T00:00:00+01:00", "2024-01-06T23:00:00Z")],
)
@pytest.mark.parametrize("command", [["send", "--dry-run"], ["send"], ["check"], ["reconcile"]])
def test_since_at_or_after_until_is_a_usage_error(segbill, export: Path, since: str, until: str, command: list[str]) -> None:
    """For every command that selects: check and reconcile exited 1 (nothing to check or
    reconcile), which a cron job reads as "something is missing"."""
    with FakePlatform(api_key=KEY) as fake:
        run = segbill(
            command[0], str(export), "--to", "lago", *command[1:], "--since", since, "--until", until,
            env={"LAGO_API_URL": fake.url, "LAGO_API_KEY": KEY},
        )  # fmt: skip
        assert fake.requests() == []
    assert_usage_error(run, f"--since {since} is not before --until {until}")
    assert len(run.stderr.splitlines()) == 1


@pytest.mark.parametrize("value", ["0", "many", "257"])
def test_a_dry_run_checks_concurrency_too(segbill, export: Path, value: str) -> None:
    run = segbill("send", str(export), "--to", "lago", "--dry-run", "--concurrency", value)
    assert_usage_error(run, f"--concurrency {value!r} is not auto or a number from 1 to 256")


def test_a_config_naming_a_folder_says_it_is_a_folder(segbill, export: Path, tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    run = segbill("send", str(export), "--to", "lago", "--dry-run", "--config", "conf")
    assert_usage_error(run, "--config conf is a folder")


@pytest.mark.parametrize("command", ["send", "inspect"])
@pytest.mark.parametrize("contents", [[], ["README.md", "manifest.txt"]])
def test_a_folder_holding_no_exports_is_a_usage_error_naming_it(
    segbill, tmp_path: Path, command: str, contents: list[str]
) -> None:
    mount = tmp_path / "mnt" / "exports"  # an unmounted volume's mount point is an empty folder
    mount.mkdir(parents=True)
    for name in contents:
        (mount / name).write_text("not an export\n")
    run = segbill(command, str(mount), *(["--to", "lago", "--dry-run"] if command == "send" else []))
    assert_usage_error(run, f"{mount}: no exports in this folder")


@pytest.mark.parametrize("source", ["empty file", "blank lines", "stdin"])
def test_an_input_with_no_records_exits_2_with_the_summary(segbill, tmp_path: Path, source: str) -> None:
    if source == "stdin":
        run = segbill("send", "--to", "lago", "--dry-run", "--json", input=b"")
        name = "<stdin>"
    else:
        write(tmp_path / "empty.jsonl", b"" if source == "empty file" else b"\n  \n\n")
        run = segbill("send", "empty.jsonl", "--to", "lago", "--dry-run", "--json")
        name = "empty.jsonl"
    assert run.exit_code == 2
    assert f"segbill: error: no records in {name}: the input is empty." in run.stderr
    summary = orjson.loads(run.stderr.splitlines()[-1])
    assert summary["read"] == 0 and summary["exit_code"] == 2


def test_a_dead_letter_symlink_to_a_file_yet_to_be_made_is_followed(segbill, export: Path, tmp_path: Path) -> None:
    (tmp_path / "link.jsonl").symlink_to("target.jsonl")
    run = segbill("send", str(export), "--to", "lago", "--dry-run", dead_letter="link.jsonl")
    assert run.exit_code == 1 and len(run.dead_letters) == 1  # read through the link
    assert (tmp_path / "link.jsonl").is_symlink() and (tmp_path / "target.jsonl").is_file()


@pytest.mark.parametrize(
    "command",
    [
        ["send", "--to", "lago"],
        ["send", "--to", "lago", "--dry-run"],
        ["inspect"],
        ["check", "--to", "lago"],
        ["reconcile", "--to", "lago"],
    ],
)
@pytest.mark.parametrize("paths", [[""], ["in.jsonl", ""]])
def test_an_empty_path_is_a_usage_error_not_the_current_folder(
    segbill, export: Path, command: list[str], paths: list[str]
) -> None:
    """`segbill send "$EXPORTS"` with the variable unset, run where exports lie: nothing is read."""
    with FakePlatform(api_key=KEY) as fake:
        run = segbill(*command, *paths, env={"LAGO_API_URL": fake.url, "LAGO_API_KEY": KEY})
        assert fake.requests() == []
    assert_usage_error(run, "an input path is empty (an unset variable?)")
    assert len(run.stderr.splitlines()) == 1


@pytest.mark.parametrize(("target", "size", "limit"), [("lago", "101", "100"), ("hyperline", "5001", "5000")])
def test_a_dry_run_checks_the_batch_size_too(segbill, export: Path, target: str, size: str, limit: str) -> None:
    run = segbill("send", str(export), "--to", target, "--dry-run", "--batch-size", size)
    assert_usage_error(run, f"--batch-size {size} is over")
    assert f"limit of {limit} events per request" in run.stderr


SECRET = "pw-SECRET2"


@pytest.mark.parametrize(
    "command",
    [
        ["send", "--to", "lago"],
        ["send", "--to", "lago", "--api-key", "wrong-key"],
        ["send", "--to", "hyperline", "--state", "state.db"],
        ["check", "--to", "lago"],
        ["reconcile", "--to", "lago", "--missing", "missing.jsonl"],
    ],
)
@pytest.mark.parametrize("reachable", [True, False])
@pytest.mark.parametrize("given_as", ["--api-url", "variable", "no scheme"])
def test_a_password_in_the_api_url_is_refused_and_never_shown(
    segbill, export: Path, tmp_path: Path, command: list[str], reachable: bool, given_as: str
) -> None:
    """A user:password@ in the URL is not how either platform authenticates (httpx would even
    replace the Bearer key with it): refused before any request, without repeating the URL."""
    with FakePlatform(api_key=KEY) as fake:
        port = fake.url.rsplit(":", 1)[1] if reachable else "9"  # nothing listens on port 9 (discard)
        url = f"http://user:{SECRET}@127.0.0.1:{port}"
        variable = "LAGO_API_URL" if command[2] == "lago" else "HYPERLINE_API_URL"
        env = {"LAGO_API_KEY": KEY, "HYPERLINE_API_KEY": KEY}
        if given_as == "variable":
            env[variable] = url
            args = [*command, str(export)]
        else:
            args = [*command, str(export), "--api-url", url if given_as == "--api-url" else url.removeprefix("http://")]
        run = segbill(*args, env=env)
        assert fake.requests() == []
    assert_usage_error(run, f"{'$' + variable if given_as == 'variable' else '--api-url'} holds a user name or password")
    written = b"".join(path.read_bytes() for path in tmp_path.rglob("*") if path.is_file())
    assert SECRET not in run.stdout + run.stderr and SECRET.encode() not in written


def _another_name(tmp_path: Path, how: str, name: str) -> str:
    """`name` itself, or a new name for it: a symlink, or a hard link to the file made now."""
    if how == "same path":
        return name
    if how == "symlink":
        (tmp_path / f"link-{name}").symlink_to(name)
    else:
        (tmp_path / name).touch()
        (tmp_path / f"link-{name}").hardlink_to(tmp_path / name)
    return f"link-{name}"


@pytest.mark.parametrize("how", ["same path", "symlink", "hard link"])
@pytest.mark.parametrize("dry_run", [False, True])
def test_the_dead_letter_file_and_the_state_cannot_be_one_file(
    segbill, export: Path, tmp_path: Path, how: str, dry_run: bool
) -> None:
    """SQLite's pages wrote over the dead letters the summary counted, and a rerun said the file
    was finished: refused before anything is read or sent, naming both options."""
    other = _another_name(tmp_path, how, "same.db")
    with FakePlatform(api_key=KEY) as fake:
        run = segbill(
            "send", str(export), "--to", "lago", "--state", "same.db", *(["--dry-run"] if dry_run else []),
            dead_letter=other, env={"LAGO_API_URL": fake.url, "LAGO_API_KEY": KEY},
        )  # fmt: skip
        assert fake.requests() == []
    assert run.exit_code == 2 and run.stdout == "", run.stderr
    link = "" if how == "same path" else " under another name (a link)"
    assert f"segbill: error: --dead-letter {other} and --state same.db are one file{link}:" in run.stderr
    assert not (tmp_path / "same.db").exists() or (tmp_path / "same.db").stat().st_size == 0


def test_the_default_dead_letter_file_cannot_be_the_state(segbill, export: Path, tmp_path: Path) -> None:
    with FakePlatform(api_key=KEY) as fake:
        run = CliRunner().invoke(
            app, ["send", str(export), "--to", "lago", "--state", "segbill-dead-letter.jsonl"],
            env={"LAGO_API_URL": fake.url, "LAGO_API_KEY": KEY},
        )  # fmt: skip
        assert fake.requests() == []
    assert run.exit_code == 2
    assert (
        "error: the default --dead-letter segbill-dead-letter.jsonl and --state segbill-dead-letter.jsonl are one file"
        in run.stderr
    )
    assert not (tmp_path / "segbill-dead-letter.jsonl").exists()


@pytest.mark.parametrize("side", ["-wal", "-shm", "-journal"])
def test_the_dead_letter_file_cannot_be_a_file_sqlite_keeps_beside_the_state(
    segbill, export: Path, tmp_path: Path, side: str
) -> None:
    run = segbill("send", str(export), "--to", "lago", "--dry-run", "--state", "state.db", dead_letter=f"state.db{side}")
    assert_usage_error(run, f"--dead-letter state.db{side} is the file state.db{side} SQLite keeps beside --state state.db")


def test_the_state_file_cannot_be_an_input(segbill, tmp_path: Path) -> None:
    good = write(tmp_path / "good.jsonl", jsonl(track()))
    with FakePlatform(api_key=KEY) as fake:
        env = {"LAGO_API_URL": fake.url, "LAGO_API_KEY": KEY}
        assert segbill("send", str(good), "--to", "lago", "--state", "state.db", env=env).exit_code == 0
    run = segbill("send", "state.db", "--to", "lago", "--dry-run", "--state", "state.db")
    assert_usage_error(run, "state.db is both an input and --state state.db: a state file is no export.")


@pytest.mark.parametrize("how", ["same path", "symlink", "hard link"])
def test_reconciles_missing_file_and_state_cannot_be_one_file(segbill, tmp_path: Path, how: str) -> None:
    """Refused naming both options (it used to say only that --missing already exists), before
    anything is read or the state is touched."""
    export = write(tmp_path / "good.jsonl", jsonl(track()))
    with FakePlatform(api_key=KEY) as fake:
        env = {"LAGO_API_URL": fake.url, "LAGO_API_KEY": KEY}
        assert segbill("send", str(export), "--to", "lago", "--state", "state.db", env=env).exit_code == 0
        before = (tmp_path / "state.db").read_bytes()
        requests = len(fake.requests())
        other = _another_name(tmp_path, how, "state.db")
        run = segbill("reconcile", str(export), "--to", "lago", "--state", "state.db", "--missing", other, env=env)
        assert len(fake.requests()) == requests
    link = "" if how == "same path" else " under another name (a link)"
    assert_usage_error(run, f"--missing {other} and --state state.db are one file{link}:")
    assert (tmp_path / "state.db").read_bytes() == before


@pytest.mark.parametrize("side", ["-wal", "-journal"])
def test_reconciles_missing_file_cannot_be_a_file_sqlite_keeps_beside_the_state(
    segbill, export: Path, tmp_path: Path, side: str
) -> None:
    (tmp_path / "state.db").touch()
    run = segbill(
        "reconcile", str(export), "--to", "lago", "--state", "state.db", "--missing", f"state.db{side}", env={"LAGO_API_KEY": KEY}
    )
    assert_usage_error(run, f"--missing state.db{side} is the file state.db{side} SQLite keeps beside --state state.db")
    assert not (tmp_path / f"state.db{side}").exists()


@pytest.mark.parametrize(
    ("command", "option"),
    [("send", "--state"), ("send", "--dead-letter"), ("reconcile", "--missing"), ("reconcile", "--state")],
)
def test_a_path_that_is_a_symlink_loop_is_a_usage_error(segbill, export: Path, tmp_path: Path, command: str, option: str) -> None:
    """Resolving such a path raises: one line naming the option, not an internal error."""
    (tmp_path / "loop").symlink_to("loop")
    with FakePlatform(api_key=KEY) as fake:
        env = {"LAGO_API_URL": fake.url, "LAGO_API_KEY": KEY}
        run = segbill(command, str(export), "--to", "lago", option, "loop", env=env)
        assert fake.requests() == []
    assert_usage_error(run, f"{option} loop is a link that leads back to itself (a symlink loop); give a file path.")
    assert run.stderr.count("\n") == 1

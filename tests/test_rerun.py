"""Reruns on one --state: another selection does its own work, another destination is refused,
every bad record is dead-lettered once per backfill, and the summary says what a rerun did."""

from __future__ import annotations

import re
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from segbill.cli import app
from segbill.state import fingerprint
from segbill.testing.fake_platform import FakePlatform

from .conftest import KEY, jsonl, process_env, send, track, write

pytestmark = pytest.mark.usefixtures("fast_backoff")


def export(count: int = 56) -> list[dict[str, Any]]:
    """Two event names, two days a message apart, customers a-f; every 7th has no userId."""
    return [
        track(
            messageId=f"m{i}",
            event="API Call" if i % 2 else "Upload",
            userId=None if i % 7 == 3 else f"cus_{'abcdef'[i % 6]}",
            anonymousId=f"anon-{i}",
            timestamp=f"2024-01-{1 + i % 28:02d}T00:00:00.000Z",
        )
        for i in range(count)
    ]


def billed_by(segbill, *args: str) -> set[str]:
    """What a selection bills on its own: a dry run with no state is the reference."""
    run = segbill("send", "a.jsonl", "--to", "lago", "--dry-run", *args, dead_letter="reference-dl.jsonl")
    return {event["transaction_id"] for event in run.events}


CONFIG_A = '[lago.events]\ninclude = ["API *"]\n'
CONFIG_B = '[lago.events]\ninclude = ["Upl*"]\n'


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (["--until", "2024-01-10"], ["--since", "2024-01-10"]),
        (["--event", "API *"], ["--event", "Upload"]),
        (["--exclude-event", "Upload"], ["--exclude-event", "API *"]),
        (["--config", "a.toml"], ["--config", "b.toml"]),
        ([], ["--customer-from", "anonymousId"]),
        (["--shard", "0/2"], ["--shard", "1/2"]),
    ],
    ids=["since-until", "event", "exclude-event", "config", "customer-from", "shard"],
)
def test_a_rerun_with_another_selection_does_its_own_work_and_sends_nothing_twice(
    segbill, tmp_path: Path, fake: FakePlatform, first: list[str], second: list[str]
) -> None:
    write(tmp_path / "a.jsonl", jsonl(*export()))
    write(tmp_path / "a.toml", CONFIG_A.encode())
    write(tmp_path / "b.toml", CONFIG_B.encode())
    expected = billed_by(segbill, *first) | billed_by(segbill, *second)
    send(segbill, fake.url, "a.jsonl", "--state", "s.db", *first)
    _run, summary = send(segbill, fake.url, "a.jsonl", "--state", "s.db", *second)
    assert summary["files_already_done"] == 0 and summary["read"] == len(export())
    assert set(fake.counts("lago")) == expected
    assert set(fake.writes("lago").values()) == {1}
    # The same selection again finds its own checkpoint: the file is finished for it. A window or
    # a shard reads its files again (its records claim their keys), and the ledger sends nothing.
    _, again = send(segbill, fake.url, "a.jsonl", "--state", "s.db", *second)
    if second[0] in ("--since", "--shard"):
        assert again["read"] == len(export()) and again["files_already_done"] == again["delivered"] == 0
        assert again["skipped_by_reason"]["duplicate"] == len(billed_by(segbill, *second))
    else:
        assert again["read"] == 0 and again["files_already_done"] == 1
    assert set(fake.writes("lago").values()) == {1}


def test_another_platform_on_a_state_that_delivered_is_refused(segbill, tmp_path: Path, fake: FakePlatform) -> None:
    write(tmp_path / "a.jsonl", jsonl(*export(10)))
    send(segbill, fake.url, "a.jsonl", "--state", "s.db")
    for args in (["--to", "hyperline"], ["--to", "hyperline", "--dry-run"]):
        env = {"HYPERLINE_API_URL": fake.url, "HYPERLINE_API_KEY": KEY}
        run = segbill("send", "a.jsonl", "--state", "s.db", *args, env=env, dead_letter="other.jsonl")
        assert run.exit_code == 2
        assert f"--state s.db holds deliveries to lago at {fake.url}; this run would send to hyperline" in run.stderr
        assert "Use a new --state file for another destination" in run.stderr
    assert fake.counts("hyperline") == {}


def test_another_api_url_on_a_state_that_delivered_is_refused(segbill, tmp_path: Path, fake: FakePlatform) -> None:
    write(tmp_path / "a.jsonl", jsonl(*export(10)))
    write(tmp_path / "b.jsonl", jsonl(*export(20)))
    send(segbill, fake.url, "a.jsonl", "--state", "s.db")
    with FakePlatform(api_key=KEY) as other:
        run, _ = send(segbill, other.url, "b.jsonl", "--state", "s.db", human=True)
        assert run.exit_code == 2
        assert f"holds deliveries to lago at {fake.url}; this run would send to lago at {other.url}." in run.stderr
        assert other.requests() == []
    # The same place written another way is the same destination.
    same = fake.url.upper().replace("HTTP://", "http://") + "/"
    _, summary = send(segbill, same, "b.jsonl", "--state", "s.db")
    assert summary["delivered"] == 8 and summary["skipped_by_reason"] == {"duplicate": 9}
    assert set(fake.writes("lago").values()) == {1}


def test_a_state_that_delivered_nothing_may_change_its_url(segbill, tmp_path: Path, fake: FakePlatform) -> None:
    write(tmp_path / "a.jsonl", jsonl(*export(10)))
    with FakePlatform(api_key="another-key") as wrong:  # a wrong key: nothing is delivered there
        run, _ = send(segbill, wrong.url, "a.jsonl", "--state", "s.db")
        assert run.exit_code == 3
    run, summary = send(segbill, fake.url, "a.jsonl", "--state", "s.db")
    assert run.exit_code == 0 and summary["delivered"] == 9
    assert summary["skipped_by_reason"] == {"dead_lettered_before": 1}  # m3, no userId: read ahead before the 401


# -- dead letters, once per backfill ---------------------------------------------------------------


def with_bad_lines(count: int, every: int) -> tuple[bytes, int]:
    """`count` good messages with an unreadable line after every `every`-th: (data, bad lines)."""
    lines = []
    bad = 0
    for i in range(count):
        lines.append(orjson.dumps(track(messageId=f"m{i}", userId=f"cus_{i % 7}", timestamp="2024-01-02T00:00:00Z")))
        if i % every == 0:
            lines.append(b"not json %d" % i)
            bad += 1
    return b"\n".join(lines) + b"\n", bad


def assert_each_once(dead_letter: Path, bad: int) -> None:
    entries = [orjson.loads(line) for line in dead_letter.read_bytes().splitlines()]
    lines = Counter(entry["source"]["line"] for entry in entries)
    assert len(entries) == bad and set(lines.values()) == {1}


def test_interrupted_and_resumed_every_bad_record_is_dead_lettered_once(tmp_path: Path) -> None:
    data, bad = with_bad_lines(3000, 10)
    write(tmp_path / "a.jsonl", data)
    with FakePlatform(api_key=KEY, latency=0.03) as fake:
        env = process_env(fake.url)
        command = [
            sys.executable,
            "-m",
            "segbill",
            "send",
            "a.jsonl",
            "--to",
            "lago",
            "--quiet",
            "--state",
            "s.db",
            "--batch-size",
            "20",
            "--concurrency",
            "2",
        ]
        process = subprocess.Popen([*command, "--json"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert fake.wait_until(lambda: len(fake.counts("lago")) >= 500)
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=60)
        assert process.returncode == 130
        first = orjson.loads(out)
        rerun = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, check=False, text=True)
        assert rerun.returncode == 1, rerun.stderr
    assert_each_once(tmp_path / "segbill-dead-letter.jsonl", bad)
    assert first["interrupted"] is True and first["not_attempted"] > 0  # the read-ahead is what was read again
    resumed = int(rerun.stderr.split("resumed at       a.jsonl:")[1].split()[0])
    assert 1 < resumed < 3300
    written = int(rerun.stderr.split("dead-lettered    ")[1].split()[0].replace(",", ""))
    before = int(rerun.stderr.split("dead_lettered_before ")[1].split(")")[0].replace(",", ""))
    assert first["dead_lettered"] + written == bad and before > 0
    assert fake.counts("lago") == {f"m{i}": 1 for i in range(3000)}


def test_a_run_stopped_by_a_wrong_key_and_rerun_dead_letters_each_record_once(
    segbill, tmp_path: Path, fake: FakePlatform
) -> None:
    data, bad = with_bad_lines(300, 5)
    write(tmp_path / "a.jsonl", data)
    fake.script(["401"])
    first, summary = send(segbill, fake.url, "a.jsonl", "--state", "s.db", "--batch-size", "10", "--concurrency", "1")
    assert first.exit_code == 3 and summary["dead_lettered"] > 0 and summary["delivered"] == 0
    second, rest = send(segbill, fake.url, "a.jsonl", "--state", "s.db", "--batch-size", "10", "--concurrency", "1")
    assert second.exit_code == 1
    assert summary["dead_lettered"] + rest["dead_lettered"] == bad
    assert rest["skipped_by_reason"] == {"dead_lettered_before": summary["dead_lettered"]}
    assert_each_once(first.dead_letter, bad)


def test_another_time_window_does_not_dead_letter_unreadable_lines_again(segbill, tmp_path: Path, fake: FakePlatform) -> None:
    data, bad = with_bad_lines(30, 10)
    write(tmp_path / "a.jsonl", data)
    send(segbill, fake.url, "a.jsonl", "--state", "s.db", "--until", "2024-01-02")
    _, summary = send(segbill, fake.url, "a.jsonl", "--state", "s.db", "--since", "2024-01-02")
    assert summary["delivered"] == 30 and summary["skipped_by_reason"] == {"dead_lettered_before": bad}
    assert_each_once(tmp_path / "dead.jsonl", bad)


def test_a_fixed_mapping_delivers_what_the_old_one_dead_lettered(segbill, tmp_path: Path, fake: FakePlatform) -> None:
    write(tmp_path / "a.jsonl", jsonl(*export(14)))
    first, summary = send(segbill, fake.url, "a.jsonl", "--state", "s.db")
    assert summary["dead_lettered_by_reason"] == {"missing_customer": 2}
    _, fixed = send(segbill, fake.url, "a.jsonl", "--state", "s.db", "--customer-from", "anonymousId")
    assert fixed["delivered"] == 2 and fixed["dead_lettered"] == 0
    assert fixed["skipped_by_reason"] == {"duplicate": 12}
    assert len(first.dead_letters) == 2


def test_a_dry_run_writes_no_dead_letter_file_unless_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "a.jsonl", b"bad\n" + jsonl(track()))
    for _ in range(3):
        run = CliRunner().invoke(app, ["send", "a.jsonl", "--to", "lago", "--dry-run"])
        assert run.exit_code == 1
    assert not (tmp_path / "segbill-dead-letter.jsonl").exists()
    assert "dead-letter file not written  (a dry run writes one only with --dead-letter PATH)" in run.stderr


def test_a_dry_run_replaces_its_own_dead_letter_file_and_never_a_sends(segbill, tmp_path: Path, fake: FakePlatform) -> None:
    write(tmp_path / "a.jsonl", b"bad\n" + jsonl(track()))
    for _ in range(3):
        preview = segbill("send", "a.jsonl", "--to", "lago", "--dry-run", "--json", dead_letter="preview.jsonl")
    [entry] = preview.dead_letters
    assert entry["dry_run"] is True and orjson.loads(preview.stderr.splitlines()[-1])["dead_lettered"] == 1
    sent, _ = send(segbill, fake.url, "a.jsonl")
    real = sent.dead_letter.read_bytes()
    refused = segbill("send", "a.jsonl", "--to", "lago", "--dry-run")
    assert refused.exit_code == 2
    assert (
        "--dead-letter dead.jsonl holds dead letters of a send; a dry run replaces its file: name another one." in refused.stderr
    )
    assert sent.dead_letter.read_bytes() == real


# -- the summary of a rerun ------------------------------------------------------------------------


def test_the_summary_shows_what_a_rerun_did(segbill, tmp_path: Path, fake: FakePlatform) -> None:
    write(tmp_path / "a.jsonl", jsonl(*export(10)))
    write(tmp_path / "b.jsonl", jsonl({"type": "identify"}, {"type": "page"}, *export(30)[10:]))
    send(segbill, fake.url, "a.jsonl")  # without --state: the ledger does not know these
    run, summary = send(segbill, fake.url, "a.jsonl", "--state", "s.db")
    assert summary["already_delivered"] == 9
    run, _ = send(segbill, fake.url, "a.jsonl", "--state", "s.db", human=True)
    assert "files skipped    1  (finished by an earlier run with --state s.db)" in run.stderr
    fake.script(["401"])
    stopped, _ = send(segbill, fake.url, "b.jsonl", "--state", "s.db", human=True)
    assert stopped.exit_code == 3
    assert "Once the cause is fixed, run the same command again: --state s.db continues where this run stopped." in stopped.stderr
    resumed, _ = send(segbill, fake.url, "a.jsonl", "b.jsonl", "--state", "s.db", human=True)
    assert "resumed at       b.jsonl:4  (file:line)" in resumed.stderr  # lines 1-3 had their outcome: skipped, dead-lettered
    assert "files skipped    1" in resumed.stderr
    _again, summary = send(segbill, fake.url, "a.jsonl", "b.jsonl", "--state", "s.db", "--until", "2024-01-20")
    assert summary["resumed_at"] == [] and summary["interrupted"] is False


def test_after_an_outage_stop_the_advice_names_the_unreachable_and_following_it_delivers_everything(
    segbill, tmp_path: Path, fake: FakePlatform
) -> None:
    """Three batches fail every retry: the run stops, 300 events dead-lettered `unreachable`. The
    rerun resumes past them (they have their outcome), so "run the same command again" alone
    left them unbilled; the advice also says to replay the dead-letter file, and doing exactly
    what it says stores every event once."""
    write(tmp_path / "a.jsonl", jsonl(*(track(messageId=f"m{i}") for i in range(500))))
    options = ("a.jsonl", "--state", "s.db", "--max-retries", "1", "--concurrency", "1")
    fake.script(["503"] * 6)
    stopped, _ = send(segbill, fake.url, *options, human=True)
    assert stopped.exit_code == 3 and "unreachable 300" in stopped.stderr
    [run_id] = re.findall(r"run +([0-9a-f]{6}) ", stopped.stderr)
    advice = stopped.stderr.split("continues where this run stopped.\n")[1]
    assert advice.startswith("Then replay the 300 events dead-lettered unreachable: ")
    move = f"mv dead.jsonl retry-{run_id}.jsonl && segbill send retry-{run_id}.jsonl --to lago --state s.db ..."
    assert move in advice
    rerun, summary = send(segbill, fake.url, *options)
    assert rerun.exit_code == 0 and summary is not None and summary["delivered"] == 200
    (tmp_path / "dead.jsonl").rename(tmp_path / f"retry-{run_id}.jsonl")
    replay, summary = send(segbill, fake.url, f"retry-{run_id}.jsonl", "--state", "s.db")
    assert replay.exit_code == 0 and summary is not None and summary["delivered"] == 300
    assert sorted(event["transaction_id"] for event in fake.events("lago")) == sorted(f"m{i}" for i in range(500))


def test_a_send_that_finished_with_unreachable_dead_letters_says_to_replay_them(
    segbill, tmp_path: Path, fake: FakePlatform
) -> None:
    """One batch fails every retry, the rest are delivered: the run finishes (exit 1), and the
    same command again would skip the whole file as finished."""
    write(tmp_path / "a.jsonl", jsonl(*(track(messageId=f"m{i}") for i in range(300))))
    fake.script(["503"] * 2)
    run, _ = send(segbill, fake.url, "a.jsonl", "--state", "s.db", "--max-retries", "1", "--concurrency", "1", human=True)
    assert run.exit_code == 1 and "unreachable 100" in run.stderr
    assert "\nOnce the platform answers, replay the 100 events dead-lettered unreachable: " in run.stderr


def test_a_rerun_that_skips_earlier_dead_letters_says_they_were_not_sent(segbill, tmp_path: Path, fake: FakePlatform) -> None:
    data, bad = with_bad_lines(30, 10)
    write(tmp_path / "a.jsonl", data)
    send(segbill, fake.url, "a.jsonl", "--state", "s.db", "--until", "2024-01-02")
    rerun, _ = send(segbill, fake.url, "a.jsonl", "--state", "s.db", "--since", "2024-01-02", human=True)
    assert rerun.exit_code == 0 and f"dead_lettered_before {bad}" in rerun.stderr
    assert f"{bad} records were skipped as dead-lettered by an earlier run on --state s.db: they were not sent" in rerun.stderr


def test_a_resend_of_what_the_platform_holds_is_shown_as_already_delivered(segbill, tmp_path: Path, fake: FakePlatform) -> None:
    write(tmp_path / "a.jsonl", jsonl(*export(10)))
    send(segbill, fake.url, "a.jsonl")
    run, _ = send(segbill, fake.url, "a.jsonl", human=True)
    assert "already delivered 9  (of those delivered: the platform held them already)" in run.stderr


def test_an_interrupted_send_says_so_and_how_to_resume(tmp_path: Path) -> None:
    write(tmp_path / "a.jsonl", jsonl(*(track(messageId=f"m{i}") for i in range(2000))))
    with FakePlatform(api_key=KEY, latency=0.05) as fake:
        env = process_env(fake.url)
        for state, advice in (
            (["--state", "s.db"], "To resume, run the same command again: --state s.db continues where this run stopped."),
            ([], "To resume, run the same command again: without --state it reads everything again"),
        ):
            command = [
                sys.executable,
                "-m",
                "segbill",
                "send",
                "a.jsonl",
                "--to",
                "lago",
                "--quiet",
                "--batch-size",
                "10",
                "--concurrency",
                "1",
                *state,
            ]
            process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            assert fake.wait_until(lambda: len(fake.requests("lago")) >= 2)
            process.send_signal(signal.SIGINT)
            _, err = process.communicate(timeout=60)
            assert process.returncode == 130
            assert err.startswith("segbill send to lago: interrupted\n")
            assert advice in err
            fake.reset()


@pytest.mark.parametrize(
    ("to", "dry_run", "says", "never"),
    [
        ("hyperline", [], "not sent again (Hyperline would move the stored event to the other time)", "ClickHouse"),
        ("lago", [], "not sent again (on Lago's ClickHouse store it would be billed twice)", "Hyperline"),
        ("hyperline", ["--dry-run"], "m1 came before with another event time; a send would skip it (Hyperline", "already sent"),
    ],
)
def test_a_shifted_repeat_is_explained_in_the_platforms_terms(
    segbill, tmp_path: Path, fake: FakePlatform, to: str, dry_run: list[str], says: str, never: str
) -> None:
    write(tmp_path / "a.jsonl", jsonl(track(messageId="m1"), track(messageId="m1", timestamp="2024-01-01T00:00:00.124Z")))
    run, _ = send(segbill, fake.url, "a.jsonl", *dry_run, to=to, human=True)
    assert says in run.stderr and never not in run.stderr
    assert "skipped          1  (duplicate_shifted 1)" in run.stderr


def test_a_state_from_before_selections_reads_its_files_again_and_keeps_its_ledger(
    segbill, tmp_path: Path, fake: FakePlatform
) -> None:
    path = write(tmp_path / "a.jsonl", jsonl(*export(10)))
    db = sqlite3.connect(tmp_path / "s.db")
    db.executescript(
        "CREATE TABLE ledger (target TEXT NOT NULL, key TEXT NOT NULL, millis INTEGER NOT NULL, delivered INTEGER NOT NULL,"
        " PRIMARY KEY (target, key)) WITHOUT ROWID;"
        "CREATE TABLE checkpoints (path TEXT PRIMARY KEY, size INTEGER NOT NULL, fingerprint TEXT NOT NULL,"
        " offset INTEGER NOT NULL, line INTEGER NOT NULL, complete INTEGER NOT NULL, updated TEXT NOT NULL);"
    )
    db.execute("INSERT INTO ledger VALUES ('lago', 'm0', 1704067200000, 1)")
    db.execute(
        "INSERT INTO checkpoints VALUES (?, ?, ?, ?, 10, 1, datetime('now'))",
        (str(path.resolve()), path.stat().st_size, fingerprint(path), path.stat().st_size),
    )
    db.commit()
    db.close()
    refused = segbill("send", "a.jsonl", "--to", "hyperline", "--dry-run", "--state", "s.db", dead_letter="x.jsonl")
    assert refused.exit_code == 2 and "--state s.db holds deliveries to lago; this run would send to hyperline." in refused.stderr
    _, summary = send(segbill, fake.url, "a.jsonl", "--state", "s.db", "--until", "2024-01-20")
    assert summary["read"] == 10 and summary["skipped_by_reason"] == {"duplicate": 1}
    assert summary["delivered"] == 8

"""A full disk under the dead-letter file or the state: one line, the summary, exit 3, and a rerun
that finishes the job with every event stored once.

The failures are real: /dev/full answers every write with ENOSPC, and RLIMIT_FSIZE (in a
subprocess) makes SQLite's writes past the limit fail with EFBIG, the same path a full disk takes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from segbill.parallel import AHEAD
from segbill.testing.fake_platform import FakePlatform

from .conftest import assert_adds_up, jsonl, process_env, track, write

DEV_FULL = Path("/dev/full")
needs_dev_full = pytest.mark.skipif(not DEV_FULL.exists(), reason="no /dev/full on this system")


def export(path: Path, count: int) -> list[str]:
    """`count` track messages with a line that is not JSON in the middle; their message ids."""
    messages = [track(messageId=f"m{i}", userId=f"cus_{i % 7}") for i in range(count)]
    write(path, jsonl(*messages[: count // 2]) + b"not json\n" + jsonl(*messages[count // 2 :]))
    return [message["messageId"] for message in messages]


# `python -m segbill` with a file-size limit, set in the child itself (preexec_fn is unsafe beside
# the fake's threads). Python ignores SIGXFSZ, so a write past the limit fails with EFBIG.
LIMITED = (
    "import resource, runpy, sys; limit = int(sys.argv.pop(1)); "
    "resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)); runpy.run_module('segbill', run_name='__main__')"
)


def segbill_process(args: list[str], url: str, file_size_limit: int | None = None) -> subprocess.CompletedProcess[bytes]:
    command = ["-c", LIMITED, str(file_size_limit)] if file_size_limit else ["-m", "segbill"]
    return subprocess.run([sys.executable, *command, *args], env=process_env(url), capture_output=True, check=False, timeout=120)


def assert_stopped_cleanly(process: subprocess.CompletedProcess[bytes], words: str) -> dict:
    stderr = process.stderr.decode()
    assert process.returncode == 3, stderr
    assert "Traceback" not in stderr and "Task exception" not in stderr and "internal error" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("segbill: error:")]
    assert len(errors) == 1 and words in errors[0] and "run the same command again" in errors[0]
    summary = orjson.loads(process.stdout)
    assert words in summary["stopped"] and summary["exit_code"] == 3
    return assert_adds_up(summary)


@needs_dev_full
def test_a_full_disk_under_the_dead_letter_file_stops_a_send_with_the_summary(tmp_path: Path, fake: FakePlatform) -> None:
    ids = export(tmp_path / "in.jsonl", 3000)
    fake.lago_poison = {"m10", "m2500"}  # refused by Lago: their dead letters cannot be written
    args = ["send", str(tmp_path / "in.jsonl"), "--to", "lago", "--json", "--quiet", "--state", str(tmp_path / "s.db")]
    full = segbill_process([*args, "--dead-letter", str(DEV_FULL)], fake.url)
    summary = assert_stopped_cleanly(full, "cannot write the dead-letter file /dev/full (No space left on device)")
    assert summary["not_attempted"] > 0
    rerun = segbill_process([*args, "--dead-letter", str(tmp_path / "dead.jsonl")], fake.url)
    assert rerun.returncode == 1, rerun.stderr.decode()
    assert fake.counts("lago") == {id: 1 for id in ids if id not in fake.lago_poison}
    reasons = {
        (entry["source"]["line"], entry["reason"][:8])
        for entry in map(orjson.loads, (tmp_path / "dead.jsonl").read_bytes().splitlines())
    }
    assert reasons == {(11, "Rejected"), (1501, "The line"), (2502, "Rejected")}


@needs_dev_full
def test_a_full_disk_under_the_dead_letter_file_stops_a_dry_run_with_the_summary(segbill, tmp_path: Path) -> None:
    export(tmp_path / "in.jsonl", 10)
    run = segbill("send", "in.jsonl", "--to", "lago", "--dry-run", "--json", dead_letter=str(DEV_FULL))
    assert run.exit_code == 3
    assert run.stderr.count("segbill: error: cannot write the dead-letter file /dev/full (No space left on device).") == 1
    summary = orjson.loads(run.stderr.splitlines()[-1])
    assert summary["stopped"].startswith("cannot write the dead-letter file") and summary["read"] == 6
    assert summary["converted"] == len(run.events) and summary["not_attempted"] == 6 - len(run.events)  # held events too


@pytest.mark.parametrize(
    ("limit", "checkpointed"), [(120_000, False), (180_000, True)]
)  # the first checkpoint fails, or a later one
def test_a_full_disk_under_the_state_stops_with_the_summary_and_the_rerun_resumes(
    tmp_path: Path, fake: FakePlatform, limit: int, checkpointed: bool
) -> None:
    ids = export(tmp_path / "in.jsonl", 3000)
    # One batch in flight: batches settle in order, so where the limit strikes does not depend on timing.
    args = [
        "send",
        str(tmp_path / "in.jsonl"),
        "--to",
        "lago",
        "--json",
        "--quiet",
        "--concurrency",
        "1",
        "--state",
        str(tmp_path / "s.db"),
        "--dead-letter",
        str(tmp_path / "dead.jsonl"),
    ]
    full = segbill_process(args, fake.url, file_size_limit=limit)
    summary = assert_stopped_cleanly(full, f"cannot write the state file {tmp_path / 's.db'} (")
    assert 0 < summary["delivered"] < 3000 and summary["not_attempted"] > 0
    rerun = segbill_process(args, fake.url)
    assert rerun.returncode == 1, rerun.stderr.decode()  # the line that is not JSON
    again = orjson.loads(rerun.stdout)
    assert again["dead_lettered_by_reason"] == {"not_json": 1}
    assert (again["read"] < 3001) is checkpointed  # resumed after the last checkpoint saved, if one was
    assert fake.counts("lago") == dict.fromkeys(ids, 1)


@needs_dev_full
def test_a_dry_run_onto_a_full_disk_stops_with_the_summary(tmp_path: Path) -> None:
    export(tmp_path / "in.jsonl", 3000)
    with DEV_FULL.open("wb") as full:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "segbill",
                "send",
                str(tmp_path / "in.jsonl"),
                "--to",
                "lago",
                "--dry-run",
                "--json",
                "--dead-letter",
                str(tmp_path / "dead.jsonl"),
            ],
            stdout=full,
            stderr=subprocess.PIPE,
            check=False,
            timeout=120,
        )
    assert done.returncode == 3 and b"Traceback" not in done.stderr and b"internal error" not in done.stderr
    summary = orjson.loads(done.stderr.splitlines()[-1])
    assert summary["stopped"] == "cannot write to stdout (No space left on device)" and summary["converted"] == 0
    assert summary["not_attempted"] > 0 and summary["read"] == summary["not_attempted"] + summary["dead_lettered"]


@needs_dev_full
def test_a_json_summary_that_cannot_reach_stdout_goes_to_stderr(tmp_path: Path, fake: FakePlatform) -> None:
    """`--json >> runs.jsonl` on a full disk: the run's record stays in the log."""
    export(tmp_path / "in.jsonl", 300)
    with DEV_FULL.open("wb") as full:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "segbill",
                "send",
                str(tmp_path / "in.jsonl"),
                "--to",
                "lago",
                "--json",
                "--quiet",
                "--dead-letter",
                str(tmp_path / "dead.jsonl"),
            ],
            env=process_env(fake.url),
            stdout=full,
            stderr=subprocess.PIPE,
            check=False,
            timeout=120,
        )
    assert (
        done.returncode == 1 and b"Traceback" not in done.stderr and b"internal error" not in done.stderr
    )  # the line that is not JSON
    *_, error, last = done.stderr.decode().splitlines()
    assert error == "segbill: error: cannot write the summary to stdout (No space left on device); here it is:"
    assert orjson.loads(last)["delivered"] == 300 == len(fake.counts("lago"))


def test_a_state_that_cannot_even_be_created_is_said_so_before_anything_is_read(tmp_path: Path, fake: FakePlatform) -> None:
    export(tmp_path / "in.jsonl", 10)
    args = [
        "send",
        str(tmp_path / "in.jsonl"),
        "--to",
        "lago",
        "--state",
        str(tmp_path / "s.db"),
        "--dead-letter",
        str(tmp_path / "dead.jsonl"),
    ]
    done = segbill_process(args, fake.url, file_size_limit=4_000)
    assert done.returncode == 2 and fake.requests() == []
    assert done.stderr.decode() == f"segbill: error: --state {tmp_path / 's.db'}: cannot be written (disk I/O error).\n"


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_an_input_removed_after_it_was_listed_stops_the_run_with_one_line(tmp_path: Path, jobs: str) -> None:
    """The folder is listed at start; a file gone by the time it is read is a stop (exit 3), not
    an internal error. The pipe holds the first file's output until the last is removed. With
    two jobs, the worker converting a.jsonl converts c.jsonl next: it reads it once the run has
    taken most of a.jsonl (a worker converts only so far ahead), and the run stops there."""
    folder = tmp_path / "exports"
    write(folder / "a.jsonl", jsonl(*(track(messageId=f"a{i}") for i in range(2 * AHEAD))))
    write(folder / "b.jsonl", jsonl(track(messageId="b")))
    second = write(folder / "c.jsonl", jsonl(track(messageId="c")))
    command = ["send", "--to", "lago", "--dry-run", "--json", "--jobs", jobs, str(folder)]
    child = subprocess.Popen(
        [sys.executable, "-m", "segbill", *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path
    )
    assert child.stdout is not None
    child.stdout.readline()  # reading has begun: the folder was listed
    second.unlink()
    _, err = child.communicate(timeout=120)
    assert child.returncode == 3, err
    assert b"Traceback" not in err and b"internal error" not in err
    assert f"cannot read {second}".encode() in err
    summary = orjson.loads(err.strip().splitlines()[-1])
    assert summary["stopped"].startswith(f"cannot read {second}")
    assert summary["read"] == 2 * AHEAD + 1 == summary["converted"]  # a.jsonl and b.jsonl

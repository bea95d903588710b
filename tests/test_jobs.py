"""`--jobs N`: files converted in worker processes must give exactly what one process gives.

Each export is run through the real CLI with `--jobs 1` and with worker processes, and
everything a user sees is compared: the printed events (bytes and order), the dead letters
(minus their time), the notices, the summary (with its warnings: which rules matched, whether
the window selected nothing) and the exit code. Sends, check and reconcile are compared on the
fake platform.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from segbill import parallel
from segbill.segment import dumps, iso_millis
from segbill.testing.corpus import messages
from segbill.testing.fake_platform import FakePlatform

from .conftest import KEY, assert_adds_up, jsonl, platform_env, send, spread_export, track, write
from .test_fast_path import CONFIG, ODD_MESSAGES, assert_same, untimed
from .test_selection import BOUNDARY, HOUR, WINDOWS, straddling_export

START = 1_704_067_200_000  # 2024-01-01T00:00:00Z


def odd_export(folder: Path) -> None:
    """The fast-path tests' odd messages and generated ones spread over five files, one
    gzipped, with repeats across files (same time: a duplicate; another time: a notice) and the
    messages that make a mapping rule match only in the last file."""
    generated = [*messages(1200, seed=21, duplicate_ratio=0.05), *messages(600, seed=22, browser=True)]
    last = [
        message
        for message in ODD_MESSAGES
        if isinstance(message, dict) and message.get("messageId") in ("m-renamed", "m-excluded")
    ]
    odd = [message for message in ODD_MESSAGES if message not in last]
    parts = [odd[:30], generated[:700], odd[30:], generated[700:], [*last, generated[5], track(messageId="msg-1")]]
    for number, part in enumerate(parts):
        data = b"".join(dumps(message) + b"\n" for message in part)  # integers past 64 bits too
        write(folder / f"part-{number}.jsonl{'.gz' if number == 3 else ''}", data, compress=number == 3)


@pytest.fixture
def group() -> Iterator[Callable[[subprocess.Popen[bytes]], subprocess.Popen[bytes]]]:
    """Registers a run started in a session of its own: whatever the test's outcome, the run
    and its workers are gone afterwards (a test that failed on a timeout left them running)."""
    started: list[subprocess.Popen[bytes]] = []

    def register(process: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        started.append(process)
        return process

    yield register
    for process in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def with_jobs(segbill, *args: str) -> tuple[Any, Any]:
    one = segbill(*args, "--jobs", "1")
    several = segbill(*args, "--jobs", "3", dead_letter="dead-general.jsonl")  # `assert_same` reads that name
    return one, several


@pytest.mark.parametrize("target", ["lago", "hyperline"])
@pytest.mark.parametrize(
    "options",
    [
        (),
        ("--config", "segbill.toml"),
        ("--event", "API *", "--exclude-event", "*Ping"),
        ("--since", "2024-01-06T00:00:00Z", "--until", "2024-01-07T12:00:00Z"),
        ("--shard", "0/3"),
    ],
)
def test_worker_processes_give_exactly_what_one_process_gives(
    segbill, tmp_path: Path, target: str, options: tuple[str, ...]
) -> None:
    (tmp_path / "segbill.toml").write_text(CONFIG.replace("lago", target))
    odd_export(tmp_path / "export")
    one, several = with_jobs(segbill, "send", "export", "--to", target, "--dry-run", "--json", *options)
    assert_same(one, several)
    summary = orjson.loads(one.stderr.strip().splitlines()[-1])
    assert summary["converted"] > 200 and summary["dead_lettered"] >= 8 and summary["skipped"] >= 3
    if "--config" in options:  # "Order Completed" is renamed and "Internal *" excluded in the last file only
        assert not any("Order Completed" in warning or "Internal *" in warning for warning in summary["warnings"])
        assert any("Never *" in warning for warning in summary["warnings"])


@pytest.mark.parametrize("options", [*WINDOWS, ("--shard", "1/3")])
def test_worker_processes_carry_what_a_window_or_shard_leaves_out_to_be_claimed(
    segbill, tmp_path: Path, options: tuple[str, ...]
) -> None:
    """Records the selection leaves out still claim their keys in the run's process, those of a
    batch line (which travel whole) too: the same repeats are skipped, the same events printed."""
    straddling_export(tmp_path / "export")
    batch = [
        track(messageId=f"b{i}", userId=f"cus_{i % 12}", timestamp=iso_millis(BOUNDARY + (i - 12) * 3 * HOUR + i))
        for i in range(24)
    ]
    write(tmp_path / "export" / "batch.jsonl", orjson.dumps({"batch": batch}) + b"\n")  # read first
    repeats = [
        {**message, "timestamp": iso_millis(BOUNDARY + (i % 5 - 2) * 7 * HOUR), "userId": f"cus_{(i + 5) % 24}"}
        for i, message in enumerate(batch)
    ]
    write(tmp_path / "export" / "part-3.jsonl", jsonl(*repeats))
    one, several = with_jobs(segbill, "send", "export", "--to", "lago", "--dry-run", "--json", *options)
    assert_same(one, several)
    summary = orjson.loads(one.stderr.strip().splitlines()[-1])
    assert summary["skipped_by_reason"]["duplicate_shifted"] > 3 and summary["skipped_by_reason"]["duplicate"] > 3


def test_a_window_that_selects_nothing_is_judged_on_every_files_events(segbill, tmp_path: Path) -> None:
    """The first file's events are all before --since, the second's inside: a run, not a
    mistake. With the second file's events outside too, both runs say nothing was selected."""
    write(tmp_path / "in" / "a.jsonl", jsonl(*(track(messageId=f"a{i}", timestamp="2023-06-01T00:00:00Z") for i in range(50))))
    write(tmp_path / "in" / "b.jsonl", jsonl(track(messageId="b", timestamp="2024-06-01T00:00:00Z")))
    write(tmp_path / "out" / "a.jsonl", jsonl(track(messageId="c", timestamp="2023-06-01T00:00:00Z")))
    write(tmp_path / "out" / "b.jsonl", jsonl(track(messageId="d", timestamp="2023-07-01T00:00:00Z")))
    selected = with_jobs(segbill, "send", "in", "--to", "lago", "--dry-run", "--since", "2024-01-01")
    assert_same(*selected)
    assert selected[1].exit_code == 0 and len(selected[1].events) == 1
    nothing = with_jobs(segbill, "send", "out", "--to", "lago", "--dry-run", "--since", "2024-01-01")
    assert_same(*nothing)
    assert nothing[1].exit_code == 2 and "--since" in nothing[1].stderr


def stored(fake: FakePlatform) -> dict[str, int]:
    return dict(fake.counts("lago"))


def test_a_send_with_workers_stores_each_event_once_and_resumes_nothing(segbill, fake: FakePlatform, tmp_path: Path) -> None:
    odd_export(tmp_path / "export")
    _, summary = send(segbill, fake.url, "export", "--state", "s.db", "--jobs", "2")
    assert summary is not None and summary["delivered"] > 300 and summary["dead_lettered"] >= 8
    by_workers = stored(fake)
    assert set(fake.writes("lago").values()) == {1}
    with FakePlatform(api_key=KEY) as alone:
        _, single = send(segbill, alone.url, "export", "--jobs", "1", "--dead-letter", "dead-alone.jsonl")
        assert single is not None and stored(alone) == by_workers
        assert {k: v for k, v in single.items() if k in ("delivered", "skipped_by_reason", "dead_lettered_by_reason")} == {
            k: v for k, v in summary.items() if k in ("delivered", "skipped_by_reason", "dead_lettered_by_reason")
        }
    _, again = send(segbill, fake.url, "export", "--state", "s.db", "--jobs", "2")
    assert again is not None and again["files_already_done"] == 5 and again["read"] == 0
    assert set(fake.writes("lago").values()) == {1}


@pytest.mark.parametrize("command", ["check", "reconcile"])
def test_check_and_reconcile_read_the_export_the_same_with_workers(
    segbill, fake: FakePlatform, tmp_path: Path, command: str
) -> None:
    fake.add_billable_metric("api_call")
    fake.add_subscription("alice", external_customer_id="alice", started_at="2024-01-01T00:00:00Z")
    fake.add_subscription("bob", external_customer_id="bob", started_at="2024-01-05T00:00:00Z")
    export = spread_export(900, ["alice", "bob", "carol"], ["api_call", "storage"], start=START)
    for number in range(3):
        write(tmp_path / "export" / f"{number}.jsonl", jsonl(*export[number::3]))
    send(segbill, fake.url, "export", "--jobs", "1")
    env = platform_env(fake.url)
    results = [segbill(command, "export", "--to", "lago", "--json", "--jobs", jobs, env=env) for jobs in ("1", "2")]
    assert results[0].exit_code == results[1].exit_code
    assert untimed(results[0].stdout) == untimed(results[1].stdout)
    assert untimed(results[0].stdout)[0]["read"] == 900


def test_an_interrupted_run_with_workers_stops_cleanly(tmp_path: Path, group: Any) -> None:
    """Ctrl-C reaches the whole process group: the workers ignore it, the run stops with a
    summary that adds up, and nothing is left behind holding its output open."""
    for number in range(4):
        write(tmp_path / f"{number}.jsonl", jsonl(*(track(messageId=f"{number}-{i}") for i in range(30_000))))
    command = [sys.executable, "-m", "segbill", "send", ".", "--to", "lago", "--dry-run", "--json", "--jobs", "2"]
    child = group(subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True))
    assert child.stdout is not None
    child.stdout.readline()  # events are flowing
    os.killpg(child.pid, signal.SIGINT)
    _, err = child.communicate(timeout=60)  # returns only once every process holding the pipes is gone
    assert child.returncode == 130, err
    assert b"Traceback" not in err
    summary = assert_adds_up(orjson.loads(err.strip().splitlines()[-1]))
    assert summary["interrupted"] and 0 < summary["read"] < 120_000


def test_a_killed_send_with_workers_resumes_mid_file_and_stores_each_event_once(tmp_path: Path, group: Any) -> None:
    """Killed while sending the second of four files: the rerun's workers start that file at its
    checkpoint (a gzip file, inflated from the start and dropped up to it) and the next two
    from the beginning."""
    with FakePlatform(api_key=KEY, latency=0.03) as fake:
        names = []
        for number in range(4):
            part = [track(messageId=f"f{number}-{i}", userId=f"cus_{i % 7}") for i in range(1000)]
            names += [message["messageId"] for message in part]
            write(tmp_path / "export" / f"{number}.jsonl.gz", jsonl(*part), compress=True)
        env = {**os.environ, **platform_env(fake.url)}
        command = [sys.executable, "-m", "segbill", "send", "export", "--to", "lago", "--json", "--quiet", "--state", "s.db"]
        command += ["--batch-size", "20", "--concurrency", "3", "--jobs", "2"]
        process = group(
            subprocess.Popen(
                command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
            )
        )
        assert fake.wait_until(lambda: len(fake.counts("lago")) >= 1300)  # into the second file
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)  # returns once no worker holds the pipes open
        rerun = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, check=False)
        assert rerun.returncode == 0, rerun.stderr
        summary = assert_adds_up(orjson.loads(rerun.stdout))
        assert summary["files_already_done"] >= 1 and summary["resumed_at"] and summary["read"] < 3000
        assert fake.counts("lago") == dict.fromkeys(names, 1)


def test_a_worker_that_dies_stops_the_run_with_one_line(tmp_path: Path, group: Any) -> None:
    """A worker killed (the kernel's out-of-memory killer, a user) is a stop (exit 3) naming the
    file, with a summary that adds up, not an internal error or a run waiting for ever."""
    for number in range(4):
        write(tmp_path / f"{number}.jsonl", jsonl(*(track(messageId=f"{number}-{i}") for i in range(30_000))))
    command = [sys.executable, "-m", "segbill", "send", ".", "--to", "lago", "--dry-run", "--json", "--jobs", "2"]
    child = group(subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True))
    assert child.stdout is not None
    child.stdout.readline()  # converting: the workers are there (forks: the run's children)
    workers = Path(f"/proc/{child.pid}/task/{child.pid}/children").read_text().split()
    os.kill(int(workers[-1]), signal.SIGKILL)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 3, err
    assert b"Traceback" not in err and b"internal error" not in err
    summary = assert_adds_up(orjson.loads(err.strip().splitlines()[-1]))
    assert summary["stopped"].startswith("cannot convert ") and "ended (exit status -9)" in summary["stopped"]


@pytest.mark.parametrize(
    ("cpu_max", "cfs", "cores", "jobs"),
    [
        ("150000 100000\n", None, 64, 2),  # a pod limited to 1.5 CPUs on a 64-core node: 2, not 64
        ("max 100000\n", None, 64, 4),  # no limit: the cores, at most 4
        (None, ("-1", "100000"), 2, 2),  # cgroup v1, no limit
        (None, ("50000", "100000"), 8, 1),  # cgroup v1, half a CPU
        (None, None, 3, 3),  # no cgroup files at all
    ],
)
def test_the_default_jobs_are_the_cores_a_container_may_use(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cpu_max: str | None, cfs: tuple[str, str] | None, cores: int, jobs: int
) -> None:
    monkeypatch.setattr(parallel.os, "sched_getaffinity", lambda pid: set(range(cores)))
    monkeypatch.setattr(parallel, "CPU_MAX", tmp_path / "cpu.max")
    monkeypatch.setattr(parallel, "CFS_QUOTA", tmp_path / "cpu.cfs_quota_us")
    monkeypatch.setattr(parallel, "CFS_PERIOD", tmp_path / "cpu.cfs_period_us")
    if cpu_max is not None:
        (tmp_path / "cpu.max").write_text(cpu_max)
    if cfs is not None:
        (tmp_path / "cpu.cfs_quota_us").write_text(cfs[0])
        (tmp_path / "cpu.cfs_period_us").write_text(cfs[1])
    assert parallel.default_jobs() == jobs


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_workers_started_every_way_give_the_same_answers(
    segbill, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    """Forked on Linux when the run has no other thread, from a fork server otherwise, spawned
    where neither exists (Windows): the same bytes whichever way the workers started."""
    odd_export(tmp_path / "export")
    one = segbill("send", "export", "--to", "lago", "--dry-run", "--json", "--jobs", "1")
    monkeypatch.setattr(parallel, "_context", lambda: multiprocessing.get_context(method))
    several = segbill("send", "export", "--to", "lago", "--dry-run", "--json", "--jobs", "2", dead_letter="dead-general.jsonl")
    assert_same(one, several)

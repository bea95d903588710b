"""The run loop's stops: a second signal ends the grace at once, and what it cut off is counted
`unanswered` (maybe stored) or `not attempted`, so that a rerun with the state stores every event
exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

from segbill.testing.fake_platform import FakePlatform

from .conftest import jsonl, track, write

KEY = "sk-run-loop-key"


def test_a_second_signal_stops_at_once_and_a_rerun_stores_every_event_once(tmp_path: Path) -> None:
    write(tmp_path / "a.jsonl", jsonl(*(track(messageId=f"m{i}") for i in range(200))))
    # Answers take far longer than the test waits: only a hard stop lets the run end in time.
    with FakePlatform(api_key=KEY, latency=120) as fake:
        env = {**os.environ, "LAGO_API_URL": fake.url, "LAGO_API_KEY": KEY}
        command = [sys.executable, "-m", "segbill", "send", "a.jsonl", "--to", "lago", "--json", "--quiet", "--state", "s.db"]
        options = ["--batch-size", "10", "--concurrency", "2", "--grace", "600"]
        process = subprocess.Popen([*command, *options], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while len(fake.requests("lago")) < 2:  # both requests in flight, stored, their answers pending
            assert time.monotonic() < deadline, "no request arrived"
            time.sleep(0.01)
        process.send_signal(signal.SIGTERM)  # the grace (600 s) would wait for the answers
        process.send_signal(signal.SIGINT)  # the second signal does not
        out, err = process.communicate(timeout=60)
        assert process.returncode == 130, err
        first = orjson.loads(out)
        assert first["interrupted"] is True and first["delivered"] == 0
        assert first["unanswered"] == 20 and first["not_attempted"] == first["read"] - 20
        fake.latency = 0
        rerun = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, check=False)
        assert rerun.returncode == 0, rerun.stderr
        second = orjson.loads(rerun.stdout)
        assert second["delivered"] == 200 and second["already_delivered"] == 20
    assert fake.counts("lago") == {f"m{i}": 1 for i in range(200)}


def test_a_signal_stops_a_run_reading_a_long_stretch_without_events(tmp_path: Path) -> None:
    """A run reading messages that bill nothing (identify calls, dead letters, repeats) heard a
    signal only once it claimed events again: a file of them was read to its end. The input is
    a named pipe, so the test knows how far the run has read when it sends the signal."""
    fifo = tmp_path / "calls.jsonl"
    os.mkfifo(fifo)
    identify = b'{"type":"identify","userId":"u","messageId":"i"}\n'
    command = [sys.executable, "-m", "segbill", "send", str(fifo), "--to", "lago", "--dry-run", "--json", "--jobs", "1"]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with open(fifo, "wb") as pipe:  # opens once the run does
        pipe.write(identify * 5_000)
        pipe.flush()
        process.send_signal(signal.SIGINT)
        try:
            for _ in range(100):  # 500,000 more; the run stops long before
                pipe.write(identify * 5_000)
        except BrokenPipeError:
            pass
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    summary = orjson.loads(err.strip().splitlines()[-1])
    assert summary["interrupted"] is True and summary["read"] < 100_000
    assert summary["read"] == summary["skipped"] + summary["not_attempted"], err

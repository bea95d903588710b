"""Progress that helps: how far, how long still, what happened so far, and why it is waiting; in
plain timestamped lines tied to their run for cron logs, and in the text of the terminal bar."""

from __future__ import annotations

import io
import math
import re
from datetime import datetime
from pathlib import Path

import orjson
import pytest

from segbill.cli.progress import Progress
from segbill.delivery import DeliveryOptions, HttpSink
from segbill.pipeline import Options, Replay
from segbill.report import Tally
from segbill.runner import run
from segbill.sources import Source
from segbill.targets import get_target
from segbill.testing.fake_platform import FakePlatform

from .conftest import jsonl, track, write

ISO_UTC = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def busy_tally() -> Tally:
    tally = Tally(target="lago", dry_run=False)
    tally.read, tally.delivered, tally.retries = 1234, 1200, 2
    tally.skipped["identify"] = 30
    tally.dead_lettered["rejected"] = 4
    return tally


def bar_text(tally: Tally, total: int | None, paused: float, monkeypatch: pytest.MonkeyPatch) -> str:
    """What the terminal bar shows, as a terminal 160 columns wide would (escape codes removed)."""
    monkeypatch.setenv("COLUMNS", "160")
    stream = io.StringIO()
    progress = Progress(tally, total, stream, terminal=True)
    progress.on_bytes("a.jsonl", 2_500_000)
    progress.start()
    progress.tick(paused)
    progress.stop()
    return ANSI.sub("", stream.getvalue())


def test_the_bar_shows_how_far_the_eta_the_counts_and_a_rate_limit_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    text = bar_text(busy_tally(), 10_000_000, 11.2, monkeypatch)
    assert re.search(r"25% 2\.5/10\.0 MB ETA (-:--:--|\d:\d\d:\d\d) elapsed 0:00:0\d", text)
    assert "read 1,234 · delivered 1,200 · skipped 30 · dead-lettered 4 · " in text
    assert "records/s · 2 retries · waiting: rate limit (12 s)" in text


def test_the_bar_on_stdin_counts_records_and_shows_no_wait_when_none(monkeypatch: pytest.MonkeyPatch) -> None:
    text = bar_text(busy_tally(), None, 0.0, monkeypatch)
    assert "1,234 records" in text and "?" not in text and "bytes" not in text
    assert "waiting" not in text


def test_a_plain_line_has_the_time_the_run_how_far_how_long_and_the_counts() -> None:
    tally = busy_tally()
    stream = io.StringIO()
    progress = Progress(tally, 10_000, stream, terminal=False)
    progress.on_bytes("a.jsonl", 4_000)
    progress.tick(0.4)
    pattern = (
        rf"{ISO_UTC} segbill\[{tally.run_id}\]: 40% of the input, elapsed 0:00:0\d, ETA 0:00:\d\d; "
        r"read 1,234, delivered 1,200, skipped 30, dead-lettered 4, [\d,]+ records/s, 2 retries, waiting: rate limit \(1 s\)\n"
    )
    assert re.fullmatch(pattern, stream.getvalue())
    assert re.fullmatch(r"[0-9a-f]{6}", tally.run_id) and Tally("lago", False).run_id != tally.run_id


def test_a_plain_line_on_stdin_has_no_percentage_nor_eta() -> None:
    stream = io.StringIO()
    Progress(busy_tally(), None, stream, terminal=False).tick(0.0)
    line = stream.getvalue()
    assert re.search(r"segbill\[[0-9a-f]{6}\]: elapsed 0:00:0\d; read 1,234, ", line) and "%" not in line and "ETA" not in line


def plain_lines_of_a_send(
    tmp_path: Path, count: int, every: float, fake: FakePlatform, concurrency: int | None = None
) -> list[str]:
    """Send `count` events to the fake with plain progress lines every `every` seconds; the lines."""
    path = write(tmp_path / "in.jsonl", jsonl(*(track(messageId=f"m{i}") for i in range(count))))
    target = get_target("lago")
    replay = Replay(
        Options(sources=[Source(str(path), path, path.stat().st_size)], target=target, dead_letter=tmp_path / "d.jsonl")
    )
    stream = io.StringIO()
    progress = Progress(replay.tally, path.stat().st_size, stream, terminal=False, every=every)
    run(replay, HttpSink(target, DeliveryOptions(fake.url, "k", 100, concurrency=concurrency)), progress=progress)
    replay.close()
    assert replay.tally.delivered == count
    return stream.getvalue().splitlines()


def test_a_rate_limit_pause_of_a_real_send_shows_in_the_progress_lines(tmp_path: Path) -> None:
    with FakePlatform(api_key="k", retry_after=1) as fake:
        fake.script(["429"])  # Retry-After: 1 pauses every sender for a second
        lines = plain_lines_of_a_send(tmp_path, 2000, 0.05, fake)
    assert any(line.endswith("waiting: rate limit (1 s)") for line in lines)


def test_the_json_summary_has_the_run_id_and_its_start_and_end_times(segbill, tmp_path: Path) -> None:
    write(tmp_path / "in.jsonl", jsonl(track()))
    run = segbill("send", "in.jsonl", "--to", "lago", "--dry-run", "--json")
    summary = orjson.loads(run.stderr.splitlines()[-1])
    assert re.fullmatch(r"[0-9a-f]{6}", summary["run_id"])
    assert re.fullmatch(ISO_UTC, summary["started_at"]) and re.fullmatch(ISO_UTC, summary["ended_at"])
    assert datetime.fromisoformat(summary["started_at"]) <= datetime.fromisoformat(summary["ended_at"])
    human = segbill("send", "in.jsonl", "--to", "lago", "--dry-run")
    assert re.search(rf"\n  run              [0-9a-f]{{6}}  \({ISO_UTC} to {ISO_UTC}\)\n", human.stderr)


def lagging_tally(read: int, settled: int) -> Tally:
    """All the input read, `settled` of its records with their outcome, the rest still being sent."""
    tally = Tally(target="lago", dry_run=False)
    tally.read, tally.delivered = read, settled
    tally.started -= 125  # the run began 2 min 5 s ago
    return tally


def test_the_bar_is_not_full_while_events_are_still_being_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    text = bar_text(lagging_tally(1000, 600), 2_500_000, 0.0, monkeypatch)  # every byte read
    assert re.search(r" 60% 1\.5/2\.5 MB ETA (-:--:--|\d:\d\d:\d\d) elapsed 0:02:05", text)
    assert "100%" not in text and "ETA 0:00:00" not in text


def test_the_bar_says_100_only_when_everything_read_is_settled(monkeypatch: pytest.MonkeyPatch) -> None:
    assert re.search(r" 99% 2\.5/2\.5 MB ETA .* elapsed 0:02:05", bar_text(lagging_tally(1000, 999), 2_500_000, 0.0, monkeypatch))
    assert re.search(
        r" 100% 2\.5/2\.5 MB ETA .* elapsed 0:02:05", bar_text(lagging_tally(1000, 1000), 2_500_000, 0.0, monkeypatch)
    )
    assert "600 records " in bar_text(lagging_tally(1000, 600), None, 0.0, monkeypatch)  # stdin: records settled


def test_a_plain_line_counts_what_is_settled_and_the_time_since_the_run_began() -> None:
    for settled, shown, eta in [(600, "60%", "0:01:23"), (999, "99%", "0:00:00"), (1000, "100%", "0:00:00")]:
        stream = io.StringIO()
        progress = Progress(lagging_tally(1000, settled), 10_000, stream, terminal=False)
        progress.on_bytes("a.jsonl", 10_000)
        progress.tick(0.0)
        assert f": {shown} of the input, elapsed 0:02:05, ETA {eta}; read 1,000, delivered {settled:,}," in stream.getvalue()


def test_the_plain_lines_of_a_real_send_say_100_only_once_everything_read_has_its_outcome(tmp_path: Path) -> None:
    with FakePlatform(api_key="k", latency=0.03) as fake:  # delivery lags reading: 10 batches one after another
        lines = plain_lines_of_a_send(tmp_path, 1000, 0.02, fake, concurrency=1)
    shown = [
        (int(m["percent"]), int(m["read"].replace(",", "")), int(m["delivered"].replace(",", "")))
        for m in re.finditer(
            r": (?P<percent>\d+)% of the input, .*; read (?P<read>[\d,]+), delivered (?P<delivered>[\d,]+),", "\n".join(lines)
        )
    ]
    assert any(read == 1000 and delivered < 1000 for _, read, delivered in shown)  # the lines caught the lag
    for percent, read, delivered in shown:
        assert percent <= math.floor(100 * delivered / read) if read else percent == 0

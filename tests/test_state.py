"""Backfills that survive cron: resume, the exactly-once ledger, clean shutdown, overlap, shards."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from segbill import state
from segbill.state import Checkpoint, State
from segbill.testing.fake_platform import FakePlatform

from .conftest import KEY, WITHOUT_ISAL, jsonl, process_env, send, track, write

pytestmark = pytest.mark.usefixtures("fast_backoff")


def messages(count: int, prefix: str = "m") -> list[dict[str, Any]]:
    return [
        track(messageId=f"{prefix}{i}", userId=f"cus_{i % 11}", timestamp=f"2024-01-{1 + i % 28:02d}T00:00:00.000Z")
        for i in range(count)
    ]


def test_a_rerun_resumes_and_sends_nothing_twice(segbill, tmp_path: Path, fake: FakePlatform) -> None:
    write(tmp_path / "a.jsonl", jsonl(*messages(300)))
    first, summary = send(segbill, fake.url, "a.jsonl", "--state", "s.db")
    assert first.exit_code == 0 and summary["delivered"] == 300
    again, summary = send(segbill, fake.url, "a.jsonl", "--state", "s.db")
    assert again.exit_code == 0
    assert summary["read"] == 0 and summary["files_already_done"] == 1
    assert set(fake.writes("lago").values()) == {1} and len(fake.writes("lago")) == 300


def test_a_file_that_grew_is_read_again_and_its_delivered_events_are_duplicates(
    segbill, tmp_path: Path, fake: FakePlatform
) -> None:
    path = write(tmp_path / "a.jsonl", jsonl(*messages(100)))
    send(segbill, fake.url, "a.jsonl", "--state", "s.db")
    path.write_bytes(jsonl(*messages(150)))  # same path, other size: not the same file
    _run, summary = send(segbill, fake.url, "a.jsonl", "--state", "s.db")
    assert summary["delivered"] == 50 and summary["skipped_by_reason"] == {"duplicate": 100}
    assert set(fake.writes("lago").values()) == {1} and len(fake.writes("lago")) == 150


@pytest.mark.usefixtures("claim_method")
def test_overlapping_exports_and_a_shifted_repeat_are_each_sent_once(segbill, tmp_path: Path, fake: FakePlatform) -> None:
    write(tmp_path / "day1.jsonl", jsonl(*messages(60)))
    shifted = track(messageId="m5", userId="cus_5", timestamp="2024-01-06T00:00:00.003Z")  # m5 + 3 ms
    write(tmp_path / "day1-again.jsonl", jsonl(*messages(60)[30:], shifted, *messages(20, prefix="n")))
    run, summary = send(segbill, fake.url, "day1.jsonl", "day1-again.jsonl", "--state", "s.db")
    assert run.exit_code == 0
    assert summary["delivered"] == 80
    assert summary["skipped_by_reason"] == {"duplicate": 30, "duplicate_shifted": 1}
    assert "day1-again.jsonl:31: m5 was already sent with another event time; not sent again" in run.stderr
    assert set(fake.writes("lago").values()) == {1} and len(fake.writes("lago")) == 80
    # And across runs, through the ledger: the shifted repeat alone, in a file of its own.
    write(tmp_path / "late.jsonl", jsonl(shifted))
    _, summary = send(segbill, fake.url, "late.jsonl", "--state", "s.db")
    assert summary["skipped_by_reason"] == {"duplicate_shifted": 1}


@pytest.mark.usefixtures("claim_method")
def test_without_state_repeats_within_a_run_are_still_dropped(segbill, tmp_path: Path, fake: FakePlatform) -> None:
    write(tmp_path / "a.jsonl", jsonl(*messages(50), *messages(50)))
    _run, summary = send(segbill, fake.url, "a.jsonl")
    assert summary["delivered"] == 50 and summary["skipped_by_reason"] == {"duplicate": 50}
    assert set(fake.writes("lago").values()) == {1}


def test_a_dead_letter_replay_sends_only_what_was_not_delivered_meanwhile(segbill, tmp_path: Path, fake: FakePlatform) -> None:
    fake.lago_poison = {"m3", "m7"}
    write(tmp_path / "a.jsonl", jsonl(*messages(10)))
    first, _ = send(segbill, fake.url, "a.jsonl", "--state", "s.db", "--dead-letter", "dl.jsonl")
    assert first.exit_code == 1
    fake.lago_poison = set()
    write(tmp_path / "fix.jsonl", jsonl(messages(10)[3]))  # m3 arrives by another export meanwhile
    send(segbill, fake.url, "fix.jsonl", "--state", "s.db")
    replay, summary = send(segbill, fake.url, "dl.jsonl", "--state", "s.db", "--dead-letter", "dl2.jsonl")
    assert replay.exit_code == 0
    assert summary["delivered"] == 1 and summary["skipped_by_reason"] == {"duplicate": 1}
    assert fake.counts("lago") == {f"m{i}": 1 for i in range(10)}
    assert set(fake.writes("lago").values()) == {1}


def test_a_second_run_on_the_same_state_exits_2_at_once(segbill, tmp_path: Path) -> None:
    write(tmp_path / "a.jsonl", jsonl(*messages(3)))
    holder = State(tmp_path / "s.db", "lago")
    try:
        run = segbill("send", "a.jsonl", "--to", "lago", "--dry-run", "--state", "s.db")
    finally:
        holder.close()
    assert run.exit_code == 2
    assert "another segbill run is using s.db; runs on one --state cannot overlap." in run.stderr
    assert run.stdout == ""


def test_a_file_that_is_not_a_state_file_exits_2(segbill, tmp_path: Path) -> None:
    write(tmp_path / "a.jsonl", jsonl(*messages(3)))
    write(tmp_path / "s.db", b"this is not sqlite " * 100)
    run = segbill("send", "a.jsonl", "--to", "lago", "--dry-run", "--state", "s.db")
    assert run.exit_code == 2 and "is not a segbill state file" in run.stderr


def test_since_and_until_select_by_event_time_half_open(segbill, tmp_path: Path) -> None:
    write(tmp_path / "a.jsonl", jsonl(*messages(28)))  # one event a day, 2024-01-01 to 01-28
    run = segbill(
        "send", "a.jsonl", "--to", "lago", "--dry-run", "--json", "--since", "2024-01-10", "--until", "2024-01-20T00:00:00+00:00"
    )
    days = [int(e["timestamp"].split(".")[0]) for e in run.events]
    assert len(days) == 10 and min(days) == 1704844800 and max(days) == 1704844800 + 9 * 86400
    summary = orjson.loads(run.stderr.strip().splitlines()[-1])
    assert summary["skipped_by_reason"] == {"before_since": 9, "after_until": 9}
    bad = segbill("send", "a.jsonl", "--to", "lago", "--dry-run", "--since", "last week")
    assert bad.exit_code == 2 and "--since 'last week' is not a date or time" in bad.stderr


def test_shards_cover_the_input_exactly_with_no_overlap(segbill, tmp_path: Path) -> None:
    data = [track(messageId=f"m{i}", userId=f"customer-{i % 37}") for i in range(400)]
    write(tmp_path / "a.jsonl", jsonl(*data, {"type": "identify"}, track(messageId="anon", userId=None)) + b"bad line\n")
    whole = segbill("send", "a.jsonl", "--to", "hyperline", "--dry-run")
    everything = {e["record"]["id"] for e in whole.events}
    for shards in (1, 2, 3, 7):
        parts = []
        dead = 0
        for k in range(shards):
            run = segbill(
                "send",
                "a.jsonl",
                "--to",
                "hyperline",
                "--dry-run",
                "--shard",
                f"{k}/{shards}",
                dead_letter=f"dl-{shards}-{k}.jsonl",
            )
            parts.append({e["record"]["id"] for e in run.events})
            customers = {e["customer_id"] for e in run.events}
            assert all(
                customers.isdisjoint(other)
                for other in (
                    {
                        e["customer_id"]
                        for e in segbill("send", "a.jsonl", "--to", "hyperline", "--dry-run", "--shard", f"{j}/{shards}").events
                    }
                    for j in range(k)
                )
            )
            dead += len(run.dead_letters)
        assert set().union(*parts) == everything and sum(map(len, parts)) == len(everything)
        assert dead == 2  # the bad line and the anonymous track: once, on shard 0
    bad = segbill("send", "a.jsonl", "--to", "lago", "--dry-run", "--shard", "4/4")
    assert bad.exit_code == 2 and "--shard '4/4' is not K/N with 0 <= K < N" in bad.stderr


def test_a_shards_dead_letters_replayed_with_its_shard_are_all_its_own(segbill, tmp_path: Path, fake: FakePlatform) -> None:
    """Tracks without a userId are dead-lettered by shard 0; fixed with --customer-from
    anonymousId, most hash to other shards. Replayed with --shard 0/4 (as the shard's job
    would be), they were skipped as other_shard, exit 0, billed by no shard: the entry now
    says which shard wrote it, and that shard keeps it. Other shards' entries stay theirs."""
    named = [track(messageId=f"m{i}", userId=f"customer-{i % 37}") for i in range(120)]
    anonymous = [track(messageId=f"a{i}", userId=None, anonymousId=f"anon-{i}") for i in range(40)]
    write(tmp_path / "export.jsonl", jsonl(*named, *anonymous))
    env = {"LAGO_API_URL": fake.url, "LAGO_API_KEY": KEY}
    for k in range(4):
        run = segbill(
            "send",
            "export.jsonl",
            "--to",
            "lago",
            "--shard",
            f"{k}/4",
            "--state",
            f"s{k}.db",
            "--quiet",
            env=env,
            dead_letter=f"dead-{k}.jsonl",
        )
        assert run.exit_code == (1 if k == 0 else 0)
    assert len(fake.counts("lago")) == 120
    entries = [orjson.loads(line) for line in (tmp_path / "dead-0.jsonl").read_bytes().splitlines()]
    assert len(entries) == 40 and {entry["shard"] for entry in entries} == {"0/4"}
    (tmp_path / "dead-0.jsonl").rename(tmp_path / "retry-0.jsonl")
    common = ["--to", "lago", "--customer-from", "anonymousId", "--quiet", "--json"]
    others = [segbill("send", "retry-0.jsonl", *common, "--shard", f"{k}/4", "--state", f"s{k}.db", env=env) for k in (1, 2, 3)]
    assert all(orjson.loads(run.stdout)["skipped_by_reason"] == {"other_shard": 40} for run in others)
    replay = segbill("send", "retry-0.jsonl", *common, "--shard", "0/4", "--state", "s0.db", env=env)
    assert replay.exit_code == 0, replay.stderr
    assert orjson.loads(replay.stdout)["delivered"] == 40
    assert fake.counts("lago") == {**{f"m{i}": 1 for i in range(120)}, **{f"a{i}": 1 for i in range(40)}}


def test_a_dry_run_with_state_changes_nothing(segbill, tmp_path: Path, fake: FakePlatform) -> None:
    write(tmp_path / "a.jsonl", jsonl(*messages(20)))
    send(segbill, fake.url, "a.jsonl", "--state", "s.db")
    write(tmp_path / "b.jsonl", jsonl(*messages(30)))
    preview = segbill("send", "b.jsonl", "--to", "lago", "--dry-run", "--state", "s.db")
    assert [e["transaction_id"] for e in preview.events] == [f"m{i}" for i in range(20, 30)]
    _, summary = send(segbill, fake.url, "b.jsonl", "--state", "s.db")
    assert summary["delivered"] == 10  # the dry run claimed nothing


def test_gzip_files_resume_from_their_checkpoint(tmp_path: Path, fake: FakePlatform, inflate: str) -> None:
    """A run stopped by a fatal answer resumes mid-file; lines before the checkpoint are not re-read."""
    write(tmp_path / "a.gz", jsonl(*messages(1000)), compress=True)
    fake.latency = 0.02
    env = process_env(fake.url)
    segbill = ["-m", "segbill"] if inflate == "isal" else ["-c", WITHOUT_ISAL]
    command = [
        sys.executable,
        *segbill,
        "send",
        "a.gz",
        "--to",
        "lago",
        "--json",
        "--quiet",
        "--state",
        "s.db",
        "--concurrency",
        "1",
        "--batch-size",
        "50",
    ]
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert fake.wait_until(lambda: len(fake.counts("lago")) >= 300)
    fake.script(["401"])
    out, _ = process.communicate(timeout=60)
    first = orjson.loads(out)
    assert process.returncode == 3 and first["delivered"] >= 300
    rerun = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, check=False)
    second = orjson.loads(rerun.stdout)
    assert rerun.returncode == 0
    assert second["read"] == 1000 - first["delivered"]  # resumed right after the last delivered batch
    assert fake.counts("lago") == {f"m{i}": 1 for i in range(1000)}
    assert set(fake.writes("lago").values()) == {1}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_killed_mid_run_then_rerun_every_event_is_stored_exactly_once(tmp_path: Path, signum: int) -> None:
    with FakePlatform(api_key=KEY, latency=0.03) as fake:
        write(tmp_path / "export" / "a.jsonl", jsonl(*messages(1500)))
        write(tmp_path / "export" / "b.gz", jsonl(*messages(1500, prefix="b"), {"type": "page"}), compress=True)
        env = process_env(fake.url)
        command = [
            sys.executable,
            "-m",
            "segbill",
            "send",
            "export",
            "--to",
            "lago",
            "--json",
            "--quiet",
            "--state",
            "s.db",
            "--batch-size",
            "20",
            "--concurrency",
            "3",
        ]
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert fake.wait_until(lambda: len(fake.counts("lago")) >= 1800)  # into the second file
        process.send_signal(signum)
        out, err = process.communicate(timeout=60)
        assert b"Traceback" not in err
        if signum == signal.SIGTERM:
            assert process.returncode == 130
            first = orjson.loads(out)
            assert first["read"] == first["delivered"] + first["skipped"] + first["not_attempted"] + first["unanswered"]
        else:
            assert process.returncode == -signal.SIGKILL
        stored_before = len(fake.counts("lago"))
        rerun = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, check=False)
        assert rerun.returncode == 0, rerun.stderr
        second = orjson.loads(rerun.stdout)
        assert second["files_already_done"] == 1  # a.jsonl was finished before the signal
        assert second["read"] < 3001 - 1500
        assert fake.counts("lago") == {**{f"m{i}": 1 for i in range(1500)}, **{f"b{i}": 1 for i in range(1500)}}
        resent = [key for key, writes in fake.writes("lago").items() if writes > 1]
        if signum == signal.SIGTERM:
            assert resent == []  # a clean stop resends nothing
        else:
            assert len(resent) <= 3 * 20  # at worst the batches in flight, absorbed by the platform
        assert stored_before <= 3000


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_a_rerun_never_batches_maybe_stored_events_with_new_ones(segbill, tmp_path: Path, signum: int) -> None:
    """A Lago before v1.39 refusing a batch for a duplicate still stores its other events,
    without their fees or wallet updates. Events sent without an answer (a stop, a kill) go back
    only with the others of their request, even when a rerun changes the batch size."""
    with FakePlatform(api_key=KEY, lago_pre_v1_39=True, latency=60) as fake:
        write(tmp_path / "a.jsonl", jsonl(*messages(100)))
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
            "--grace",
            "0",
        ]
        process = subprocess.Popen(
            [*command, "--batch-size", "10", "--concurrency", "2"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert fake.wait_until(lambda: len(fake.counts("lago")) >= 20)  # two batches stored, their answers a minute away
        process.send_signal(signum)
        _, err = process.communicate(timeout=60)
        assert b"Traceback" not in err
        assert fake.counts("lago") == {f"m{i}": 1 for i in range(20)}
        fake.latency = 0
        rerun, summary = send(segbill, fake.url, "a.jsonl", "--state", "s.db", "--batch-size", "25")
        assert rerun.exit_code == 0, rerun.stderr
        assert (summary["delivered"], summary["already_delivered"]) == (100, 20)
        assert fake.stored_by_refused_batches() == []  # no new event went in a batch with a stored one
        assert fake.counts("lago") == {f"m{i}": 1 for i in range(100)}
        assert sorted(request.events for request in fake.requests("lago")[2:]) == [
            5,
            10,
            10,
            25,
            25,
            25,
        ]  # as first sent, then new


def test_a_dead_letter_replay_never_batches_maybe_stored_events_with_new_ones(segbill, tmp_path: Path) -> None:
    """A batch whose answer was lost and whose retries then failed is dead-lettered, but may be
    stored: replayed beside new events, it still travels alone."""
    with FakePlatform(api_key=KEY, lago_pre_v1_39=True) as fake:
        write(tmp_path / "a.jsonl", jsonl(*messages(30)))
        fake.script(["lost", "503", "503"])  # the first batch is stored, then its retries fail
        first, summary = send(
            segbill, fake.url, "a.jsonl", "--state", "s.db", "--batch-size", "10", "--concurrency", "1", "--max-retries", "2"
        )
        assert first.exit_code == 1 and summary["dead_lettered_by_reason"] == {"unreachable": 10}
        (tmp_path / "dead.jsonl").rename(tmp_path / "retry.jsonl")
        write(tmp_path / "b.jsonl", jsonl(*messages(30, prefix="b")))
        replay, summary = send(segbill, fake.url, "retry.jsonl", "b.jsonl", "--state", "s.db", "--batch-size", "25")
        assert replay.exit_code == 0, replay.stderr
        assert (summary["delivered"], summary["already_delivered"]) == (40, 10)
        assert fake.stored_by_refused_batches() == []
        assert fake.counts("lago") == {**{f"m{i}": 1 for i in range(30)}, **{f"b{i}": 1 for i in range(30)}}


def test_keys_sent_without_an_answer_are_resent_once_with_their_request(tmp_path: Path, claim_method: None) -> None:
    from segbill.state import Claim

    ledger = State(tmp_path / "s.db", "lago")
    ledger.claim([("a", 1), ("b", 2), ("c", 3), ("d", 4)])
    ledger.sending(["a", "b"])
    ledger.sending(["d"])
    ledger.close()  # c was claimed, never sent: forgotten; a, b and d may be stored
    again = State(tmp_path / "s.db", "lago")
    verdicts = again.claim([("a", 1), ("b", 2), ("c", 3), ("d", 4), ("a", 1), ("b", 9)])
    assert verdicts == [Claim.RESEND, Claim.RESEND, Claim.NEW, Claim.RESEND, Claim.DUPLICATE, Claim.SHIFTED]
    assert again.resending["a"] == again.resending["b"] != again.resending["d"]
    again.release(["a"], refused=True)  # the platform refused it: not stored
    again.release(["b"])  # not attempted this time: still maybe stored
    again.close()
    third = State(tmp_path / "s.db", "lago")
    assert third.claim([("a", 1), ("b", 2)]) == [Claim.NEW, Claim.RESEND]
    third.close()


def test_the_frontier_forgets_finished_lines_so_memory_stays_flat() -> None:
    from segbill.segment import Origin, Record
    from segbill.state import Frontier

    frontier = Frontier(None)
    records = [Record(Origin("f", n, n * 10, n * 10 + 10), b"") for n in range(1, 1001)]
    for record in records:
        frontier.hold(record)
    frontier.release(records[1])  # finished out of order: the first line still holds it back
    assert frontier.position().offset == 10 and frontier.lines_held == 1000
    for record in records[:1] + records[2:]:
        frontier.release(record)
    assert frontier.lines_held == 1  # the line read last may still have records to come
    assert frontier.position() == Checkpoint(10000, 999, False)
    frontier.read_all = True
    assert frontier.position() == Checkpoint(10010, 1000, True) and frontier.lines_held == 0


def test_a_checkpoint_never_passes_a_line_whose_messages_are_not_all_read() -> None:
    """A batch line gives its messages one by one: its first finished (a repeat, skipped) while
    the run stops before the next is read must leave the checkpoint at that line's start, or
    a rerun would never read the messages after it."""
    from segbill.segment import Origin, Record
    from segbill.state import Frontier

    frontier = Frontier(None)
    first = Record(Origin("f", 1, 0, 10), b"")
    batch = Record(Origin("f", 2, 10, 900), b"", index=0)
    for record in (first, batch):
        frontier.hold(record)
        frontier.release(record)
    assert frontier.position() == Checkpoint(10, 1, False)  # line 2 is read again on resume


@pytest.mark.parametrize("store", ["postgres", "clickhouse"])
def test_a_repeat_of_an_event_still_in_flight_is_a_duplicate_not_a_resend(
    segbill, tmp_path: Path, claim_method: None, store: str
) -> None:
    """The first copy's request is marked "sent, no answer yet" while it travels; a repeat read
    meanwhile is a repeat of this run, not an event an earlier run left unanswered."""
    unique = messages(600)
    # The repeats are read (in the second claim chunk) while the first requests wait for answers.
    lines = [*unique[:260], unique[0], unique[150], *unique[260:]]
    path = write(tmp_path / "in.jsonl", jsonl(*lines))
    with FakePlatform(api_key=KEY, lago_store=store, latency=0.3) as platform:
        _, summary = send(segbill, platform.url, str(path), "--state", str(tmp_path / "s.db"), "--concurrency", "8")
        assert summary["delivered"] == 600 and summary["already_delivered"] == 0
        assert summary["skipped_by_reason"] == {"duplicate": 2}
        assert set(platform.writes("lago").values()) == {1}
        assert all(request.status == 200 for request in platform.requests("lago"))


@pytest.fixture(params=[None, 4], ids=["index-in-memory", "index-spilled-to-disk"])
def index_limit(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that keeps nothing claims in memory; past `INDEX_LIMIT` (here 4) its claims move to disk."""
    if request.param is not None:
        monkeypatch.setattr(state, "INDEX_LIMIT", request.param)


def test_a_dry_run_judges_every_repeat_exactly(segbill, tmp_path: Path, index_limit: None) -> None:
    shifted = track(messageId="m5", userId="cus_5", timestamp="2024-02-01T00:00:00.000Z")
    write(tmp_path / "a.jsonl", jsonl(*messages(30), *messages(30)))
    write(tmp_path / "b.jsonl", jsonl(shifted, *messages(40)))
    run = segbill("send", "a.jsonl", "b.jsonl", "--to", "lago", "--dry-run", "--json")
    assert [e["transaction_id"] for e in run.events] == [f"m{i}" for i in range(40)]
    assert orjson.loads(run.stderr.splitlines()[-1])["skipped_by_reason"] == {"duplicate": 60, "duplicate_shifted": 1}


def test_a_dry_run_with_state_judges_repeats_of_the_ledger_by_its_rows(
    segbill, tmp_path: Path, fake: FakePlatform, index_limit: None
) -> None:
    write(tmp_path / "a.jsonl", jsonl(*messages(10)))
    send(segbill, fake.url, "a.jsonl", "--state", "s.db")
    shifted = [track(messageId=f"m{i}", userId=f"cus_{i % 11}", timestamp="2024-02-01T00:00:00.000Z") for i in (2, 15)]
    write(tmp_path / "b.jsonl", jsonl(*messages(20), *messages(20), *shifted))
    run = segbill("send", "b.jsonl", "--to", "lago", "--dry-run", "--json", "--state", "s.db")
    assert [e["transaction_id"] for e in run.events] == [f"m{i}" for i in range(10, 20)]
    assert orjson.loads(run.stderr.splitlines()[-1])["skipped_by_reason"] == {"duplicate": 30, "duplicate_shifted": 2}


def test_a_run_that_keeps_nothing_judges_like_the_ledger(tmp_path: Path, index_limit: None) -> None:
    """The index in memory (or spilled) gives the ledger's verdicts: a released key is new again,
    a key an earlier run sent without an answer is resent once, then a repeat."""
    from segbill.state import Claim

    ledger = State(tmp_path / "s.db", "lago")
    ledger.claim([("a", 1), ("b", 2)])
    ledger.sending(["a"])
    ledger.delivered(["b"])
    ledger.close()
    for path in (None, tmp_path / "s.db"):
        run = State(path, "lago", read_only=path is not None)
        first = run.claim([("a", 1), ("b", 2), ("c", 3), ("d", 4), ("e", 5), ("a", 1), ("b", 9), ("c", 3), ("c", 7)])
        later = run.claim([("a", 1), ("e", 5), ("f", 6)])
        run.release(["c", "f"])
        again = run.claim([("c", 7), ("f", 6), ("f", 6), ("e", 8)])
        run.close()
        if path is None:
            assert first == [Claim.NEW] * 5 + [Claim.DUPLICATE, Claim.SHIFTED, Claim.DUPLICATE, Claim.SHIFTED]
            assert later == [Claim.DUPLICATE, Claim.DUPLICATE, Claim.NEW]
        else:
            assert first == [
                Claim.RESEND,
                Claim.DUPLICATE,
                Claim.NEW,
                Claim.NEW,
                Claim.NEW,
                Claim.DUPLICATE,
                Claim.SHIFTED,
                Claim.DUPLICATE,
                Claim.SHIFTED,
            ]
            assert later == [Claim.DUPLICATE, Claim.DUPLICATE, Claim.NEW]
        assert again == [Claim.NEW, Claim.NEW, Claim.DUPLICATE, Claim.SHIFTED]


def test_a_hash_found_across_two_entries_of_the_index_is_not_a_hit(tmp_path: Path) -> None:
    """The index finds a key's hash with one search in a packed bucket: a match that starts inside
    an entry (the end of one entry and the start of the next) must not count."""
    run = State(None, "lago")
    index = state.KeyIndex(run.db)
    first, second = bytes([7, 7]) + bytes(range(1, 11)), bytes([7, 7]) + bytes(range(101, 111))
    assert index.claim([first, second], [1, 2]) == [None, None]
    # Both in one bucket (same first two bytes), each entry 10 hash bytes then a 6-byte time: the
    # last 5 bytes of the first entry (its time's) and the first 5 of the second.
    straddling = bytes([7, 7]) + (1).to_bytes(6, "little")[1:] + bytes(range(101, 106))
    assert index.claim([straddling, straddling, first], [3, 3, 1]) == [None, 3, 1]
    run.close()

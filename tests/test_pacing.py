"""Pacing and adaptive concurrency: stay under a platform's limit instead of bouncing off it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import orjson
import pytest

from segbill import delivery
from segbill.delivery import Concurrency, Pacer
from segbill.testing.fake_platform import FakePlatform

from .conftest import jsonl, track, write

KEY = "sk-pacing-key"


def lago_headers(remaining: int, reset: int = 1) -> httpx.Headers:
    return httpx.Headers({"X-RateLimit-Limit": "50", "X-RateLimit-Remaining": str(remaining), "X-RateLimit-Reset": str(reset)})


def test_the_pacer_learns_an_announced_limit() -> None:
    pacer = Pacer(rate=None)
    pacer.observe(lago_headers(49))
    assert pacer._spacing == pytest.approx(1 / (50 * delivery.PACE_MARGIN))
    assert pacer.paused_until == 0.0
    pacer.observe(lago_headers(30, reset=2))
    assert pacer._spacing == pytest.approx(2 / (50 * delivery.PACE_MARGIN))  # the window is 2 s long


def test_a_spent_window_is_waited_out_until_it_ends_not_for_a_rounded_up_reset() -> None:
    pacer = Pacer(rate=None)
    opened = time.monotonic()
    pacer.observe(lago_headers(49))  # this answer's request opened the window
    pacer.observe(lago_headers(0, reset=1))
    assert opened + 1 <= pacer.paused_until <= time.monotonic() + 1
    unknown = Pacer(rate=None)  # the window's opening was never seen: wait the whole Reset
    before = time.monotonic()
    unknown.observe(lago_headers(0, reset=3))
    assert unknown.paused_until >= before + 3


def test_the_pacer_ignores_answers_without_rate_headers() -> None:
    pacer = Pacer(rate=None)
    pacer.observe(httpx.Headers({"Content-Type": "application/json"}))
    assert pacer._spacing == 0.0 and pacer.paused_until == 0.0


def test_rate_spaces_request_starts_by_their_events() -> None:
    async def starts() -> list[float]:
        pacer = Pacer(rate=1000.0)
        times = []
        for _ in range(5):
            await pacer.wait(50)  # 50 events at 1,000/s: 50 ms apart
            times.append(time.monotonic())
        return times

    times = asyncio.run(starts())
    assert all(later - earlier >= 0.045 for earlier, later in zip(times, times[1:]))


def test_adaptive_concurrency_grows_while_used_and_answers_are_steady_then_cuts_on_congestion() -> None:
    async def scenario() -> tuple[float, float]:
        limit = Concurrency(None)
        assert limit.limit == 4  # the old fixed default: a modest start, then it adapts
        for _ in range(60):  # keep it saturated: as many requests in flight as allowed
            await asyncio.gather(*(limit.acquire() for _ in range(int(limit.limit))))
            for _ in range(int(limit.limit)):
                await limit.release(0.05, congested=False)
        grown = limit.limit
        await limit.acquire()
        await limit.release(0.05, congested=True)
        return grown, limit.limit

    grown, cut = asyncio.run(scenario())
    assert grown >= 8
    assert cut == pytest.approx(grown * 0.7)


def test_fixed_concurrency_never_changes() -> None:
    async def scenario() -> float:
        limit = Concurrency(3)
        for congested in (False, True, False):
            await limit.acquire()
            await limit.release(0.05, congested=congested)
        return limit.limit

    assert asyncio.run(scenario()) == 3


def _send(segbill, tmp_path: Path, url: str, count: int, *extra: str) -> dict:
    write(tmp_path / "in.jsonl", jsonl(*(track(messageId=f"m{i}") for i in range(count))))
    run = segbill("send", "in.jsonl", "--to", "lago", "--json", "--quiet", *extra, env={"LAGO_API_URL": url, "LAGO_API_KEY": KEY})
    assert run.exit_code == 0, run.stderr
    return orjson.loads(run.stdout)


def test_an_announced_limit_is_respected_without_a_single_429(segbill, tmp_path: Path) -> None:
    with FakePlatform(api_key=KEY, lago_rate_limit=20, latency=0.01) as fake:
        summary = _send(segbill, tmp_path, fake.url, 600, "--batch-size", "10")
        assert summary["delivered"] == 600
        assert fake.throttled("lago") == 0
        assert len(fake.requests("lago")) == 60


def test_rate_caps_events_per_second(segbill, tmp_path: Path) -> None:
    with FakePlatform(api_key=KEY) as fake:
        _send(segbill, tmp_path, fake.url, 200, "--batch-size", "20", "--rate", "400")
        arrivals = [request.at for request in fake.requests("lago")]
    assert len(arrivals) == 10
    assert arrivals[-1] - arrivals[0] >= 9 * 20 / 400 * 0.9  # never faster than 400 events/s


@pytest.mark.parametrize("value", ["0", "many", "-1", "300"])
def test_a_bad_concurrency_exits_2(segbill, tmp_path: Path, value: str) -> None:
    write(tmp_path / "in.jsonl", jsonl(track()))
    run = segbill("send", "in.jsonl", "--to", "lago", "--concurrency", value, env={"LAGO_API_KEY": KEY})
    assert run.exit_code == 2 and "--concurrency" in run.stderr


def test_a_pace_is_learned_from_a_429_when_no_limit_is_announced() -> None:
    pacer = Pacer(rate=None)
    for _ in range(40):
        pacer.accepted()
    pacer.throttled(2.0)  # 40 accepted, then "wait 2 s": about 20 requests a second at most
    # A whole-second Retry-After is rounded up: the window is taken as half a second shorter.
    assert pacer._learned == pytest.approx(1.5 / (40 * delivery.PACE_MARGIN), rel=0.05)
    assert pacer.paused_until >= time.monotonic() + 1.9  # the pause itself is the full 2 s
    exact = Pacer(rate=None)  # a reset date gives a fraction of a second: nothing to correct
    for _ in range(40):
        exact.accepted()
    exact.throttled(1.75)
    assert exact._learned == pytest.approx(1.75 / (40 * delivery.PACE_MARGIN), rel=0.05)
    learned = pacer._learned
    for _ in range(1000):
        pacer.accepted()
    assert pacer._learned == pytest.approx(learned * delivery.LEARNED_DECAY**1000)  # it relaxes


def test_nothing_is_learned_from_a_small_sample_or_when_the_limit_is_announced() -> None:
    sporadic = Pacer(rate=None)
    for _ in range(delivery.MIN_LEARNING_SAMPLE - 1):
        sporadic.accepted()
    sporadic.throttled(1.0)
    assert sporadic._learned == 0.0
    announced = Pacer(rate=None)
    announced.observe(lago_headers(49))
    for _ in range(100):
        announced.accepted()
    announced.throttled(1.0)
    assert announced._learned == 0.0



def test_one_odd_reset_does_not_set_the_pace_for_the_run() -> None:
    """A reset rounded up past a 1 s window (2) once must not halve the pace for good."""
    pacer = Pacer(rate=None)
    for remaining in (49, 48, 47):
        pacer.observe(lago_headers(remaining))
    pacer.observe(lago_headers(46, reset=2))
    assert pacer._spacing == pytest.approx(1 / (50 * delivery.PACE_MARGIN))
    for remaining in range(45, 40, -1):
        pacer.observe(lago_headers(remaining))
    assert pacer._spacing == pytest.approx(1 / (50 * delivery.PACE_MARGIN))
    longer = Pacer(rate=None)  # a window that really is longer is announced again and again
    for remaining in (49, 48, 47):
        longer.observe(lago_headers(remaining, reset=2))
    assert longer._spacing == pytest.approx(2 / (50 * delivery.PACE_MARGIN))

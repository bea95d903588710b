"""How far issue 14's two untried levers could take rows 1 and 2a, measured on this machine.

    python benchmarks/ceilings.py               # both studies, about 1.5 minutes on 2 cores
    python benchmarks/ceilings.py drivers       # lever 5 only
    python benchmarks/ceilings.py conversion    # lever 4's ceiling only

- drivers (lever 5): the CPU one process spends per 100-event request against the zero-latency
  fake Lago, for three ways of driving httpx: `AsyncClient` with four requests in flight (how
  segbill sends today), a sync `Client` called from asyncio through a pool of four threads (the
  change that keeps segbill's pacing and concurrency code), and a sync `Client` in four plain
  threads (the cheapest way httpx can be driven). Bodies are serialized before the clock starts.
- conversion (lever 4's ceiling): rows 1 and 2a with segbill's per-message conversion made
  free. A child process replaces time parsing by a constant and Lago's conversion by one that
  flattens nothing (events with empty properties), then runs the CLI unchanged: what a compiled
  converter would at best leave, since its own cost is not zero. Its output is wrong on purpose;
  only its time counts.

Ratios are against baselines measured in the same run (bench.py's parse floor and per-event
loop). The fake runs in this process, each client in its own.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import bench

REQUESTS = 1_500  # of 100 events each: 150,000 events, about what row 2a sends
IN_FLIGHT = 4
FREE_MILLIS = 1_704_067_200_000


def worker_driver(kind: str, url: str, events_path: str) -> None:
    """Post REQUESTS pre-serialized batches one way; print the CPU and wall time they took."""
    import asyncio
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    import orjson

    events = [orjson.loads(line) for line in Path(events_path).read_bytes().splitlines()]
    bodies = []
    for number in range(REQUESTS):
        batch = [{**event, "transaction_id": f"{kind}-{number}-{index}"} for index, event in enumerate(events[:100])]
        events = events[100:] + events[:100]
        bodies.append(orjson.dumps({"events": batch}))
    endpoint = url + "/api/v1/events/batch"
    headers = {"Authorization": f"Bearer {bench.KEY}", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=IN_FLIGHT, max_keepalive_connections=IN_FLIGHT)
    statuses: dict[str, int] = {}

    def count(status: int) -> None:
        statuses[str(status)] = statuses.get(str(status), 0) + 1

    started, cpu = time.perf_counter(), time.process_time()
    if kind == "async":

        async def send_all() -> None:
            async with httpx.AsyncClient(limits=limits, trust_env=False) as client:
                room = asyncio.Semaphore(IN_FLIGHT)

                async def post(body: bytes) -> None:
                    async with room:
                        count((await client.post(endpoint, content=body, headers=headers)).status_code)

                await asyncio.gather(*(post(body) for body in bodies))

        asyncio.run(send_all())
    elif kind == "executor":

        async def send_all() -> None:
            loop = asyncio.get_running_loop()
            with httpx.Client(limits=limits, trust_env=False) as client, ThreadPoolExecutor(IN_FLIGHT) as pool:
                room = asyncio.Semaphore(IN_FLIGHT)

                async def post(body: bytes) -> None:
                    async with room:
                        answer = await loop.run_in_executor(pool, lambda: client.post(endpoint, content=body, headers=headers))
                        count(answer.status_code)

                await asyncio.gather(*(post(body) for body in bodies))

        asyncio.run(send_all())
    elif kind == "threads":
        pending = iter(bodies)
        lock = threading.Lock()
        with httpx.Client(limits=limits, trust_env=False) as client:

            def post_all() -> None:
                while True:
                    with lock:
                        body = next(pending, None)
                    if body is None:
                        return
                    status = client.post(endpoint, content=body, headers=headers).status_code
                    with lock:
                        count(status)

            threads = [threading.Thread(target=post_all) for _ in range(IN_FLIGHT)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    else:
        raise SystemExit(f"unknown driver {kind!r}")
    print(json.dumps({"cpu": time.process_time() - cpu, "wall": time.perf_counter() - started, "statuses": statuses}))


def worker_free(arguments: list[str]) -> None:
    """segbill's CLI with conversion free: a constant time, no properties (wrong output, on purpose)."""
    import segbill
    import segbill.mapping
    from segbill.segment import Billable
    from segbill.targets import lago

    def free_convert(billable: Billable, separator: str) -> dict[str, Any]:
        return {
            "transaction_id": billable.id,
            "external_subscription_id": billable.customer,
            "code": billable.event,
            "timestamp": "1704067200.000",
            "properties": {},
        }

    segbill.mapping.parse_time = lambda value: None if value is None else FREE_MILLIS  # type: ignore[assignment]
    object.__setattr__(lago.TARGET, "convert", free_convert)
    sys.argv = ["segbill", *arguments]
    segbill.main()


def drivers(work: Path) -> None:
    from segbill.testing.fake_platform import FakePlatform

    events = bench.converted_events(bench.corpus(bench.FULL.speed, 1), 10_000, work)
    results: dict[str, list[dict[str, Any]]] = {}
    for _ in range(3):  # alternating, so a busy moment hits every driver alike
        for kind in ("async", "executor", "threads"):
            with FakePlatform(api_key=bench.KEY) as fake:
                bench.log(f"drivers: {kind}, {REQUESTS:,} requests of 100 events")
                done = bench.run([bench.PY, __file__, "_driver", kind, fake.url, str(events)])
                if done.code != 0:
                    raise RuntimeError(done.stderr.decode(errors="replace")[-2000:])
                results.setdefault(kind, []).append(json.loads(done.stdout))
    print("\n| driving httpx | CPU per request (median of 3) | wall for 1,500 requests | events/s |")
    print("| --- | --- | --- | --- |")
    for kind, runs in results.items():
        cpu = statistics.median(run["cpu"] for run in runs) / REQUESTS * 1000
        wall = statistics.median(run["wall"] for run in runs)
        print(f"| {kind} | {cpu:.2f} ms | {wall:.2f} s | {REQUESTS * 100 / wall:,.0f} |  statuses {runs[-1]['statuses']}")


def conversion(work: Path) -> None:
    from segbill.testing.fake_platform import FakePlatform

    path = bench.corpus(bench.FULL.speed, 1)
    floors, dry, dry_free = [], [], []
    for _ in range(3):
        bench.log("conversion: parse floor, dry run, dry run with conversion free")
        floors.append(json.loads(bench.run([bench.PY, bench.__file__, "_floor", str(path)]).stdout)["seconds"])
        dry.append(bench.segbill_send(path, "lago", work=work, dry=True)[0].wall)
        free = free_command(path, work, "--dry-run")
        dry_free.append(bench.run(free, stdout_devnull=True).wall)
    sends: dict[str, float] = {}
    for name, free in (("segbill", False), ("conversion free", True)):
        with FakePlatform(api_key=bench.KEY) as fake:
            bench.log(f"conversion: send, {name}")
            env = {"LAGO_API_URL": fake.url, "LAGO_API_KEY": bench.KEY}
            if free:
                done = bench.run(free_command(path, work), env=env)
                summary = bench.summary_of(done, dry=False)
            else:
                done, summary = bench.segbill_send(path, "lago", work=work, env=env)
            sends[name] = summary["delivered"] / done.wall
    events = bench.converted_events(path, bench.FULL.per_event, work)
    with FakePlatform(api_key=bench.KEY) as fake:
        bench.log("conversion: baseline, one POST per event")
        data = json.loads(bench.run([bench.PY, bench.__file__, "_baseline", "per-event", fake.url, str(events)]).stdout)
    per_event = data["events"] / data["seconds"]
    floor = statistics.median(floors)
    print("\n| row | segbill | conversion free | target |")
    print("| --- | --- | --- | --- |")
    print(
        f"| 1: floor {floor:.2f} s / dry run | {statistics.median(dry):.2f} s, {floor / statistics.median(dry):.2f} "
        f"| {statistics.median(dry_free):.2f} s, {floor / statistics.median(dry_free):.2f} | >= {bench.TARGET_DRY} |"
    )
    print(
        f"| 2a: send / per-event loop ({per_event:,.0f} events/s) | {sends['segbill']:,.0f} events/s, "
        f"{sends['segbill'] / per_event:.1f}x | {sends['conversion free']:,.0f} events/s, "
        f"{sends['conversion free'] / per_event:.1f}x | >= {bench.TARGET_PER_EVENT:.0f}x |"
    )


def free_command(path: Path, work: Path, *extra: str) -> list[str]:
    dead = work / "dead-free.jsonl"
    dead.unlink(missing_ok=True)
    arguments = ["send", str(path), "--to", "lago", "--json", "--quiet", "--dead-letter", str(dead), *extra]
    return [bench.PY, __file__, "_free", *arguments]


def main() -> int:
    if sys.argv[1:2] == ["_driver"]:
        worker_driver(*sys.argv[2:5])
        return 0
    if sys.argv[1:2] == ["_free"]:
        worker_free(sys.argv[2:])
        return 0
    wanted = sys.argv[1:] or ["drivers", "conversion"]
    unknown = set(wanted) - {"drivers", "conversion"}
    if unknown:
        raise SystemExit(f"unknown study: {', '.join(sorted(unknown))} (drivers, conversion)")
    print(f"machine: {bench.machine_line(bench.machine())}")
    with tempfile.TemporaryDirectory() as folder:
        for study in wanted:
            {"drivers": drivers, "conversion": conversion}[study](Path(folder))
    return 0


if __name__ == "__main__":
    sys.exit(main())

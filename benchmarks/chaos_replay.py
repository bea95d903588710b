"""A full-size chaos replay: every billable event stored exactly once, nothing transient dead-lettered.

Generates a realistic Segment export (segbill.testing.corpus), starts the fake Lago/Hyperline
server on 127.0.0.1 failing 5% of requests with 503, 5% with 429, 2% with connection resets and
1% with answers lost after the commit, runs the real `segbill send` in a subprocess, and checks
the fake's store against a dry run of the same export. Run from the repository root:

    python benchmarks/chaos_replay.py [--events 50000] [--target lago|hyperline|both]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from segbill.testing import corpus
from segbill.testing.fake_platform import FakePlatform

FAULTS = {"503": 0.05, "429": 0.05, "reset": 0.02, "lost": 0.01}
KEY = "bench-key"


def segbill(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "segbill", *args], capture_output=True, env={**os.environ, **(env or {})}, check=False
    )


def replay(target: str, export: Path, work: Path) -> bool:
    key_field = "transaction_id" if target == "lago" else "record"
    dry = segbill("send", str(export), "--to", target, "--dry-run", "--dead-letter", str(work / f"dry-{target}.jsonl"))
    expected = {e[key_field] if target == "lago" else e["record"]["id"] for e in map(orjson.loads, dry.stdout.splitlines())}
    dead = work / f"dead-{target}.jsonl"
    with FakePlatform(api_key=KEY, faults=FAULTS, seed=1, retry_after=1) as fake:
        env = {f"{target.upper()}_API_URL": fake.url, f"{target.upper()}_API_KEY": KEY}
        started = time.perf_counter()
        run = segbill("send", str(export), "--to", target, "--json", "--quiet", "--dead-letter", str(dead), env=env)
        elapsed = time.perf_counter() - started
        summary = orjson.loads(run.stdout)
        counts = fake.counts(target)  # type: ignore[arg-type]
        throttled = fake.throttled(target)  # type: ignore[arg-type]
    transient = [e for e in map(orjson.loads, dead.read_bytes().splitlines())] if dead.exists() else []
    transient = [e for e in transient if "still failed" in e["reason"]]
    ok = (
        set(counts) == expected
        and set(counts.values()) == {1}
        and not transient
        and run.returncode in (0, 1)  # 1: the export's own invalid records (anonymous-only tracks)
        and summary["dead_lettered"] == summary["dead_lettered_by_reason"].get("missing_customer", 0)
        and KEY.encode() not in run.stdout + run.stderr
    )
    print(
        f"{target:<9} {len(expected):>7,} billable  stored {len(counts):>7,} (max {max(counts.values(), default=0)} per key)  "
        f"requests {summary['requests']:,} retries {summary['retries']:,} 429s {throttled:,}  "
        f"already {summary['already_delivered']:,}  transient dead letters {len(transient)}  "
        f"exit {run.returncode}  {elapsed:.1f} s  {'OK' if ok else 'FAILED'}"
    )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--target", choices=["lago", "hyperline", "both"], default="both")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        export = work / "export.jsonl.gz"
        corpus.write_jsonl(export, corpus.messages(args.events, seed=3, duplicate_ratio=0.02), gzip=True)
        targets = ["lago", "hyperline"] if args.target == "both" else [args.target]
        results = [replay(target, export, work) for target in targets]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())

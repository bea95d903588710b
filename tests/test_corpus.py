"""The test corpus generator: deterministic, realistic, and sample_data rebuilds identically."""

from __future__ import annotations

import gzip
import hashlib
import itertools
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from segbill.testing import corpus

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_data"
TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{3}|\.\d{6})?(Z|[+-]\d{2}:\d{2})")
MESSAGE_ID = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"  # UUID4
    r"|[0-9A-F]{8}-[0-9A-F]{4}-4[0-9A-F]{3}-[89AB][0-9A-F]{3}-[0-9A-F]{12}"  # iOS
    r"|ajs-[0-9a-f]{32}|ajs-next-[0-9a-f]{32}|(ajs|node)-next-\d{13}-[0-9a-f-]{36}"
)


def _lines(n: int, **options: object) -> list[bytes]:
    return [corpus.dumps_line(m) for m in corpus.messages(n, **options)]  # type: ignore[arg-type]


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ms(value: str) -> int:
    return (datetime.fromisoformat(value) - EPOCH) // timedelta(milliseconds=1)


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    assert _lines(300, seed=5, duplicate_ratio=0.1) == _lines(300, seed=5, duplicate_ratio=0.1)
    assert _lines(300, seed=5) != _lines(300, seed=6)


def test_every_message_is_valid_json_with_segment_fields() -> None:
    types: set[str] = set()
    timestamp_shapes: set[str] = set()
    anonymous_tracks = numeric_users = 0
    for line in _lines(3000, seed=1):
        message = orjson.loads(line)
        assert line.endswith(b"\n") and b"\n" not in line[:-1]
        types.add(message["type"])
        assert MESSAGE_ID.fullmatch(message["messageId"]), message["messageId"]
        assert message["version"] == 2 and message["integrations"] == {}
        assert message["context"]["library"]["name"]
        for field in ("timestamp", "originalTimestamp", "sentAt", "receivedAt"):
            assert TIME.fullmatch(message[field]), message[field]
        timestamp_shapes.add(re.sub(r"\d", "9", message["timestamp"]))
        assert message.get("userId") is not None or message.get("anonymousId")
        if message["type"] == "track":
            assert message["event"] in corpus.DEFAULT_EVENTS
            assert isinstance(message["properties"], dict)
            anonymous_tracks += not message.get("userId")
        numeric_users += isinstance(message.get("userId"), int)
    assert types == {"track", "identify", "page", "screen", "group", "alias"}
    assert {"9999-99-99T99:99:99.999Z", "9999-99-99T99:99:99.999999+99:99", "9999-99-99T99:99:99+99:99"} <= timestamp_shapes
    assert anonymous_tracks > 0 and numeric_users > 0


def test_track_ratio_events_and_span() -> None:
    msgs = list(corpus.messages(2000, seed=2, track_ratio=1.0, events=("Thing Done",), days=2))
    assert {m["type"] for m in msgs} == {"track"} and {m["event"] for m in msgs} == {"Thing Done"}
    received = [_ms(m["receivedAt"]) for m in msgs]
    span_days = (received[-1] - received[0]) / 86_400_000
    assert 1.5 < span_days < 2.5
    assert sum(b < a for a, b in itertools.pairwise(received)) < len(received) // 10  # monotonic-ish


def test_properties_hold_the_awkward_values() -> None:
    seen = {"big_int": False, "array_of_objects": False, "null": False, "long_unicode": False, "float": False}
    for m in corpus.messages(3000, seed=3, track_ratio=1.0):
        props = m["properties"]
        values = list(props.values())
        seen["big_int"] |= any(isinstance(v, int) and v > 2**53 for v in values)
        seen["array_of_objects"] |= any(isinstance(v, list) and v and isinstance(v[0], dict) for v in values)
        seen["null"] |= any(v is None for v in values)
        seen["long_unicode"] |= any(isinstance(v, str) and len(v) > 200 and not v.isascii() for v in values)
        seen["float"] |= any(isinstance(v, float) for v in values)
    assert all(seen.values()), seen


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.3])
def test_duplicates_appear_at_the_requested_ratio(ratio: float) -> None:
    n = 4000
    first: dict[str, dict] = {}
    repeats = shifted = 0
    for m in corpus.messages(n, seed=4, duplicate_ratio=ratio):
        earlier = first.setdefault(m["messageId"], m)
        if earlier is not m:
            repeats += 1
            shift = _ms(m["timestamp"]) - _ms(earlier["timestamp"])
            assert 0 <= shift < 10 and m["receivedAt"] >= earlier["receivedAt"]
            shifted += shift > 0
    assert abs(repeats / n - ratio) < 0.02
    assert (shifted > 0) == (ratio > 0)


def test_s3_layout_paths_and_real_gzip(tmp_path: Path) -> None:
    msgs = list(corpus.messages(400, seed=9, days=3, duplicate_ratio=0.05))
    files = corpus.write_s3_layout(tmp_path, iter(msgs), source_id="SRC123", per_file=50)
    assert files == sorted(tmp_path.rglob("*.gz"))
    back: list[dict] = []
    for path in files:
        relative = path.relative_to(tmp_path).parts
        assert relative[:2] == ("segment-logs", "SRC123") and len(relative) == 4
        day = int(relative[2])
        assert day % 86_400_000 == 0 and re.fullmatch(r"\d{13}\.[0-9a-f]{12}\.gz", relative[3])
        raw = path.read_bytes()
        assert raw[:2] == b"\x1f\x8b" and raw[4:8] == b"\0\0\0\0"  # gzip, mtime 0
        rows = [orjson.loads(line) for line in gzip.decompress(raw).splitlines()]
        assert 0 < len(rows) <= 50
        assert all(_ms(r["receivedAt"]) // 86_400_000 * 86_400_000 == day for r in rows)
        back.extend(rows)
    assert len({p.parent.name for p in files}) >= 3
    key = lambda m: (m["messageId"], m["receivedAt"])  # noqa: E731
    assert sorted(back, key=key) == sorted(msgs, key=key)


def test_write_jsonl_plain_and_gzip(tmp_path: Path) -> None:
    msgs = list(corpus.messages(50, seed=8))
    assert corpus.write_jsonl(tmp_path / "a.jsonl", msgs) == 50
    assert corpus.write_jsonl(tmp_path / "a.jsonl.gz", msgs, gzip=True) == 50
    plain = (tmp_path / "a.jsonl").read_bytes()
    assert gzip.decompress((tmp_path / "a.jsonl.gz").read_bytes()) == plain
    assert [orjson.loads(line) for line in plain.splitlines()] == msgs


def test_command_line(tmp_path: Path) -> None:
    out = tmp_path / "bench.jsonl.gz"
    subprocess.run(
        [sys.executable, "-m", "segbill.testing.corpus", "200", str(out), "--seed", "3", "--gzip"],
        check=True,
        cwd=ROOT,
        capture_output=True,
    )
    assert gzip.decompress(out.read_bytes()) == b"".join(_lines(200, seed=3))


def _content(path: Path) -> bytes:
    """Decompressed: gzip's compressed bytes depend on the zlib version, the content must not."""
    data = path.read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(_content(path)).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.suffix not in (".py", ".md") and "__pycache__" not in path.parts
    }


def test_sample_data_regenerates_identically(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(SAMPLE / "make_sample_data.py"), str(tmp_path)], check=True, cwd=ROOT)
    committed = _digests(SAMPLE)
    assert committed and _digests(tmp_path) == committed
    assert sum(path.stat().st_size for path in SAMPLE.rglob("*") if path.is_file()) < 200_000


def test_browser_messages_come_from_analytics_js_with_a_large_context() -> None:
    lines = _lines(2000, seed=4, browser=True)
    assert lines == _lines(2000, seed=4, browser=True)
    parsed = [orjson.loads(line) for line in lines]
    assert {message["context"]["library"]["name"] for message in parsed} == {"analytics.js"}
    assert {message["type"] for message in parsed} == {"track", "identify", "page", "group", "alias"}  # no screens
    sizes = sorted(len(orjson.dumps(message["context"])) for message in parsed)
    assert sizes[0] >= 800 and sizes[len(sizes) // 2] >= 1100 and sizes[-1] <= 2048
    assert sum(message["type"] == "track" for message in parsed) > 0.7 * len(parsed)

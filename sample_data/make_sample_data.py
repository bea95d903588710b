"""Build sample_data/: a small, realistic Segment export with its known bad lines.

Run from the repository root:

    python sample_data/make_sample_data.py [OUT_DIR]

OUT_DIR defaults to this script's folder. The output is byte-for-byte the same on every run
(seeded messages, gzip with mtime 0 and no file name), so tests can regenerate it and compare.
The layout of events.jsonl is checked against `EVENTS_LAYOUT` below, which README.md repeats.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run as a script from a checkout: import segbill from it

from segbill.testing import corpus  # noqa: E402

SOURCE_ID = "qR7mXk2PzL9vTn4Wb8sHcE"

# events.jsonl, line by line (1-based). Lines not listed are ordinary, billable track messages.
EVENTS_LAYOUT: dict[int, str] = {
    1: "track from analytics-python (+00:00 times)",
    2: "track with a ...123Z timestamp (repeated on line 26)",
    4: "identify",
    6: "track, CRLF line ending",
    7: "HTTP-API envelope {batch:[track, track, identify], context, integrations, sentAt}",
    9: "JSON array of 2 track messages",
    10: "track without messageId",
    11: "page",
    12: "BAD for billing: track with anonymousId only (no userId)",
    13: "BAD: not JSON (a log line)",
    15: "blank line",
    16: "track, CRLF line ending",
    17: "BAD: JSON string, not an object",
    18: "BAD: JSON number, not an object",
    20: "BAD: truncated JSON object (first half of a track message)",
    21: "group",
    22: "track with a numeric userId",
    23: "track with properties.trace_id = 2**53 + 1 (exact only as an integer)",
    24: "screen",
    25: "alias",
    26: "duplicate of line 2: same messageId, timestamp +3 ms, later receivedAt",
    27: "track with properties.trace_id = 2**64 + 5 (beyond 64 bits)",
}
EVENTS_LINES = 40


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else HERE
    out.mkdir(parents=True, exist_ok=True)
    write_s3_export(out)
    write_events(out / "events.jsonl")
    write_already_decompressed(out / "already-decompressed.gz")
    return 0


def write_s3_export(out: Path) -> None:
    """~150 messages over 3 days as Segment's S3 export writes them, with some repeats."""
    logs = out / "segment-logs"
    if logs.exists():
        shutil.rmtree(logs)  # stale files from an earlier layout would otherwise stay
    stream = corpus.messages(150, seed=2024, days=2.5, duplicate_ratio=0.04, customers=20)
    corpus.write_s3_layout(out, stream, source_id=SOURCE_ID, per_file=25)


class _Pool:
    """Seeded messages taken in order by what a line needs, so the file reads naturally."""

    def __init__(self) -> None:
        self.items = list(corpus.messages(400, seed=7, days=1, start="2024-01-08T09:00:00Z",
                                          customers=12, track_ratio=0.6))

    def take(self, test: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        for index, message in enumerate(self.items):
            if test(message):
                return self.items.pop(index)
        raise LookupError("the seeded pool has no message for this line")


def _is(kind: str) -> Callable[[dict[str, Any]], bool]:
    return lambda m: m["type"] == kind


def _billable(m: dict[str, Any]) -> bool:
    return m["type"] == "track" and isinstance(m.get("userId"), str) and bool(m["userId"])


def _from(library: str) -> Callable[[dict[str, Any]], bool]:
    return lambda m: _billable(m) and m["context"]["library"]["name"] == library


def _plus_ms(value: str, ms: int) -> str:
    moment = datetime.fromisoformat(value) + timedelta(milliseconds=ms)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _line(message: Any) -> bytes:
    return corpus.dumps_line(message).rstrip(b"\n")


def write_events(path: Path) -> None:
    """Plain NDJSON mixing good messages with every kind of line an export can throw at a reader."""
    pool = _Pool()
    track = lambda: _line(pool.take(_billable))  # noqa: E731
    lines: list[bytes] = []

    def add(line: bytes, crlf: bool = False) -> None:
        lines.append(line + (b"\r\n" if crlf else b"\n"))

    add(_line(pool.take(_from("analytics-python"))))  # 1
    original = pool.take(lambda m: _billable(m) and m["timestamp"].endswith("Z") and len(m["timestamp"]) == 24)
    add(_line(original))  # 2
    add(track())  # 3
    add(_line(pool.take(_is("identify"))))  # 4
    add(track())  # 5
    add(track(), crlf=True)  # 6
    items = [pool.take(lambda m: _from("analytics-python")(m) and "groupId" in m["context"]),
             pool.take(_from("analytics-python")),
             pool.take(lambda m: _is("identify")(m) and m["context"]["library"]["name"] == "analytics-python")]
    group_id = items[0]["context"]["groupId"]
    for item in items:
        del item["receivedAt"], item["channel"], item["context"]  # Segment adds the first two on receipt
    items[0]["context"] = {"groupId": group_id}  # merged with the envelope's context by the reader
    envelope = {"batch": items, "context": {"library": {"name": "analytics-python", "version": "2.3.3"}},
                "integrations": {}, "sentAt": items[-1]["sentAt"]}
    add(_line(envelope))  # 7
    add(track())  # 8
    add(_line([pool.take(_billable), pool.take(_billable)]))  # 9
    no_id = pool.take(_billable)
    del no_id["messageId"]
    add(_line(no_id))  # 10
    add(_line(pool.take(_is("page"))))  # 11
    anonymous = pool.take(lambda m: _billable(m) and "anonymousId" in m)
    del anonymous["userId"]
    add(_line(anonymous))  # 12
    add(b"2024-01-08 10:12:44 WARN segment-export: retrying upload of part 3")  # 13
    add(track())  # 14
    add(b"")  # 15
    add(track(), crlf=True)  # 16
    add(b'"Order Completed"')  # 17
    add(b"1704708000000")  # 18
    add(track())  # 19
    truncated = _line(pool.take(_billable)).decode()
    add(truncated[: len(truncated) // 2].encode())  # 20
    add(_line(pool.take(_is("group"))))  # 21
    add(_line(pool.take(lambda m: m["type"] == "track" and isinstance(m.get("userId"), int))))  # 22
    big = pool.take(_billable)
    big["properties"]["trace_id"] = 2**53 + 1
    add(_line(big))  # 23
    add(_line(pool.take(_is("screen"))))  # 24
    add(_line(pool.take(_is("alias"))))  # 25
    repeat = dict(original)
    repeat["timestamp"] = _plus_ms(original["timestamp"], 3)
    repeat["receivedAt"] = _plus_ms(original["receivedAt"], 61_000)
    add(_line(repeat))  # 26
    huge = pool.take(_billable)
    huge["properties"]["trace_id"] = 2**64 + 5
    add(json.dumps(huge, ensure_ascii=False, separators=(",", ":")).encode())  # 27
    while len(lines) < EVENTS_LINES:
        add(track())  # 28-40
    _check_layout(lines)
    path.write_bytes(b"".join(lines))


def _check_layout(lines: list[bytes]) -> None:
    """Fail loudly if an edit moved a documented line: README.md and tests quote the numbers."""
    assert len(lines) == EVENTS_LINES
    assert lines[14] == b"\n" and lines[5].endswith(b"\r\n") and lines[15].endswith(b"\r\n")
    for number in (13, 17, 18, 20):
        try:
            value = json.loads(lines[number - 1])
        except ValueError:
            continue
        assert not isinstance(value, (dict, list)), number
    assert json.loads(lines[6])["batch"] and len(json.loads(lines[8])) == 2
    assert "messageId" not in json.loads(lines[9]) and "userId" not in json.loads(lines[11])
    assert json.loads(lines[25])["messageId"] == json.loads(lines[1])["messageId"]


def write_already_decompressed(path: Path) -> None:
    """A .gz that is plain NDJSON, as some S3 downloads arrive already decompressed."""
    tracks = (m for m in corpus.messages(40, seed=11, start="2024-01-09T12:00:00Z", days=0.1) if _billable(m))
    path.write_bytes(b"".join(corpus.dumps_line(m) for m, _ in zip(tracks, range(5))))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

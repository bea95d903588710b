"""The dead-letter file: every record that could not be delivered, with the reason, replayable.

One JSON object per line, marked `"segbill_dead_letter": 1` so that `segbill send` reads its own
file back and replays the original `record` (or re-reads `raw`, the original text): the writer
and that reading (`ENTRIES`, which `segment.read_line` calls for a marked line) live here.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import stat
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

import orjson

from segbill.segment import Invalid, Loads, Origin, Record, Wrapper, dumps, exact_message, read_line

DEFAULT_PATH = "segbill-dead-letter.jsonl"
DEAD_LETTER_MARKER = "segbill_dead_letter"
# In a dead-letter entry written by `segbill reconcile`: the platform does not hold this event.
MISSING_MARKER = "missing_on_platform"
# How much of an existing file's first line is read to tell whether it holds dead letters.
FIRST_LINE_PROBE = 1 << 16


class DeadLetterWriteError(Exception):
    """The dead-letter file cannot be written (a full disk, a lost volume): the run must stop, as
    a record can only leave with a dead letter that is on disk."""


class DeadLetterFile:
    """Appends entries; the file is created (readable by its owner only) on the first entry."""

    def __init__(self, path: Path, target: str, *, dry_run: bool = False, shard: tuple[int, int] | None = None) -> None:
        """`dry_run`: entries say so, and a later dry run may replace the file (`written_by_dry_runs`).
        `shard`: the run bills shard K of N; a replay with that --shard keeps its entries, even
        when a fix moved a record's customer to another shard."""
        self.path = path
        self.target = target
        self.dry_run = dry_run
        self.shard = shard
        self._handle: BinaryIO | None = None
        self._unsynced = False
        self._failure: str | None = None  # why the file cannot be written, once a write failed
        self._second = -1  # the second `_at` names: an entry's time is written once a second, not per entry
        self._at = ""

    def write(self, record: Record, reason: str, *, missing_on_platform: bool = False) -> None:
        """`missing_on_platform` (reconcile): a send of this entry overrides a ledger that has
        the event as delivered."""
        entry: dict[str, Any] = {
            DEAD_LETTER_MARKER: 1,
            "reason": reason,
            "target": self.target,
            "at": self._now(),
            "source": record.source(),
        }
        if self.dry_run:
            entry["dry_run"] = True
        if missing_on_platform:
            entry[MISSING_MARKER] = True
        if self.shard is not None:
            entry["shard"] = f"{self.shard[0]}/{self.shard[1]}"
        if record.first_source is not None and record.first_source != entry["source"]:
            entry["first_source"] = record.first_source
        data = None
        if record.invalid is None:  # a message, read again with every integer exact
            try:
                entry["record"] = exact_message(record, ENTRIES)
                data = dumps(entry)
            except RecursionError:  # nested too deep for the standard library: kept as its line
                entry.pop("record", None)
        if data is None:
            entry["raw"] = record.raw.rstrip(b"\r").decode("utf-8", "replace")
            if not _is_utf8(record.raw):
                entry["raw_base64"] = base64.b64encode(record.raw).decode("ascii")
            data = dumps(entry)
        self._check()
        try:
            if self._handle is None:
                self._handle = _open_private(self.path)
            self._handle.write(data + b"\n")
            self._handle.flush()
        except OSError as error:
            self._fail(error)
        self._unsynced = True

    def _now(self) -> str:
        """The time of an entry, to the second (`2024-01-01T00:00:00Z`)."""
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._at = datetime.fromtimestamp(second, UTC).isoformat().replace("+00:00", "Z")
        return self._at

    def sync(self) -> None:
        """Flush to disk: a checkpoint may only pass a dead-lettered record once it is durable."""
        self._check()
        if self._handle is not None and self._unsynced:
            try:
                os.fsync(self._handle.fileno())
            except OSError as error:
                self._fail(error)
            self._unsynced = False

    def close(self) -> None:
        if self._handle is not None:
            handle, self._handle = self._handle, None
            try:
                handle.close()
            except OSError as error:
                self._fail(error)

    def _check(self) -> None:
        """After one failed write, every write and sync fails: entries after a lost one must not
        reach the file as if nothing had happened."""
        if self._failure is not None:
            raise DeadLetterWriteError(self._failure)

    def _fail(self, error: OSError) -> NoReturn:
        self._failure = f"cannot write the dead-letter file {self.path} ({error.strerror or error})"
        handle, self._handle = self._handle, None
        if handle is not None:
            with contextlib.suppress(OSError):  # the unwritten entry stays in the buffer: drop it
                handle.close()
        raise DeadLetterWriteError(self._failure) from None


def _unwrap(entry: dict[str, Any], raw: bytes, origin: Origin, loads: Loads) -> Record | None:
    """A line of segbill's own dead-letter file: read back the original record or text. None
    for a marker that is not segbill's (see `is_entry`)."""
    if not is_entry(entry):
        return None
    first = entry.get("first_source") or entry.get("source")
    first_source = first if isinstance(first, dict) else None
    missing = entry.get(MISSING_MARKER) is True
    shard = _shard(entry.get("shard"))
    record = entry.get("record")
    if isinstance(record, dict):
        return Record(origin, raw, message=record, first_source=first_source, missing_on_platform=missing, shard=shard)
    original: bytes | None = None
    if isinstance(entry.get("raw_base64"), str):
        original = base64.b64decode(entry["raw_base64"])
    elif isinstance(entry.get("raw"), str):
        original = entry["raw"].encode("utf-8", "surrogatepass")
    if original is None:
        invalid = Invalid("not_object", "This dead-letter line holds neither a record nor raw text.")
        return Record(origin, raw, invalid=invalid, first_source=first_source)
    records = read_line(original, origin, loads, ENTRIES)
    if len(records) != 1:
        invalid = Invalid("not_object", "This dead-letter line's raw text holds several messages; replay it as a file.")
        return Record(origin, original, invalid=invalid, first_source=first_source)
    records[0].first_source = first_source
    records[0].missing_on_platform = missing
    records[0].shard = shard
    return records[0]


def _shard(value: Any) -> tuple[int, int] | None:
    """An entry's "K/N" (see `DeadLetterFile.shard`), or None."""
    if isinstance(value, str) and re.fullmatch(r"\d+/\d+", value):
        number, count = (int(part) for part in value.split("/"))
        if number < count:
            return number, count
    return None


ENTRIES = Wrapper(DEAD_LETTER_MARKER, _unwrap)
"""How `read_line` reads segbill's own dead-letter lines back: pass it to read an input."""


def written_by_dry_runs(path: Path) -> bool:
    """Whether an existing dead-letter file holds a dry run's preview (or nothing), which a new
    dry run replaces; a send's dead letters are never overwritten."""
    with open(path, "rb") as handle:
        first = handle.readline()
    if not first.strip():
        return True
    try:
        entry = orjson.loads(first)
    except orjson.JSONDecodeError:
        return False
    return isinstance(entry, dict) and entry.get("dry_run") is True


def holds_other_data(path: Path) -> bool:
    """Whether an existing file is no dead-letter file, so that appending entries would spoil
    it (a config, another shard's state, an export): a regular file, not empty, whose first line
    is no segbill entry (`DEAD_LETTER_MARKER` 1, as `_unwrap` reads it). At most
    `FIRST_LINE_PROBE` bytes are read: a longer first line is an entry if it starts as segbill
    writes one, with the marker. A FIFO or a device is written as it is, never read."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        return False
    with open(path, "rb") as handle:
        first = handle.readline(FIRST_LINE_PROBE)
    if not first:
        return False
    if len(first) == FIRST_LINE_PROBE and not first.endswith(b"\n"):
        return not first.startswith(b'{"' + DEAD_LETTER_MARKER.encode() + b'":1,')
    try:
        entry = orjson.loads(first)
    except orjson.JSONDecodeError:
        return True
    return not is_entry(entry)


def is_entry(line: Any) -> bool:
    """Whether a parsed line is a segbill dead-letter entry: an object whose marker is the
    integer 1 (not True, not 1.0)."""
    marker = line.get(DEAD_LETTER_MARKER) if isinstance(line, dict) else None
    return type(marker) is int and marker == 1


def _open_private(path: Path) -> BinaryIO:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    return os.fdopen(fd, "ab")


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True

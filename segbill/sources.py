"""Inputs: paths and stdin -> lines with their origin. Gzip by magic bytes; never a whole file in memory."""

from __future__ import annotations

import io
import os
import stat
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import BinaryIO

import orjson

from segbill.deadletter import ENTRIES
from segbill.segment import UTF8_BOM, Invalid, Origin, Record, read_line


def _inflater() -> ModuleType:
    """ISA-L inflates ~4x faster than zlib; zlib where python-isal is not installed."""
    try:
        from isal import isal_zlib
    except ImportError:
        return zlib
    return isal_zlib


_INFLATER = _inflater()
decompressobj = _INFLATER.decompressobj
_BROKEN_GZIP: tuple[type[Exception], ...] = (EOFError, OSError, zlib.error, _INFLATER.error)

GZIP_MAGIC = b"\x1f\x8b"
CHUNK = 1 << 20
_GZIP_CHUNK = 1 << 15  # compressed bytes read at a time
_GZIP_OUT = 1 << 17  # inflated bytes handed out at a time, as gzip.GzipFile does: smaller blocks of lines
# Segment caps a message at 32 KB and an HTTP-API batch at 500 KB: a longer line is not an export.
MAX_LINE_BYTES = 1 << 20
STDIN = "-"
_RAW_HEAD = 1024
EMPTY_GZIP = "The gzip file is empty (0 bytes): a broken download, as Segment never writes one. Download it again and replay it."


class UsageError(Exception):
    """A problem with the command line, found before anything is read."""


class SourceUnreadable(Exception):
    """An input that was listed cannot be opened any more (removed, permissions changed, a lost
    volume): the run stops there, and a rerun resumes."""


@dataclass(frozen=True, slots=True)
class Source:
    """One input: `name` is how messages and dead-letter entries refer to it."""

    name: str
    path: Path | None
    size: int | None
    regular: bool = True  # a regular file: not a named pipe, `<(...)` or a device

    @property
    def is_stdin(self) -> bool:
        return self.path is None

    @property
    def is_stream(self) -> bool:
        """Read once, as it comes (stdin, a named pipe, `<(zcat ...)`): it has no size, cannot
        be read twice (check, reconcile), read again from a checkpoint, or opened elsewhere."""
        return self.path is None or not self.regular


# Inside folders, only files that look like exports are read (S3 objects end in .gz); a file
# named on the command line is always read.
EXPORT_SUFFIXES = {".gz", ".json", ".jsonl", ".ndjson", ""}


def expand(
    args: list[str], *, stdin_is_terminal: bool, stdin_closed: bool = False, passed_over: list[Path] | None = None
) -> list[Source]:
    """Paths as given -> files in a stable order. Directories recurse sorted, skipping hidden
    entries and files that do not look like exports (collected in `passed_over`).

    Every problem is found here, before the first line is read. A closed stdin (`<&-`) is not a
    terminal and has nothing to read.
    """
    if not args:
        if stdin_closed:
            raise UsageError("no input: give a file or folder (stdin is closed, so there is nothing to read there).")
        if stdin_is_terminal:
            raise UsageError(
                "no input: give a file or folder, or pipe events to stdin (for example: jq -c . x.json | segbill send ...)."
            )
        args = [STDIN]
    sources: list[Source] = []
    seen: set[Path] = set()
    for arg in args:
        if arg == "":  # "$EXPORTS" with the variable unset: never the current folder
            raise UsageError("an input path is empty (an unset variable?); give a file or folder, or '-' for stdin.")
        if arg == STDIN:
            if stdin_closed:
                raise UsageError("'-' reads stdin, but stdin is closed.")
            if any(source.is_stdin for source in sources):
                raise UsageError("stdin ('-') is given twice.")
            sources.append(Source("<stdin>", None, None))
            continue
        path = Path(arg)
        if not path.exists():
            raise UsageError(f"{arg}: no such file or directory.")
        files = _walk(path, passed_over) if path.is_dir() else [path]
        if not files:  # an empty folder, or a volume that is not mounted: never a quiet success
            raise UsageError(
                f"{arg}: no exports in this folder (no .gz, .json, .jsonl, .ndjson or extensionless files); is it the right folder, and is it mounted?"
            )
        for file in files:
            resolved = file.resolve()
            if resolved in seen:
                continue
            seen.add(resolved)
            if not os.access(file, os.R_OK):
                raise UsageError(f"{file}: permission denied.")
            status = file.stat()
            sources.append(Source(str(file), file, status.st_size, stat.S_ISREG(status.st_mode)))
    return sources


def _unreadable_folder(error: OSError) -> None:
    raise UsageError(f"{error.filename}: cannot read this folder ({error.strerror}).")


def _walk(root: Path, passed_over: list[Path] | None) -> list[Path]:
    """Files below `root`, sorted. Symlinked folders are not followed (no cycles); a folder that
    cannot be read is an error, not a silent gap in a backfill."""
    files: list[Path] = []
    for folder, dirs, names in os.walk(root, onerror=_unreadable_folder):
        dirs[:] = sorted(name for name in dirs if not name.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = Path(folder) / name
            if path.suffix.lower() in EXPORT_SUFFIXES:
                files.append(path)
            elif passed_over is not None:
                passed_over.append(path)
    return files


# A line: (number, byte offset, offset after it, bytes, or None and a reason when it is unreadable)
Line = tuple[int, int, int, bytes, Invalid | None]


def read_lines(
    source: Source, on_progress: Callable[[int], None] | None = None, *, offset: int = 0, line: int = 0
) -> Iterator[Line]:
    """Every non-blank line of a source with its number and offsets, in order, starting after
    `line` lines and `offset` bytes (of decompressed data) when resuming.

    A line over `MAX_LINE_BYTES` is reported (with its head) instead of being held in memory. A
    truncated or corrupt gzip stream ends with one unreadable line naming where it broke.
    `on_progress` receives the bytes of the source consumed so far (compressed bytes for gzip).
    """
    try:
        raw, close = _open_binary(source)
    except OSError as error:
        raise SourceUnreadable(f"cannot read {source.name} ({error.strerror or error})") from None
    try:
        if not offset and _empty_gzip(source, raw):
            yield (1, 0, 0, b"", Invalid("bad_gzip", EMPTY_GZIP))
            return
        # read1: a pipe yields what it has (jq output flows through), and a truncated gzip
        # stream gives back everything it decoded before the break.
        stream = _decompressing(raw)
        if offset:
            _skip(stream, raw, offset)
        progress = on_progress if raw.seekable() else None  # stdin, a named pipe, <(zcat ...): no position to tell
        for block in _split(stream.read1, raw, progress, offset, line):  # type: ignore[attr-defined]
            yield from block
    finally:
        close()


def read_records(
    source: Source, on_progress: Callable[[int], None] | None = None, *, offset: int = 0, line: int = 0
) -> Iterator[Record]:
    """Every record of a source, in order: the messages of each line (segbill's own dead-letter
    lines read back), or why a line is unreadable."""
    name = source.name
    for number, start, end, data, problem in read_lines(source, on_progress, offset=offset, line=line):
        origin = Origin(name, number, start, end)
        if problem is None:
            yield from read_line(data, origin, orjson.loads, ENTRIES)
        else:
            yield Record(origin, data, invalid=problem)


def _skip(stream: BinaryIO, raw: BinaryIO, offset: int) -> None:
    """Resume: seek a plain file; read and drop what a gzip stream or a pipe held before `offset`."""
    if stream is raw and raw.seekable():
        raw.seek(offset)
        return
    left = offset
    while left > 0:
        dropped = len(stream.read(min(left, CHUNK)))
        if not dropped:
            break
        left -= dropped


def _open_binary(source: Source) -> tuple[BinaryIO, Callable[[], None]]:
    if source.path is None:
        stdin = sys.stdin.buffer
        if not hasattr(stdin, "peek"):  # a test harness or an embedding program's stream
            stdin = io.BufferedReader(stdin)
        return stdin, lambda: None
    handle = open(source.path, "rb")  # noqa: SIM115 -- the caller closes it with the function returned
    return handle, handle.close


def _empty_gzip(source: Source, raw: BinaryIO) -> bool:
    """A `.gz` file of 0 bytes is a broken download (Segment never writes one), not an empty hour."""
    return source.path is not None and source.path.suffix.lower() == ".gz" and not raw.peek(1)  # type: ignore[attr-defined]


def _decompressing(raw: BinaryIO) -> BinaryIO:
    head = raw.peek(2)[:2]  # type: ignore[attr-defined]
    stream = raw
    if len(head) == 1:  # what one read of a pipe gave: its writer may have sent the first byte alone
        head = raw.read(2)  # both bytes, or the end
        stream = _ReadAhead(head, raw)  # type: ignore[assignment]
    if head == GZIP_MAGIC:
        return _Inflating(stream)  # type: ignore[return-value]
    return stream


class _ReadAhead:
    """A stream whose first bytes were read to tell gzip from text, handed out again first."""

    def __init__(self, head: bytes, raw: BinaryIO) -> None:
        self._head = head
        self._raw = raw

    def read1(self, size: int) -> bytes:
        if not self._head:
            return self._raw.read1(size)  # type: ignore[attr-defined, no-any-return]
        data: bytes = self._head + self._raw.read1(max(size - len(self._head), 1))  # type: ignore[attr-defined]
        self._head = b""
        return data

    read = read1


class _Inflating:
    """A gzip stream's data, member after member (zero padding between them allowed), inflated as
    it is read. What was inflated before a break in the stream is handed out before the error
    that says where it broke (python-isal's own GzipFile drops it)."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._inflate = decompressobj(zlib.MAX_WBITS | 16)  # gzip header and trailer checked
        self._input = b""
        self._between = False  # after the end of a member

    def read1(self, size: int) -> bytes:
        while True:
            if not self._input:
                self._input = self._raw.read1(_GZIP_CHUNK)  # type: ignore[attr-defined]
                if not self._input:
                    if self._between:
                        return b""
                    raise EOFError("Compressed file ended before the end-of-stream marker was reached")
            if self._between:
                self._input = self._input.lstrip(b"\0")
                if not self._input:
                    continue
                self._inflate = decompressobj(zlib.MAX_WBITS | 16)
                self._between = False
            data: bytes = self._inflate.decompress(self._input, min(size, _GZIP_OUT))
            if self._inflate.eof:
                self._input, self._between = self._inflate.unused_data, True
            else:
                self._input = self._inflate.unconsumed_tail
            if data:
                return data

    read = read1


def _split(
    read: Callable[[int], bytes], raw: BinaryIO, on_progress: Callable[[int], None] | None, offset: int, number: int
) -> Iterator[list[Line]]:
    """The lines of each read, as one list. `offset` is where the current (pending) line starts;
    `number` counts the lines before it."""
    pending = b""
    long_head: bytes | None = None  # the start of a line too long to keep, while skipping it
    long_size = 0
    first = offset == 0
    while True:
        try:
            chunk = read(CHUNK)
        except _BROKEN_GZIP as error:
            broken = "ends early: the file is truncated" if isinstance(error, EOFError) else f"is corrupt ({error})"
            reason = f"The gzip data {broken} after line {number}; the rest of the file is lost. Download it again and replay it."
            if long_head is not None:
                yield [(number + 1, offset, offset + long_size, long_head, Invalid("bad_gzip", reason))]
            else:
                yield [(number + 1, offset, offset + len(pending), pending, Invalid("bad_gzip", reason))]
            return
        if on_progress is not None:
            on_progress(raw.tell())
        if not chunk:
            break
        if first:
            first = False
            if chunk.startswith(UTF8_BOM):
                chunk = chunk[len(UTF8_BOM) :]
                offset = len(UTF8_BOM)
        block: list[Line] = []
        if long_head is not None:
            cut = chunk.find(b"\n")
            if cut < 0:
                long_size += len(chunk)
                continue
            long_size += cut
            number += 1
            end = offset + long_size + 1
            block.append((number, offset, end, long_head, _too_long(long_size)))
            long_head = None
            offset = end
            chunk = chunk[cut + 1 :]
        lines = chunk.split(b"\n")
        lines[0] = pending + lines[0]  # not `pending + chunk`: a copy of the whole chunk
        pending = lines.pop()
        append = block.append
        for line in lines:
            number += 1
            end = offset + len(line) + 1
            if len(line) > MAX_LINE_BYTES:
                append((number, offset, end, line[:_RAW_HEAD], _too_long(len(line))))
            elif line and not line.isspace():
                append((number, offset, end, line, None))
            offset = end
        if len(pending) > MAX_LINE_BYTES:
            long_head, long_size, pending = pending[:_RAW_HEAD], len(pending), b""
        if block:
            yield block
    if long_head is not None:
        yield [(number + 1, offset, offset + long_size, long_head, _too_long(long_size))]
    elif pending.strip():
        yield [(number + 1, offset, offset + len(pending), pending, None)]


def _too_long(size: int) -> Invalid:
    return Invalid(
        "too_long",
        f"The line is {size:,} bytes long, over the {MAX_LINE_BYTES:,}-byte limit for one line (only its start is kept here).",
    )

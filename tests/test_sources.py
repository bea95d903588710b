"""Reading inputs: gzip by content, line endings, BOM, long lines, truncation, folder order."""

from __future__ import annotations

import fcntl
import gzip
import os
import subprocess
import sys
import termios
import threading
from pathlib import Path

import orjson
import pytest

from segbill.segment import UTF8_BOM
from segbill.sources import MAX_LINE_BYTES, UsageError, expand, read_lines

from .conftest import jsonl, track, write


def lines_of(path: Path) -> list[tuple[int, int, int, bytes, str | None]]:
    [source] = expand([str(path)], stdin_is_terminal=False)
    return [(n, start, end, data, bad.kind if bad else None) for n, start, end, data, bad in read_lines(source)]


def test_offsets_numbers_blank_lines_crlf_and_no_final_newline(tmp_path: Path) -> None:
    path = write(tmp_path / "a.jsonl", b'{"a":1}\r\n\n   \n{"b":2}\n{"c":3}')
    assert lines_of(path) == [
        (1, 0, 9, b'{"a":1}\r', None),
        (4, 14, 22, b'{"b":2}', None),
        (5, 22, 29, b'{"c":3}', None),
    ]


def test_a_utf8_bom_is_dropped_and_offsets_still_count_it(tmp_path: Path) -> None:
    path = write(tmp_path / "bom.jsonl", b'\xef\xbb\xbf{"a":1}\n{"b":2}\n')
    assert lines_of(path) == [(1, 3, 11, b'{"a":1}', None), (2, 11, 19, b'{"b":2}', None)]


@pytest.mark.parametrize("name", ["export.gz", "export.jsonl", "no-extension"])
def test_gzip_is_detected_by_content_not_by_name(tmp_path: Path, name: str, inflate: str) -> None:
    data = b"".join(b'{"n":%d}\n' % i for i in range(1000))
    compressed = write(tmp_path / "z" / name, data, compress=True)
    plain = write(tmp_path / "p" / name, data)
    assert [line[3] for line in lines_of(compressed)] == [line[3] for line in lines_of(plain)]
    assert len(lines_of(compressed)) == 1000


def test_concatenated_gzip_members_are_all_read(tmp_path: Path, inflate: str) -> None:
    path = tmp_path / "multi.gz"
    path.write_bytes(gzip.compress(b'{"a":1}\n') + gzip.compress(b'{"b":2}\n'))
    assert [line[3] for line in lines_of(path)] == [b'{"a":1}', b'{"b":2}']


def test_a_truncated_gzip_file_yields_everything_before_the_break_then_says_where(tmp_path: Path, inflate: str) -> None:
    data = b"".join(b'{"n":%d,"pad":"%s"}\n' % (i, b"x" * (i % 50)) for i in range(20000))
    whole = gzip.compress(data)
    path = write(tmp_path / "cut.gz", whole[: len(whole) // 2])
    lines = lines_of(path)
    good, last = lines[:-1], lines[-1]
    assert all(kind is None for *_, kind in good)
    assert [data for _, _, _, data, _ in good] == data.split(b"\n")[: len(good)]
    assert last[4] == "bad_gzip" and last[0] == len(good) + 1
    assert data[last[1] :].startswith(last[3])  # the partial line is kept, at its offset


def test_a_corrupt_gzip_member_ends_the_file_after_everything_before_it(tmp_path: Path, inflate: str) -> None:
    data = b"".join(b'{"n":%d}\n' % i for i in range(200000))
    corrupt = gzip.compress(b'{"next":"member"}\n')[:10] + b"\xff" * 64  # an invalid deflate block type
    lines = lines_of(write(tmp_path / "bad.gz", gzip.compress(data) + corrupt))
    good, last = lines[:-1], lines[-1]
    assert [data for _, _, _, data, _ in good] == data.split(b"\n")[:-1]
    assert last[4] == "bad_gzip" and last[0] == 200001


def test_an_overlong_line_is_reported_without_being_held_and_the_next_line_survives(tmp_path: Path) -> None:
    huge = b'{"a":"' + b"x" * (3 * MAX_LINE_BYTES) + b'"}'
    path = write(tmp_path / "long.jsonl", b'{"first":1}\n' + huge + b'\n{"after":1}\n' + huge)
    lines = lines_of(path)
    assert [(n, kind) for n, _, _, _, kind in lines] == [(1, None), (2, "too_long"), (3, None), (4, "too_long")]
    assert lines[1][1:3] == (12, 12 + len(huge) + 1)
    assert len(lines[1][3]) <= 1024 and lines[1][3].startswith(b'{"a":"xxx')
    assert lines[2][3] == b'{"after":1}'


def test_folders_recurse_in_sorted_order_skipping_hidden_entries(tmp_path: Path) -> None:
    root = tmp_path / "segment-logs" / "src"
    for relative in ["1704153600000/b.gz", "1704067200000/z.gz", "1704067200000/a.gz", ".hidden/x.gz", "1704067200000/.tmp"]:
        write(root / relative, b"{}\n", compress=True)
    names = [s.name for s in expand([str(tmp_path)], stdin_is_terminal=False)]
    assert names == [
        str(root / "1704067200000/a.gz"),
        str(root / "1704067200000/z.gz"),
        str(root / "1704153600000/b.gz"),
    ]


def test_folders_pass_over_files_that_are_not_exports_but_named_files_are_read(tmp_path: Path) -> None:
    for name in ["a.jsonl", "b.json", "c.ndjson", "d.gz", "e", "README.md", "make.py", "f.JSONL"]:
        write(tmp_path / "x" / name, b"{}\n")
    passed_over: list[Path] = []
    names = [Path(s.name).name for s in expand([str(tmp_path / "x")], stdin_is_terminal=False, passed_over=passed_over)]
    assert names == ["a.jsonl", "b.json", "c.ndjson", "d.gz", "e", "f.JSONL"]
    assert [p.name for p in passed_over] == ["README.md", "make.py"]
    assert len(expand([str(tmp_path / "x" / "README.md")], stdin_is_terminal=False)) == 1


def test_the_same_file_given_twice_is_read_once(tmp_path: Path) -> None:
    path = write(tmp_path / "a.jsonl", b"{}\n")
    assert len(expand([str(path), str(tmp_path)], stdin_is_terminal=False)) == 1


@pytest.mark.parametrize(
    ("args", "terminal", "message"),
    [
        (["missing.jsonl"], False, "missing.jsonl: no such file or directory."),
        (["-", "-"], False, "stdin ('-') is given twice."),
        ([], True, "no input"),
    ],
)
def test_usage_errors_come_before_anything_is_read(
    args: list[str], terminal: bool, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        expand(args, stdin_is_terminal=terminal)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any folder")
def test_an_unreadable_subfolder_is_a_usage_error_not_a_silent_gap(tmp_path: Path) -> None:
    write(tmp_path / "x" / "ok" / "a.jsonl", b"{}\n")
    locked = tmp_path / "x" / "locked"
    locked.mkdir()
    write(locked / "b.jsonl", b"{}\n")
    locked.chmod(0)
    try:
        with pytest.raises(UsageError, match="cannot read this folder"):
            expand([str(tmp_path / "x")], stdin_is_terminal=False)
    finally:
        locked.chmod(0o700)


def test_a_folder_walk_error_stops_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same as above, for root (CI): os.walk reports what it could not read through onerror."""
    write(tmp_path / "x" / "a.jsonl", b"{}\n")

    def walk(top, onerror=None, **kwargs):
        onerror(PermissionError(13, "Permission denied", str(tmp_path / "x" / "locked")))
        yield str(top), [], ["a.jsonl"]

    monkeypatch.setattr("segbill.sources.os.walk", walk)
    with pytest.raises(UsageError, match=r"x/locked: cannot read this folder \(Permission denied\)\."):
        expand([str(tmp_path / "x")], stdin_is_terminal=False)


def test_without_python_isal_gzip_is_inflated_by_zlib() -> None:
    code = "import sys; sys.modules['isal'] = None; from segbill import sources; print(sources.decompressobj.__module__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "zlib"


def unread(fd: int) -> int:
    """How many bytes a pipe holds that its reader has not read yet."""
    held = bytearray(4)
    fcntl.ioctl(fd, termios.FIONREAD, held)
    return int.from_bytes(held, sys.byteorder)


@pytest.mark.parametrize("form", ["gzip", "text with a BOM"])
def test_a_pipe_whose_writer_sends_the_first_byte_alone_is_read_whole(tmp_path: Path, form: str) -> None:
    """A read of a pipe gives what its writer has sent: one byte could not tell gzip from text,
    and every line of a gzip export was a not_utf8 dead letter. The bytes read ahead are read again."""
    lines = jsonl(*(track(messageId=f"m{i}") for i in range(3)))
    data = gzip.compress(lines) if form == "gzip" else UTF8_BOM + lines
    reader, writer = os.pipe()
    process = subprocess.Popen(
        [sys.executable, "-m", "segbill", "send", "-", "--to", "lago", "--dry-run", "--json"],
        cwd=tmp_path,
        stdin=reader,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    os.write(writer, data[:1])
    while unread(reader):  # until segbill has read the first byte, alone
        assert process.poll() is None, process.communicate()
        threading.Event().wait(0.01)
    os.write(writer, data[1:])
    os.close(writer)
    os.close(reader)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert [orjson.loads(line)["transaction_id"] for line in stdout.splitlines()] == ["m0", "m1", "m2"]
    summary = orjson.loads(stderr.strip().splitlines()[-1])
    assert summary["read"] == summary["converted"] == 3


def test_a_pipe_with_state_is_read_whole_and_never_read_twice(segbill, tmp_path: Path) -> None:
    """A named pipe or `<(zcat ...)` with --state: the state read the first 64 KiB of it to
    fingerprint a file, and the run lost them (1,000 records read as 933, one cut in two).
    A pipe is a stream, as stdin is: no checkpoint, and check/reconcile refuse it."""
    lines = jsonl(*(track(messageId=f"m{i}", properties={"pad": "x" * 200}) for i in range(1000)))
    assert len(lines) > 4 * 65536
    script = f"{sys.executable} -m segbill send <(cat {tmp_path / 'a.jsonl'}) --to lago --dry-run --json --state s.db --jobs 2"
    write(tmp_path / "a.jsonl", lines)
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, check=False)
    assert done.returncode == 0, done.stderr
    summary = orjson.loads(done.stderr.strip().splitlines()[-1])
    assert summary["read"] == summary["converted"] == 1000
    assert done.stdout.count(b"\n") == 1000
    refused = subprocess.run(
        ["bash", "-c", f"{sys.executable} -m segbill reconcile <(cat {tmp_path / 'a.jsonl'}) --to lago"],
        cwd=tmp_path,
        capture_output=True,
        check=False,
        env={**os.environ, "LAGO_API_KEY": "k"},
    )
    assert (
        refused.returncode == 2
        and b"reconcile reads its input twice" in refused.stderr
        and b"not a pipe (/dev/fd/" in refused.stderr
    )
    checked = subprocess.run(
        ["bash", "-c", f"{sys.executable} -m segbill send --check <(cat {tmp_path / 'a.jsonl'}) --to lago"],
        cwd=tmp_path,
        capture_output=True,
        check=False,
        env={**os.environ, "LAGO_API_KEY": "k", "LAGO_API_URL": "http://127.0.0.1:9"},
    )
    assert checked.returncode == 2 and b"--check reads the input twice" in checked.stderr

"""A dead letter holds its message as the standard library reads the line, every integer exact.
segbill reads it faster with msgspec, in two places: the general path reads a line the decoder
left to it with msgspec where msgspec gives orjson's values (no integer beyond 64 bits), and then
that message is exact as read; otherwise the dead letter reads the line again, with msgspec where
it gives the standard library's values (`segment._loads_exact`). These runs compare each way with
the standard library alone, through the CLI, byte for byte."""

from __future__ import annotations

import random
import re
import struct
from pathlib import Path
from typing import Any

import pytest

from segbill import decode, segment

from .conftest import track, write


def _float_text(rng: random.Random) -> bytes:
    """A float as an export may write it: any finite double, in the forms JSON writers use."""
    while True:
        value = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
        if value == value and abs(value) != float("inf"):
            break
    return rng.choice([repr(value), f"{value:.17g}", f"{value:.20e}", f"{value:.3E}"]).encode()


def _anonymous(properties: bytes, **fields: Any) -> bytes:
    """An anonymous-only track (dead-lettered: missing_customer) with `properties` as written."""
    head = segment.dumps(track(userId=None, anonymousId="anon", properties=None, **fields))
    return head[:-1] + b',"properties":' + properties + b"}"


def _odd_lines() -> list[bytes]:
    rng = random.Random(7)
    lines = [
        _anonymous(b"{" + b",".join(b'"f%d":%s' % (j, _float_text(rng)) for j in range(20)) + b"}", messageId=f"f-{i}")
        for i in range(200)
    ]
    lines += [
        _anonymous(b'{"big":18446744073709551616,"neg":-9223372036854775809,"xs":[123456789012345678901234567890,-0,-0.0]}'),
        _anonymous(b'{"digits":' + b"7" * 300 + b"}"),  # orjson reads it as a float
        _anonymous(b'{"a":1,"a":2,"b":{"c":3,"c":[4]}}'),  # the last value of a key given twice
        _anonymous(b'{"s":"\\u00e9\\ud83d\\ude00\\u0000\\/\\"\\\\","t":"caf\xc3\xa9 \xe6\x9d\xb1"}'),
        _anonymous(b'{"tiny":5e-324,"under":1.5e-400,"max":1.7976931348623157e308,"e":1E2}'),
        _anonymous(b"[" * 400 + b"1" + b"]" * 400),  # nested, short of any recursion limit
        _anonymous(b'{"pad":"' + b"x" * 2000 + b'","deep":' + b"[" * 600 + b"]" * 600 + b"}"),  # left to the standard library
        _anonymous(b"{}", context={"n": 2**70, "f": 1e300}),
    ]
    return lines


def _refused(raw: bytes) -> Any:
    raise segment.msgspec.DecodeError("refused: the slower way reads every line")


def _untimed(dead_letters: bytes) -> bytes:
    return re.sub(rb'"at":"[^"]*",', b"", dead_letters)


def _counted(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[bytes]:
    """Patch `module.name` to count the lines it read."""
    read: list[bytes] = []
    original = getattr(module, name)

    def counted(raw: bytes) -> Any:
        value = original(raw)
        read.append(raw)
        return value

    monkeypatch.setattr(module, name, counted)
    return read


@pytest.mark.parametrize("way", ["read exactly by the general path", "read again by msgspec"])
def test_dead_letters_hold_what_the_standard_library_reads(
    segbill, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, way: str
) -> None:
    lines = _odd_lines()
    write(tmp_path / "in.jsonl", b"\n".join(lines) + b"\n")
    with monkeypatch.context() as patch:
        if way == "read again by msgspec":
            patch.setattr(decode, "_read_whole", _refused)
            read = _counted(patch, segment, "_decode_any")
        else:
            read = _counted(patch, decode, "_read_whole")
        fast = segbill("send", "in.jsonl", "--to", "lago", "--dry-run", "--json")
    with monkeypatch.context() as patch:
        patch.setattr(decode, "_read_whole", _refused)
        patch.setattr(segment, "_decode_any", _refused)
        slow = segbill("send", "in.jsonl", "--to", "lago", "--dry-run", "--json", dead_letter="dead-stdlib.jsonl")
    assert fast.exit_code == slow.exit_code == 1
    assert _untimed(fast.dead_letter.read_bytes()) == _untimed(slow.dead_letter.read_bytes())
    assert [letter["reason"][:31] for letter in fast.dead_letters] == ["The track message has no custom"] * len(lines)
    assert len(read) >= len(lines) - 5  # all but the deep and the large-integer lines: not two standard-library reads

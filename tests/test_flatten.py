"""Flattened properties, as a dry run prints them, against a plainly written reference: nested
objects anywhere in the properties (first, last, several, deep, empty), nulls, booleans, lists,
integers past 2**53, and keys that collide once joined. `targets.flatten` copies the usual flat
properties and changes only the values that need it, and takes another way from the first
nested object on: both must give the reference's keys, in its order."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from .conftest import jsonl, track, write


class Collision(Exception):
    pass


def reference(properties: dict[str, Any], *, lago: bool, prefix: str = "", out: dict[str, Any] | None = None) -> dict[str, Any]:
    """What each platform takes (README, "Properties"), written without a shortcut."""
    out = {} if out is None else out
    for name, value in properties.items():
        key = prefix + name
        if isinstance(value, dict):
            reference(value, lago=lago, prefix=key + ".", out=out)
            continue
        if value is None:
            continue
        if isinstance(value, bool):
            value = ("true" if value else "false") if lago else value
        elif isinstance(value, int) and abs(value) > 2**53:
            value = str(value)
        elif isinstance(value, list):
            scalars = all(isinstance(item, str | int | float) for item in value)
            value = value if scalars and not lago else orjson.dumps(value).decode()
        if key in out:
            raise Collision(key)
        out[key] = value
    return out


def _value(rng: random.Random, depth: int) -> Any:
    kind = rng.choice(["str", "int", "big", "float", "bool", "null", "list", "scalars", "dict", "dict", "empty"])
    if kind == "dict" and depth < 3:
        return _properties(rng, depth + 1)
    return {
        "str": rng.choice(["x", "", "é 東"]),
        "int": rng.randint(-(2**53), 2**53),
        "big": rng.choice([2**53 + 1, -(2**60), 2**63 - 1]),
        "float": rng.choice([0.5, -1e300, 1e-7, 2.0**70]),
        "bool": rng.random() < 0.5,
        "null": None,
        "list": [1, {"a": None}, "s"],
        "scalars": ["a", 2, True, 1.5],
        "dict": {},
        "empty": {},
    }[kind]


def _properties(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    # "a.b" at the top collides with {"a": {"b": ...}}, wherever each stands.
    names = ["b", "c", "n"] if depth else ["a", "a", "b", "c", "a.b", "a.c", "n"]
    return {rng.choice(names): _value(rng, depth) for _ in range(rng.randint(0, 7))}


@pytest.mark.parametrize("target", ["lago", "hyperline"])
def test_flattened_properties_match_the_reference(segbill, tmp_path: Path, target: str) -> None:
    rng = random.Random(5)
    generated = [_properties(rng) for _ in range(1000)]
    write(tmp_path / "in.jsonl", jsonl(*(track(messageId=f"m-{i}", properties=p) for i, p in enumerate(generated))))
    result = segbill("send", "in.jsonl", "--to", target, "--dry-run")
    printed = {event.get("transaction_id") or event["record"]["id"]: event for event in result.events}
    conflicts = {letter["record"]["messageId"] for letter in result.dead_letters}
    lago = target == "lago"
    kinds = {"flat": 0, "nested": 0, "collision": 0}
    for i, properties in enumerate(generated):
        try:
            expected = reference(properties, lago=lago)
        except Collision:
            assert f"m-{i}" in conflicts
            kinds["collision"] += 1
            continue
        event = printed[f"m-{i}"]
        got = event["properties"] if lago else {k: v for k, v in event["record"].items() if k != "id"}
        assert list(got.items()) == list(expected.items())
        kinds["nested" if any(isinstance(value, dict) for value in properties.values()) else "flat"] += 1
    assert min(kinds.values()) >= 20  # every way through flatten is taken
    assert all(letter["reason"].startswith("Two properties become") for letter in result.dead_letters)

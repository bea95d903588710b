"""The mapping file (--config) and the flags that override it, through `segbill send --dry-run`."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from segbill.mapping import snake_case

from .conftest import jsonl, track, write

API_CALL = track(
    messageId="m1",
    event="API Call",
    userId="user-1",
    context={"groupId": "acct-9"},
    properties={
        "tokens": 1200,
        "model": {"name": "gpt", "tier": "pro"},
        "debug": {"trace": "x"},
        "amount": 12.5,
        "subscription_id": "sub_7",
    },
)


def dry(segbill, tmp_path: Path, config: str | None, messages: list[dict], target: str = "lago", *flags: str):
    write(tmp_path / "in.jsonl", jsonl(*messages))
    args = ["send", "in.jsonl", "--to", target, "--dry-run", "--json", *flags]
    if config is not None:
        write(tmp_path / "segbill.toml", config.encode())
        args += ["--config", "segbill.toml"]
    return segbill(*args)


def test_fields_from_paths_fallbacks_and_constants(segbill, tmp_path: Path) -> None:
    config = """
[lago]
transaction_id = ["properties.request_id", "messageId"]
external_subscription_id = ["properties.missing", "properties.subscription_id", "userId"]
timestamp = ["properties.occurred_at", "timestamp"]
precise_total_amount_cents = "properties.amount"

[hyperline]
customer_id = { value = "cus_constant" }
record_id = "messageId"
"""
    message = API_CALL | {"properties": API_CALL["properties"] | {"occurred_at": "2024-03-01T00:00:00Z"}}
    [event] = dry(segbill, tmp_path, config, [message]).events
    assert event["transaction_id"] == "m1"
    assert event["external_subscription_id"] == "sub_7"
    assert event["timestamp"] == "1709251200.000"
    assert event["precise_total_amount_cents"] == "12.5"
    [hyper] = dry(segbill, tmp_path, config, [message], "hyperline").events
    assert hyper["customer_id"] == "cus_constant" and hyper["record"]["id"] == "m1"


def test_event_selection_renames_and_snake_case(segbill, tmp_path: Path) -> None:
    config = """
[lago.events]
billable_types = { page = "Page Viewed" }
include = ["API *", "Page *", "Order *"]
exclude = ["* (test)"]
rename = { "API Call" = "api_calls" }
other = "snake_case"
"""
    messages = [
        API_CALL,
        track(messageId="m2", event="Order Completed"),
        track(messageId="m3", event="Order Completed (test)"),
        track(messageId="m4", event="Signed Up"),
        {"type": "page", "name": "Home", "userId": "user-1", "messageId": "m5", "timestamp": "2024-01-01T00:00:00Z"},
        {"type": "identify", "userId": "user-1"},
    ]
    run = dry(segbill, tmp_path, config, messages)
    assert [(e["transaction_id"], e["code"]) for e in run.events] == [
        ("m1", "api_calls"),
        ("m2", "order_completed"),
        ("m5", "page_viewed"),
    ]
    summary = orjson.loads(run.stderr.strip().splitlines()[-1])
    assert summary["skipped_by_reason"] == {"excluded": 1, "identify": 1, "not_included": 1}


def test_snake_case_keeps_the_letters_and_digits_of_every_script(segbill, tmp_path: Path) -> None:
    """Dropping non-ASCII letters merged codes ("Über Ride" and "ber ride" both ber_ride) and kept
    a space in a name without ASCII letters."""
    names = ["Über Ride", "ber ride", "Café Visited", "注文 完了", "LINE連携", "Cafe\u0301 Opened", "ऑर्डर पूरा", "API Call"]
    messages = [track(messageId=f"m{n}", event=name) for n, name in enumerate(names)]
    run = dry(segbill, tmp_path, '[lago.events]\nother = "snake_case"\n', messages)
    assert run.exit_code == 0
    assert [e["code"] for e in run.events] == [
        "über_ride",
        "ber_ride",
        "café_visited",
        "注文_完了",
        "line_連携",
        "cafe\u0301_opened",
        "ऑर्डर_पूरा",
        "api_call",
    ]


def test_property_include_exclude_rename_and_constants(segbill, tmp_path: Path) -> None:
    config = """
[lago.properties]
include = ["tokens", "model.*", "debug.*"]
exclude = ["debug.*"]
rename = { tokens = "total_tokens" }
constants = { source = "segment", version = 2 }

[hyperline.properties]
include = ["id", "tokens"]
"""
    [event] = dry(segbill, tmp_path, config, [API_CALL]).events
    assert event["properties"] == {
        "total_tokens": 1200,
        "model.name": "gpt",
        "model.tier": "pro",
        "source": "segment",
        "version": 2,
    }
    [hyper] = dry(segbill, tmp_path, config, [API_CALL], "hyperline").events
    assert hyper["record"] == {"id": "m1", "tokens": 1200}  # the record id always stays


def test_a_separator_flattens_to_keys_a_lago_expression_can_name(segbill, tmp_path: Path) -> None:
    config = """
[lago.properties]
separator = "_"
include = ["tokens", "model_*"]
constants = { big = 9007199254740993 }

[hyperline.properties]
separator = "__"
"""
    [event] = dry(segbill, tmp_path, config, [API_CALL]).events
    assert event["properties"] == {"tokens": 1200, "model_name": "gpt", "model_tier": "pro", "big": "9007199254740993"}
    [hyper] = dry(segbill, tmp_path, config, [API_CALL], "hyperline").events
    assert hyper["record"]["model__name"] == "gpt" and hyper["record"]["debug__trace"] == "x"
    conflict = dry(segbill, tmp_path, config, [track(properties={"model_name": 1, "model": {"name": 2}})])
    assert conflict.exit_code == 1 and conflict.dead_letters[0]["reason"].startswith('Two properties become "model_name"')


def test_flags_override_the_file(segbill, tmp_path: Path) -> None:
    config = """
[lago]
external_subscription_id = "userId"
[lago.events]
include = ["Nothing *"]
"""
    messages = [API_CALL, track(messageId="m2", event="Seat Added", context={"groupId": "acct-2"})]
    run = dry(
        segbill,
        tmp_path,
        config,
        messages,
        "lago",
        "--customer-from",
        "context.groupId",
        "--event",
        "API *",
        "--event",
        "Seat *",
        "--exclude-event",
        "Seat *",
    )
    assert [(e["transaction_id"], e["external_subscription_id"]) for e in run.events] == [("m1", "acct-9")]


def test_an_amount_is_sent_as_plain_decimal_digits(segbill, tmp_path: Path) -> None:
    """Lago's precise_total_amount_cents is a decimal string: an amount written in exponent form
    (1e3, 1E-7) or read as a float goes as plain digits, exact."""
    config = '[lago]\nprecise_total_amount_cents = "properties.amount"\n'
    amounts = [1e-7, "1e3", "12.50", 1200, "-0.5", 2.5e15]
    messages = [API_CALL | {"messageId": f"m{i}", "properties": {"amount": amount}} for i, amount in enumerate(amounts)]
    run = dry(segbill, tmp_path, config, messages)
    assert run.exit_code == 0
    assert [event["precise_total_amount_cents"] for event in run.events] == [
        "0.0000001",
        "1000",
        "12.50",
        "1200",
        "-0.5",
        "2500000000000000.0",
    ]
    huge = dry(segbill, tmp_path, config, [API_CALL | {"properties": {"amount": "1e100000"}}])
    assert huge.exit_code == 1
    assert huge.dead_letters[0]["reason"] == "The amount at \"properties.amount\" ('1e100000') has more than 64 digits."


def test_a_config_file_saved_with_a_byte_order_mark_is_read(segbill, tmp_path: Path) -> None:
    """Windows editors start UTF-8 files with a BOM: it failed as "Invalid statement (line 1,
    column 1)", with no hint of what was wrong."""
    run = dry(segbill, tmp_path, '\ufeff[lago.events]\nrename = { "API Call" = "api_calls" }\n', [API_CALL])
    assert run.exit_code == 0 and [event["code"] for event in run.events] == ["api_calls"]


def test_an_amount_that_is_not_a_number_is_dead_lettered(segbill, tmp_path: Path) -> None:
    config = '[lago]\nprecise_total_amount_cents = "properties.amount"\n'
    run = dry(segbill, tmp_path, config, [API_CALL | {"properties": {"amount": "twelve"}}])
    assert run.exit_code == 1
    assert run.dead_letters[0]["reason"] == "The amount at \"properties.amount\" ('twelve') is not a number."


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            "[lago]\ncustomer = 'userId'\n",
            "segbill.toml: lago: unknown key 'customer'; known keys: code, events, external_subscription_id, precise_total_amount_cents, properties, timestamp, transaction_id.",
        ),
        ("[stripe]\n", "segbill.toml: unknown table 'stripe'; the tables are [lago] and [hyperline]."),
        (
            "[lago]\ncode = 3\n",
            'segbill.toml: lago.code: must be a dotted path, a list of paths to try in order, or { value = "..." }.',
        ),
        (
            "[lago]\nexternal_subscription_id = ['userId', 'a..b']\n",
            "segbill.toml: lago.external_subscription_id[1]: 'a..b' is not a dotted path",
        ),
        ("[lago.events]\ninclude = 'API *'\n", "segbill.toml: lago.events.include: must be a list of globs, not str."),
        (
            "[lago.events]\nexclude = ['[abc']\n",
            "segbill.toml: lago.events.exclude[0]: '[abc' is not a valid glob (an unclosed [ ]).",
        ),
        ("[lago.events]\nother = 'camel'\n", 'segbill.toml: lago.events.other: must be "keep" or "snake_case", not \'camel\'.'),
        ("[lago.events]\nbillable_types = { track = 'x' }\n", "track is always billable"),
        (
            "[lago.properties]\nconstants = { a = true }\n",
            "segbill.toml: lago.properties.constants.a: must be a string or a number.",
        ),
        (
            "[lago.properties]\nconstants = { unit_price = nan }\n",
            "lago.properties.constants.unit_price: must be a finite number, not nan.",
        ),
        (
            "[hyperline.properties]\nconstants = { cap = -inf }\n",
            "hyperline.properties.constants.cap: must be a finite number, not -inf.",
        ),
        (
            "[lago.properties]\nseparator = ''\n",
            "segbill.toml: lago.properties.separator: must be a non-empty string such as \"_\", not ''.",
        ),
        ("[hyperline.properties]\nseparator = 1\n", "segbill.toml: hyperline.properties.separator: must be a non-empty string"),
        ("[hyperline]\nprecise_total_amount_cents = 'x'\n", "segbill.toml: hyperline: unknown key 'precise_total_amount_cents'"),
        ("[lago]\ntimestamp = { value = 'soon' }\n", "segbill.toml: lago.timestamp.value: 'soon' is not an ISO 8601 time."),
        ("[lago\n", "segbill.toml: not valid TOML"),
        (
            "[lago]\ntransaction_id = { value = 'x' }\n",
            "segbill.toml: lago.transaction_id: the idempotency key cannot be a constant",
        ),
        (
            "[hyperline.properties]\nconstants = { id = 'const' }\n",
            'segbill.toml: hyperline.properties.constants.id: "id" would overwrite record.id, Hyperline\'s idempotency key',
        ),
        (
            "[hyperline.properties]\nrename = { plan = 'id' }\n",
            'segbill.toml: hyperline.properties.rename.plan: "id" would overwrite record.id, Hyperline\'s idempotency key',
        ),
    ],
)
def test_a_mistake_in_the_file_exits_2_naming_the_key(segbill, tmp_path: Path, config: str, message: str) -> None:
    run = dry(segbill, tmp_path, config, [API_CALL])
    assert run.exit_code == 2
    assert message in run.stderr
    assert run.stdout == ""


def test_a_property_rule_never_writes_hyperlines_record_id(segbill, tmp_path: Path) -> None:
    """Refused at load for Hyperline (same id on every event: all but one skipped as duplicates);
    Lago keeps its events' properties apart from transaction_id, so "id" is a property like any."""
    messages = [track(messageId=f"m{n}", properties={"plan": n}) for n in range(3)]
    for rule in ("constants = { id = 'const' }", "rename = { plan = 'id' }"):
        refused = dry(segbill, tmp_path, f"[hyperline.properties]\n{rule}\n", messages, "hyperline")
        assert refused.exit_code == 2 and refused.stdout == "" and "would overwrite record.id" in refused.stderr
        lago = dry(segbill, tmp_path, f"[lago.properties]\n{rule}\n", messages)
        assert lago.exit_code == 0
        assert [e["transaction_id"] for e in lago.events] == ["m0", "m1", "m2"]
        assert all("id" in e["properties"] for e in lago.events)


@pytest.mark.parametrize("target", ["lago", "hyperline"])
def test_a_rename_onto_a_key_the_event_has_is_a_property_conflict(segbill, tmp_path: Path, target: str) -> None:
    config = f"""
[{target}.properties]
rename = {{ tokens = "total_tokens", input = "in", prompt = "in", a = "b", b = "a" }}
"""
    messages = [
        track(messageId="m-first", properties={"total_tokens": 1000, "tokens": 2}),
        track(messageId="m-second", properties={"tokens": 2, "total_tokens": 1000}),  # either order
        track(messageId="m-two-renames", properties={"input": 5, "prompt": 6}),
        track(messageId="m-swap", properties={"a": 1, "b": 2, "tokens": 3}),
    ]
    run = dry(segbill, tmp_path, config, messages, target)
    assert run.exit_code == 1
    assert [letter["reason"] for letter in run.dead_letters] == [
        'Properties "total_tokens" and "tokens" would both be "total_tokens" once renamed; exclude or rename one.',
        'Properties "tokens" and "total_tokens" would both be "total_tokens" once renamed; exclude or rename one.',
        'Properties "input" and "prompt" would both be "in" once renamed; exclude or rename one.',
    ]
    summary = orjson.loads(run.stderr.strip().splitlines()[-1])
    assert summary["dead_lettered_by_reason"] == {"property_conflict": 3}
    [swapped] = run.events
    shaped = swapped["properties" if target == "lago" else "record"]
    assert (shaped["a"], shaped["b"], shaped["total_tokens"]) == (2, 1, 3)


def test_a_rename_onto_hyperlines_moved_id_property_is_a_conflict(segbill, tmp_path: Path) -> None:
    config = '[hyperline.properties]\nrename = { plan = "properties.id" }\n'
    run = dry(segbill, tmp_path, config, [track(properties={"id": "p-1", "plan": "pro"})], "hyperline")
    assert run.exit_code == 1 and run.events == []
    assert run.dead_letters[0]["reason"].startswith('Properties "plan" and "properties.id" would both be "properties.id"')


def test_a_constant_over_a_property_is_a_conflict_unless_the_property_is_excluded(segbill, tmp_path: Path) -> None:
    messages = [
        track(messageId="m-own", properties={"source": "web", "tokens": 1}),
        track(messageId="m-renamed", properties={"origin": "app"}),
        track(messageId="m-none", properties={"tokens": 2}),
    ]
    config = '[lago.properties]\nrename = { origin = "source" }\nconstants = { source = "segment" }\n'
    run = dry(segbill, tmp_path, config, messages)
    assert run.exit_code == 1
    assert [letter["reason"] for letter in run.dead_letters] == [
        'Property "source" and the constant "source" would both be "source"; exclude or rename the property.',
        'Property "origin" and the constant "source" would both be "source"; exclude or rename the property.',
    ]
    assert [e["properties"] for e in run.events] == [{"tokens": 2, "source": "segment"}]
    excluded = dry(segbill, tmp_path, config + 'exclude = ["source", "origin"]\n', messages)
    assert excluded.exit_code == 0
    assert [e["properties"] for e in excluded.events] == [
        {"tokens": 1, "source": "segment"},
        {"source": "segment"},
        {"tokens": 2, "source": "segment"},
    ]


def test_a_mistake_in_the_other_platforms_table_is_caught_too(segbill, tmp_path: Path) -> None:
    run = dry(segbill, tmp_path, "[hyperline]\ncustomer = 'x'\n", [API_CALL], "lago")
    assert run.exit_code == 2 and "hyperline: unknown key 'customer'" in run.stderr


def test_a_missing_config_file_exits_2(segbill, tmp_path: Path) -> None:
    write(tmp_path / "in.jsonl", jsonl(API_CALL))
    run = segbill("send", "in.jsonl", "--to", "lago", "--dry-run", "--config", "nope.toml")
    assert run.exit_code == 2 and "--config nope.toml: no such file." in run.stderr


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("API Call", "api_call"),
        ("Order Completed", "order_completed"),
        ("pageView", "page_view"),
        ("HTTPRequest sent", "http_request_sent"),
        ("v2 Upload", "v2_upload"),
        ("already_snake", "already_snake"),
        ("Order-Completed (v2)!", "order_completed_v2"),
        ("iOS App Opened", "i_os_app_opened"),
        ("ABC123def", "abc123_def"),
        ("!!!", "!!!"),
    ],
)
def test_snake_case(name: str, expected: str) -> None:
    assert snake_case(name) == expected

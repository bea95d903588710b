"""reconcile --state, and a replay of its --missing entries with a state, forget an event only
when they map its subscription and code (Hyperline: customer and event type) as every delivery
of the state did: under another mapping, what they call missing may be on the platform where
the send put it, and a replay would bill it twice."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import orjson

from segbill.mapping import EventRules, Mapping
from segbill.mapping_file import load as load_mapping
from segbill.testing.fake_platform import FakePlatform

from .conftest import jsonl, track, write

KEY = "sk-scope-do-not-print"
CUSTOMER_A = ("--customer-from", "properties.subscription_id")
CUSTOMER_B = ("--customer-from", "context.groupId")


def env(fake: FakePlatform) -> dict[str, str]:
    return {"LAGO_API_URL": fake.url, "LAGO_API_KEY": KEY, "HYPERLINE_API_URL": fake.url, "HYPERLINE_API_KEY": KEY}


def run_json(segbill, fake: FakePlatform, *args: str, input: bytes | None = None) -> tuple[int, dict[str, Any]]:
    run = segbill(*args, "--to", "lago", "--json", env=env(fake), input=input)
    assert KEY not in run.stdout + run.stderr
    assert run.exit_code in (0, 1), run.stdout + run.stderr
    return run.exit_code, orjson.loads(run.stdout.strip().splitlines()[-1])


def refused(segbill, fake: FakePlatform, *args: str, to: str = "lago") -> str:
    """The one line a refused command prints (exit 2)."""
    run = segbill(*args, "--to", to, env=env(fake))
    assert run.exit_code == 2, run.stdout + run.stderr
    assert run.stdout == "" and len(run.stderr.strip().splitlines()) == 1 and KEY not in run.stderr
    return " ".join(run.stderr.split())


def ledger(path: str) -> list[tuple[str, int, int]]:
    with closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT key, millis, delivered FROM ledger ORDER BY key").fetchall()


def two_subscriptions(count: int) -> list[dict[str, Any]]:
    """Messages that name sub_A in their properties and sub_B as their group."""
    return [
        track(
            messageId=f"m{i:03d}",
            event="api_call",
            timestamp=f"2024-01-01T00:{i // 60:02d}:{i % 60:02d}.000Z",
            properties={"subscription_id": "sub_A"},
            context={"groupId": "sub_B"},
        )
        for i in range(count)
    ]


def billed(fake: FakePlatform) -> list[tuple[str, str, str]]:
    return sorted((e["external_subscription_id"], e["code"], e["transaction_id"]) for e in fake.events("lago"))


def test_another_customer_mapping_cannot_forget_what_the_send_delivered_and_the_sends_own_options_repair_it(
    segbill, tmp_path: Path
) -> None:
    """The review's case on Postgres: a send under sub_A loses some events; a send under sub_B
    skips them all (the same keys). A reconcile under sub_B, with the state or before a replay
    with it, is refused: it would call all of them missing and bill them again under sub_B.
    The send's own options find what was lost, and the replay bills each event once."""
    messages = two_subscriptions(200)
    path = write(tmp_path / "export.jsonl", jsonl(*messages))
    with FakePlatform(api_key=KEY, lago_event_loss=0.05, seed=2) as fake:
        fake.add_billable_metric("api_call")
        fake.add_subscription("sub_A")
        fake.add_subscription("sub_B")
        code, sent = run_json(segbill, fake, "send", str(path), *CUSTOMER_A, "--state", "st.db")
        assert code == 0 and sent["delivered"] == 200
        fake.lago_event_loss = 0.0
        lost = {event["transaction_id"] for event in fake.lost()}
        assert 0 < len(lost) < 200
        code, again = run_json(segbill, fake, "send", str(path), *CUSTOMER_B, "--state", "st.db")
        assert (code, again["delivered"], again["skipped_by_reason"]) == (0, 0, {"duplicate": 200})
        before = ledger("st.db")

        line = refused(segbill, fake, "reconcile", str(path), *CUSTOMER_B, "--state", "st.db", "--missing", "m.jsonl")
        assert line.startswith("segbill: error: --state st.db delivered its events with (subscription from ")
        assert "(subscription from properties.subscription_id, code from event); this run maps (subscription " in line
        assert "from context.groupId, code from event)" in line and "a replay would bill it twice" in line
        assert "reconcile and replay with the send's options (--customer-from, --config)" in line
        assert ledger("st.db") == before and not Path("m.jsonl").exists()

        # Without the state, reconcile under sub_B calls every event missing; replaying that
        # with the state is refused before anything is sent, a preview too.
        code, result = run_json(segbill, fake, "reconcile", str(path), *CUSTOMER_B, "--missing", "m.jsonl")
        assert (code, result["missing"], result["forgotten"], result["pairs_none_found"]) == (1, 200, 0, 1)
        table = " ".join(segbill("reconcile", str(path), "--to", "lago", *CUSTOMER_B, env=env(fake)).stdout.split())
        assert "none found 1 pairs with none of their events on the platform: if the send mapped customers" in table
        posts = len([r for r in fake.requests("lago") if r.method == "POST"])
        assert "a replay would bill it twice" in refused(segbill, fake, "send", "m.jsonl", *CUSTOMER_B, "--state", "st.db")
        assert "a replay would bill it twice" in refused(
            segbill, fake, "send", "m.jsonl", *CUSTOMER_B, "--state", "st.db", "--dry-run"
        )
        # Behind events of another file too: the files are looked at before the first is sent.
        assert "bill it twice" in refused(segbill, fake, "send", str(path), "m.jsonl", *CUSTOMER_B, "--state", "st.db")
        # A stream cannot be looked at first: each entry gets its outcome, dead-lettered unsent.
        code, streamed = run_json(segbill, fake, "send", *CUSTOMER_B, "--state", "st.db", input=Path("m.jsonl").read_bytes())
        assert (code, streamed["delivered"], streamed["dead_lettered_by_reason"]) == (1, 0, {"other_scope": 200})
        assert len([r for r in fake.requests("lago") if r.method == "POST"]) == posts
        assert ledger("st.db") == before
        assert billed(fake) == sorted(("sub_A", "api_call", m["messageId"]) for m in messages if m["messageId"] not in lost)

        # The send's options: the lost are missing, forgotten, and the replay bills each once.
        Path("m.jsonl").unlink()
        code, result = run_json(segbill, fake, "reconcile", str(path), *CUSTOMER_A, "--state", "st.db", "--missing", "m.jsonl")
        assert (code, result["missing"], result["forgotten"]) == (1, len(lost), len(lost))
        code, replay = run_json(segbill, fake, "send", "m.jsonl", *CUSTOMER_A, "--state", "st.db")
        assert (code, replay["delivered"], replay["dead_lettered"]) == (0, len(lost), 0)
        assert billed(fake) == sorted(("sub_A", "api_call", m["messageId"]) for m in messages)
        code, done = run_json(segbill, fake, "reconcile", str(path), *CUSTOMER_A, "--state", "st.db")
        assert (code, done["found"], done["missing"], done["extra"], done["pairs_none_found"]) == (0, 200, 0, 0, 0)


def test_a_renamed_code_on_clickhouse_cannot_forget_what_was_delivered_under_the_old_one(segbill, tmp_path: Path) -> None:
    """The review's second case: ClickHouse keys on the code too, so a replay under a renamed
    code would store every event again beside the one the send delivered."""
    messages = [
        track(messageId=f"m{i}", userId="sub_A", event="api_call", timestamp=f"2024-01-01T00:00:0{i}.000Z") for i in range(3)
    ]
    path = write(tmp_path / "export.jsonl", jsonl(*messages))
    rename = write(tmp_path / "rename.toml", b'[lago.events]\nrename = { "api_call" = "api_calls_v2" }\n')
    with FakePlatform(api_key=KEY, lago_store="clickhouse") as fake:
        code, sent = run_json(segbill, fake, "send", str(path), "--state", "st.db")
        assert code == 0 and sent["delivered"] == 3
        before = ledger("st.db")

        line = refused(segbill, fake, "reconcile", str(path), "--config", str(rename), "--state", "st.db", "--missing", "m.jsonl")
        assert "delivered its events with (subscription from userId, code from event); this run maps" in line
        assert "(subscription from userId, code from event, 'api_call' renamed 'api_calls_v2')" in line
        assert "under another subscription or code" in line
        assert ledger("st.db") == before and not Path("m.jsonl").exists()

        code, result = run_json(segbill, fake, "reconcile", str(path), "--config", str(rename), "--missing", "m.jsonl")
        assert (code, result["missing"]) == (1, 3)
        assert "bill it twice" in refused(segbill, fake, "send", "m.jsonl", "--config", str(rename), "--state", "st.db")
        assert ledger("st.db") == before
        assert billed(fake) == [("sub_A", "api_call", f"m{i}") for i in range(3)]

        code, done = run_json(segbill, fake, "reconcile", str(path), "--state", "st.db")
        assert (code, done["found"], done["missing"], done["forgotten"]) == (0, 3, 0, 0)


def test_a_state_that_delivered_under_two_mappings_forgets_under_neither(segbill, tmp_path: Path) -> None:
    """A send with another customer mapping delivers its new events (and skips the old as
    duplicates): legitimate. From then on no one mapping finds all the state delivered."""
    first = write(tmp_path / "first.jsonl", jsonl(*two_subscriptions(3)))
    later = [{**m, "messageId": f"later-{m['messageId']}"} for m in two_subscriptions(3)]
    second = write(tmp_path / "second.jsonl", jsonl(*later))
    with FakePlatform(api_key=KEY) as fake:
        fake.add_billable_metric("api_call")
        fake.add_subscription("sub_A")
        fake.add_subscription("sub_B")
        assert run_json(segbill, fake, "send", str(first), *CUSTOMER_A, "--state", "st.db")[1]["delivered"] == 3
        code, sent = run_json(segbill, fake, "send", str(first), str(second), *CUSTOMER_B, "--state", "st.db")
        assert (code, sent["delivered"], sent["skipped_by_reason"]) == (0, 3, {"duplicate": 3})

        for mapping in (CUSTOMER_A, CUSTOMER_B):
            line = refused(segbill, fake, "reconcile", str(first), str(second), *mapping, "--state", "st.db")
            assert "delivered its events with several mappings, (subscription from properties.subscription_id" in line
            assert "and (subscription from context.groupId, code from event); this run maps" in line
            assert "no one mapping finds them all: reconcile without --state" in line
        assert len(billed(fake)) == 6


def test_a_state_from_before_scope_sources_were_kept_adopts_the_next_deliverys(segbill, tmp_path: Path) -> None:
    """Its earlier deliveries' mapping cannot be known: reconcile trusts it until a delivery
    says which mapping the state delivered with."""
    path = write(tmp_path / "export.jsonl", jsonl(*two_subscriptions(3)))
    more = write(tmp_path / "more.jsonl", jsonl(track(messageId="new", event="api_call", context={"groupId": "sub_B"})))
    with FakePlatform(api_key=KEY) as fake:
        fake.add_billable_metric("api_call")
        fake.add_subscription("sub_A")
        fake.add_subscription("sub_B")
        assert run_json(segbill, fake, "send", str(path), *CUSTOMER_A, "--state", "st.db")[0] == 0
        with closing(sqlite3.connect("st.db")) as db:
            db.execute("DROP TABLE scope_sources")
        code, result = run_json(segbill, fake, "reconcile", str(path), *CUSTOMER_A, "--state", "st.db")
        assert (code, result["found"]) == (0, 3)

        assert run_json(segbill, fake, "send", str(more), *CUSTOMER_B, "--state", "st.db")[1]["delivered"] == 1
        line = refused(segbill, fake, "reconcile", str(path), *CUSTOMER_A, "--state", "st.db")
        assert "delivered its events with (subscription from context.groupId, code from event); this run maps" in line


def test_hyperline_states_name_customers_and_event_types(segbill, tmp_path: Path) -> None:
    path = write(tmp_path / "export.jsonl", jsonl(*two_subscriptions(3)))
    with FakePlatform(api_key=KEY) as fake:
        sent = segbill("send", str(path), "--to", "hyperline", *CUSTOMER_A, "--state", "st.db", env=env(fake))
        assert sent.exit_code == 0 and len(fake.events("hyperline")) == 3
        line = refused(segbill, fake, "reconcile", str(path), *CUSTOMER_B, "--state", "st.db", to="hyperline")
        assert "delivered its events with (customer from properties.subscription_id, event_type from event); " in line
        assert "this run maps (customer from context.groupId, event_type from event)" in line
        assert "under another customer or event_type, and a replay would bill it twice" in line


def test_the_scope_source_a_state_keeps_is_pinned() -> None:
    """A state compares the mappings it delivered with to each run's as text: another form of the
    same mapping would refuse every reconcile of a state already written."""
    default = Mapping()
    assert default.scope_source() == (
        '{"billable_types": {}, "customer": {"paths": ["userId"]}, "event": {"paths": ["event"]}, "rename": {}, "snake_case": false}'
    )
    renamed = Mapping(events=EventRules(rename={"api_call": "api_calls_v2"}, snake_case=True))
    assert renamed.scope_source() == (
        '{"billable_types": {}, "customer": {"paths": ["userId"]}, "event": {"paths": ["event"]}, '
        '"rename": {"api_call": "api_calls_v2"}, "snake_case": "segbill-words-of-every-script"}'
    )
    assert load_mapping("lago", None).scope_source() == default.scope_source()


def test_a_state_delivered_under_the_earlier_snake_case_refuses_forgetting(segbill, tmp_path: Path) -> None:
    """Earlier builds made `ber_ride` of "Über Ride", and their states kept `"snake_case": true`:
    a reconcile under today's scheme looks for `über_ride`, calls every event missing, and a
    replay would bill each again under the new code."""
    path = write(tmp_path / "export.jsonl", jsonl(*(track(messageId=f"m{i}", event="Über Ride") for i in range(3))))
    (tmp_path / "map.toml").write_text('[lago.events]\nother = "snake_case"\n')
    earlier = '{"billable_types": {}, "customer": {"paths": ["userId"]}, "event": {"paths": ["event"]}, "rename": {}, "snake_case": true}'
    with FakePlatform(api_key=KEY) as fake:
        fake.add_billable_metric("über_ride")
        assert run_json(segbill, fake, "send", str(path), "--config", "map.toml", "--state", "st.db")[1]["delivered"] == 3
        with closing(sqlite3.connect("st.db")) as db, db:
            db.execute("UPDATE scope_sources SET source = ?", (earlier,))  # as the earlier build wrote it
        before = ledger("st.db")
        line = refused(segbill, fake, "reconcile", str(path), "--config", "map.toml", "--state", "st.db", "--missing", "m.jsonl")
        assert "snake_case codes of an earlier segbill (letters outside A-Z dropped)); this run maps" in line
        assert line.endswith(
            "snake_case codes): an event it calls missing may be on the platform under another subscription or code, "
            "and a replay would bill it twice. Nothing was changed: reconcile and replay with the send's options "
            "(--customer-from, --config)."
        )
        assert ledger("st.db") == before and not (tmp_path / "m.jsonl").exists()


def _refusing_state(segbill, fake: FakePlatform, tmp_path: Path) -> Path:
    """st.db delivered under two mappings, after its send of m.jsonl (reconcile's --missing,
    written without the state) finished: from then on it refuses to forget."""
    never_sent = [{**m, "messageId": f"lost-{m['messageId']}"} for m in two_subscriptions(3)]
    export = write(tmp_path / "export.jsonl", jsonl(*never_sent))
    later = write(tmp_path / "later.jsonl", jsonl(*({**m, "messageId": f"later-{m['messageId']}"} for m in two_subscriptions(2))))
    fake.add_billable_metric("api_call")
    fake.add_subscription("sub_A")
    fake.add_subscription("sub_B")
    assert run_json(segbill, fake, "reconcile", str(export), *CUSTOMER_A, "--missing", "m.jsonl")[1]["missing"] == 3
    assert run_json(segbill, fake, "send", "m.jsonl", *CUSTOMER_A, "--state", "st.db")[1]["delivered"] == 3
    assert run_json(segbill, fake, "send", str(later), *CUSTOMER_B, "--state", "st.db")[1]["delivered"] == 2
    assert "bill it twice" in refused(segbill, fake, "reconcile", str(export), *CUSTOMER_A, "--state", "st.db")
    return tmp_path / "m.jsonl"


def test_a_file_its_checkpoints_say_is_finished_is_not_looked_at_for_missing_entries(segbill, tmp_path: Path) -> None:
    """Only the files the run reads are looked at first: a finished --missing file is skipped
    whole, as on any rerun, not refused."""
    with FakePlatform(api_key=KEY) as fake:
        _refusing_state(segbill, fake, tmp_path)
        before = billed(fake)
        code, rerun = run_json(segbill, fake, "send", "m.jsonl", *CUSTOMER_A, "--state", "st.db")
        assert (code, rerun["read"], rerun["files_already_done"], rerun["delivered"]) == (0, 0, 1, 0)
        assert billed(fake) == before


def test_a_missing_entry_after_other_lines_is_dead_lettered_unsent(segbill, tmp_path: Path) -> None:
    """Only a file's first line says whether it is reconcile's --missing (a large export costs
    nothing to look at). An entry met further on cannot be forgotten either: it is
    dead-lettered `other_scope`, as from a stream, and the rest of the file is sent."""
    with FakePlatform(api_key=KEY) as fake:
        missing = _refusing_state(segbill, fake, tmp_path)
        entry = missing.read_bytes().splitlines(keepends=True)[0]
        fresh = {**two_subscriptions(1)[0], "messageId": "fresh"}
        write(tmp_path / "mixed.jsonl", jsonl(fresh) + entry)
        before = ledger("st.db")
        code, sent = run_json(segbill, fake, "send", "mixed.jsonl", *CUSTOMER_A, "--state", "st.db")
        assert (code, sent["delivered"], sent["dead_lettered_by_reason"]) == (1, 1, {"other_scope": 1})
        assert ("sub_A", "api_call", "fresh") in billed(fake)
        after = ledger("st.db")
        assert set(before) < set(after) and len(after) == len(before) + 1  # the entry's delivery is not forgotten


def test_only_the_marker_the_reader_accepts_makes_a_missing_file(segbill, tmp_path: Path) -> None:
    """`"segbill_dead_letter": true` is no segbill entry when read (only the integer 1 is): a
    file that starts with one is no --missing file either, and is not refused for it."""
    with FakePlatform(api_key=KEY) as fake:
        missing = _refusing_state(segbill, fake, tmp_path)
        entry = orjson.loads(missing.read_bytes().splitlines()[0])
        write(tmp_path / "lookalike.jsonl", jsonl({**entry, "segbill_dead_letter": True}))
        code, sent = run_json(segbill, fake, "send", "lookalike.jsonl", *CUSTOMER_A, "--state", "st.db")
        assert (code, sent["read"], sent["delivered"]) == (1, 1, 0)
        assert sent["dead_lettered_by_reason"] == {"missing_type": 1}  # read as a message, as the reader reads it

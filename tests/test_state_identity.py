"""A --state ledger says "these keys are delivered" only for the keys it made and the organization
it delivered to: a run keying events another way, or sending with another API key, is refused;
and a dry run reads the state without writing anything."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from segbill.mapping import Fields, FieldSource, Mapping
from segbill.mapping_file import load as load_mapping
from segbill.state import State
from segbill.testing.fake_platform import FakePlatform

from .conftest import jsonl, track, write

pytestmark = pytest.mark.usefixtures("fast_backoff")

KEY_A = "key-org-A-do-not-print"  # staging
KEY_B = "key-org-B-do-not-print"  # production, at the same URL


def messages(count: int, prefix: str = "m") -> list[dict[str, Any]]:
    return [
        track(
            messageId=f"{prefix}{i}",
            userId=f"cus_{i % 7}",
            timestamp=f"2024-01-{1 + i % 28:02d}T00:00:00.000Z",
            properties={"n": f"{prefix}-n{i}"},
        )
        for i in range(count)
    ]


def env(fake: FakePlatform, key: str = KEY_A, to: str = "lago") -> dict[str, str]:
    return {f"{to.upper()}_API_URL": fake.url, f"{to.upper()}_API_KEY": key}


def digests(state: Path) -> list[bytes]:
    with closing(sqlite3.connect(state)) as db:
        return [row[0] for row in db.execute("SELECT digest FROM api_key_digests")]


def no_secret(*texts: str | bytes, state: Path | None = None) -> None:
    """Neither key, nor the digest a state keeps of one, in any of `texts` (nor the key in the state)."""
    secrets = [KEY_A, KEY_B]
    if state is not None and state.exists():
        secrets += [digest.hex() for digest in digests(state)]
        assert not any(key.encode() in state.read_bytes() for key in (KEY_A, KEY_B))
    for text in texts:
        raw = text.encode() if isinstance(text, str) else text
        assert not any(secret.encode() in raw or secret.upper().encode() in raw for secret in secrets)


# -- 1. the keys' source -------------------------------------------------------------------------


@pytest.mark.parametrize(("to", "field"), [("lago", "transaction_id"), ("hyperline", "record_id")])
def test_a_rerun_keying_events_from_another_field_is_refused_before_billing_them_twice(
    segbill, tmp_path: Path, to: str, field: str
) -> None:
    write(tmp_path / "k.jsonl", jsonl(*messages(50)))
    write(tmp_path / "n.toml", f'[{to}]\n{field} = "properties.n"\n'.encode())
    write(tmp_path / "both.toml", f'[{to}]\n{field} = ["properties.n", "messageId"]\n'.encode())
    with FakePlatform(api_key=KEY_A) as fake:
        first = segbill("send", "k.jsonl", "--to", to, "--state", "k.db", "--quiet", env=env(fake, to=to))
        assert first.exit_code == 0 and len(fake.counts(to)) == 50
        for config, made in (("n.toml", "properties.n"), ("both.toml", "properties.n or messageId")):
            for dry_run in ([], ["--dry-run"]):
                run = segbill(
                    "send", "k.jsonl", "--to", to, "--state", "k.db", "--config", config, *dry_run, env=env(fake, to=to)
                )
                assert run.exit_code == 2 and run.stdout == ""
                line = run.stderr.strip()
                assert "\n" not in line and line.startswith("segbill: error: --state k.db holds events whose idempotency keys")
                assert "made from messageId (else an id derived from the message)" in line
                assert f"this run's would be made from {made}:" in line and "billed twice" in line
        assert len(fake.counts(to)) == 50 and len(fake.requests(to)) == 1  # the platform holds one event a message
        # The same key source written out, or another mapping of everything but the id, is not refused.
        write(
            tmp_path / "same.toml", f'[{to}]\n{field} = "messageId"\n[{to}.events]\nrename = {{"API Call" = "calls"}}\n'.encode()
        )
        again = segbill("send", "k.jsonl", "--to", to, "--state", "k.db", "--config", "same.toml", "--json", env=env(fake, to=to))
        assert again.exit_code == 0 and orjson.loads(again.stdout)["skipped_by_reason"] == {"duplicate": 50}


def test_reconcile_refuses_a_state_whose_keys_were_made_another_way(segbill, tmp_path: Path) -> None:
    """Reconcile would take out of the ledger, as missing, keys it never held: the state's are others."""
    write(tmp_path / "k.jsonl", jsonl(*messages(20)))
    write(tmp_path / "n.toml", b'[lago]\ntransaction_id = "properties.n"\n')
    with FakePlatform(api_key=KEY_A) as fake:
        assert segbill("send", "k.jsonl", "--to", "lago", "--state", "k.db", env=env(fake)).exit_code == 0
        before = len(fake.requests("lago"))
        run = segbill("reconcile", "k.jsonl", "--to", "lago", "--state", "k.db", "--config", "n.toml", env=env(fake))
        assert run.exit_code == 2 and "this run's would be made from properties.n" in run.stderr
        assert len(fake.requests("lago")) == before  # refused before any read


def forget_identity(state: Path) -> None:
    """Make `state` one from before segbill kept its key source and API key."""
    with closing(sqlite3.connect(state)) as db:
        db.executescript("DROP TABLE IF EXISTS key_sources; DROP TABLE IF EXISTS api_key_digests;")


def test_a_state_from_before_adopts_the_key_source_and_api_key_of_its_first_delivery(segbill, tmp_path: Path) -> None:
    write(tmp_path / "a.jsonl", jsonl(*messages(10)))
    write(tmp_path / "b.jsonl", jsonl(*messages(10, prefix="b")))
    write(tmp_path / "n.toml", b'[lago]\ntransaction_id = "properties.n"\n')
    with FakePlatform(api_key=KEY_A) as fake:
        assert segbill("send", "a.jsonl", "--to", "lago", "--state", "s.db", env=env(fake)).exit_code == 0
        forget_identity(tmp_path / "s.db")
        dry = segbill("send", "b.jsonl", "--to", "lago", "--state", "s.db", "--config", "n.toml", "--dry-run")
        assert dry.exit_code == 0 and len(dry.events) == 10  # nothing to compare with yet
        adopted = segbill("send", "b.jsonl", "--to", "lago", "--state", "s.db", "--config", "n.toml", env=env(fake))
        assert adopted.exit_code == 0 and len(fake.counts("lago")) == 20
        refused = segbill("send", "a.jsonl", "--to", "lago", "--state", "s.db", "--dead-letter", "x.jsonl", env=env(fake))
        assert (
            refused.exit_code == 2
            and "keys were made from properties.n; this run's would be made from messageId" in refused.stderr
        )
        fake.api_key = KEY_B
        other = segbill("send", "b.jsonl", "--to", "lago", "--state", "s.db", "--config", "n.toml", env=env(fake, KEY_B))
        assert other.exit_code == 2 and "the API key differs" in other.stderr
        no_secret(other.stderr, state=tmp_path / "s.db")


# -- 2. the organization: the API key --------------------------------------------------------------


def test_another_organizations_key_at_the_same_url_is_refused_and_a_rotated_key_is_taken_when_said(
    segbill, tmp_path: Path
) -> None:
    """Staging first, then production with the same state: production would get nothing."""
    write(tmp_path / "in.jsonl", jsonl(*messages(200)))
    shutil.copy(tmp_path / "in.jsonl", tmp_path / "in2.jsonl")
    with FakePlatform(api_key=KEY_A) as fake:
        first = segbill("send", "in.jsonl", "--to", "lago", "--state", "st.db", "--json", env=env(fake))
        assert first.exit_code == 0 and orjson.loads(first.stdout)["delivered"] == 200
        requests = len(fake.requests("lago"))
        for args in ([], ["--json"]):
            refused = segbill("send", "in2.jsonl", "--to", "lago", "--state", "st.db", *args, env=env(fake, KEY_B))
            assert refused.exit_code == 2 and refused.stdout == "" and refused.stderr.count("\n") == 1
            assert refused.stderr.startswith("segbill: error: --state st.db: the API key differs from the one its events were")
            assert "another organization, which holds none of these events" in refused.stderr
            assert "use a new --state file" in refused.stderr and "pass --key-rotated" in refused.stderr
            no_secret(refused.stderr, state=tmp_path / "st.db")
        assert len(fake.requests("lago")) == requests and not (tmp_path / "dead.jsonl").exists()
        # A dry run uses no key: it previews as before (and --key-rotated there is refused, above).
        preview = segbill("send", "in2.jsonl", "--to", "lago", "--state", "st.db", "--dry-run", "--json")
        assert preview.exit_code == 0 and orjson.loads(preview.stderr.splitlines()[-1])["files_already_done"] == 0
        # The key rotated for the same organization: said once, remembered from then on.
        fake.api_key = KEY_B
        write(tmp_path / "more.jsonl", jsonl(*messages(30, prefix="x")))
        rotated = segbill(
            "send", "more.jsonl", "--to", "lago", "--state", "st.db", "--key-rotated", "--json", env=env(fake, KEY_B)
        )
        assert rotated.exit_code == 0 and orjson.loads(rotated.stdout)["delivered"] == 30
        after = segbill("send", "in2.jsonl", "--to", "lago", "--state", "st.db", "--json", env=env(fake, KEY_B))
        assert after.exit_code == 0 and orjson.loads(after.stdout)["skipped_by_reason"] == {"duplicate": 200}
        old = segbill("send", "in2.jsonl", "--to", "lago", "--state", "st.db", env=env(fake, KEY_A))
        assert old.exit_code == 2 and "the API key differs" in old.stderr
        no_secret(rotated.stdout, rotated.stderr, after.stdout, after.stderr, old.stderr, state=tmp_path / "st.db")
        assert len(fake.counts("lago")) == 230 and set(fake.counts("lago").values()) == {1}


def test_the_state_keeps_a_salted_digest_of_the_key_and_never_the_key(segbill, tmp_path: Path) -> None:
    write(tmp_path / "in.jsonl", jsonl(*messages(5), {"type": "track", "event": "x"}))  # one dead letter
    with FakePlatform(api_key=KEY_A) as fake:
        run = segbill("send", "in.jsonl", "--to", "lago", "--state", "s1.db", "--json", env=env(fake))
        again = segbill("send", "in.jsonl", "--to", "lago", "--state", "s2.db", "--json", env=env(fake))
        assert run.exit_code == again.exit_code == 1
    one, two = digests(tmp_path / "s1.db"), digests(tmp_path / "s2.db")
    assert len(one) == len(two) == 1 and len(one[0]) == 8 and one != two  # each state salts its own
    no_secret(run.stdout, run.stderr, (tmp_path / "dead.jsonl").read_bytes(), state=tmp_path / "s1.db")
    no_secret(again.stdout, state=tmp_path / "s2.db")


def test_reconcile_refuses_another_key_unless_told_it_was_rotated(segbill, tmp_path: Path) -> None:
    """Another organization holds none of the events: reconcile would call them all missing and
    take them out of the ledger."""
    write(tmp_path / "in.jsonl", jsonl(*messages(20)))
    with FakePlatform(api_key=KEY_A) as fake:
        assert segbill("send", "in.jsonl", "--to", "lago", "--state", "s.db", env=env(fake)).exit_code == 0
        fake.api_key = KEY_B
        refused = segbill("reconcile", "in.jsonl", "--to", "lago", "--state", "s.db", "--json", env=env(fake, KEY_B))
        assert refused.exit_code == 2 and "the API key differs" in refused.stderr and refused.stdout == ""
        assert [r for r in fake.requests("lago") if r.method == "GET"] == []
        rotated = segbill(
            "reconcile", "in.jsonl", "--to", "lago", "--state", "s.db", "--key-rotated", "--json", env=env(fake, KEY_B)
        )
        assert rotated.exit_code == 0 and orjson.loads(rotated.stdout)["found"] == 20
        later = segbill("send", "in.jsonl", "--to", "lago", "--state", "s.db", "--json", env=env(fake, KEY_B))
        assert later.exit_code == 0  # the rotated key is the one remembered now
        no_secret(refused.stderr, rotated.stdout, rotated.stderr, later.stdout, state=tmp_path / "s.db")


STILL_OLD = "the platform accepted no request made with this API key, so --state s.db still remembers the old key"


def test_a_rotated_key_the_platform_refuses_is_never_remembered(segbill, tmp_path: Path) -> None:
    """A typo passed with --key-rotated (401) must not lock the state out of the right key."""
    write(tmp_path / "in.jsonl", jsonl(*messages(20)))
    write(tmp_path / "more.jsonl", jsonl(*messages(10, prefix="x")))
    with FakePlatform(api_key=KEY_A) as fake:
        assert segbill("send", "in.jsonl", "--to", "lago", "--state", "s.db", env=env(fake)).exit_code == 0
        typo = segbill("send", "more.jsonl", "--to", "lago", "--state", "s.db", "--key-rotated", "--json", env=env(fake, KEY_B))
        summary = orjson.loads(typo.stdout)
        assert typo.exit_code == 3 and summary["delivered"] == 0 and "rejected the API key" in summary["stopped"]
        assert [w for w in summary["warnings"] if STILL_OLD in w] == summary["warnings"] != []
        human = segbill("send", "more.jsonl", "--to", "lago", "--state", "s.db", "--key-rotated", env=env(fake, KEY_B))
        assert human.exit_code == 3 and STILL_OLD in " ".join((human.stdout + human.stderr).split())
        right = segbill("send", "more.jsonl", "--to", "lago", "--state", "s.db", "--json", env=env(fake))
        assert right.exit_code == 0 and orjson.loads(right.stdout)["delivered"] == 10
        no_secret(typo.stdout, typo.stderr, human.stdout, human.stderr, right.stdout, state=tmp_path / "s.db")
        assert len(fake.counts("lago")) == 30


def test_a_rotated_key_is_remembered_once_the_platform_answers_a_request_made_with_it(segbill, tmp_path: Path) -> None:
    """Every file finished: the rotated send sends nothing, so the state keeps the old key and
    says so; a reconcile that reads with the new key (or a send that delivers) adopts it."""
    write(tmp_path / "in.jsonl", jsonl(*messages(20)))
    with FakePlatform(api_key=KEY_A) as fake:
        assert segbill("send", "in.jsonl", "--to", "lago", "--state", "s.db", env=env(fake)).exit_code == 0
        fake.api_key = KEY_B
        idle = segbill("send", "in.jsonl", "--to", "lago", "--state", "s.db", "--key-rotated", "--json", env=env(fake, KEY_B))
        summary = orjson.loads(idle.stdout)
        assert idle.exit_code == 0 and summary["files_already_done"] == 1 and summary["requests"] == 0
        assert len(summary["warnings"]) == 1 and STILL_OLD in summary["warnings"][0]
        refused = segbill("send", "in.jsonl", "--to", "lago", "--state", "s.db", env=env(fake, KEY_B))
        assert refused.exit_code == 2 and "the API key differs" in refused.stderr
        assert segbill("send", "in.jsonl", "--to", "lago", "--state", "s.db", env=env(fake, KEY_A)).exit_code == 0
        rotated = segbill(
            "reconcile", "in.jsonl", "--to", "lago", "--state", "s.db", "--key-rotated", "--json", env=env(fake, KEY_B)
        )
        result = orjson.loads(rotated.stdout)
        assert rotated.exit_code == 0 and result["found"] == 20 and result["warnings"] == []
        later = segbill("send", "in.jsonl", "--to", "lago", "--state", "s.db", env=env(fake, KEY_B))
        assert later.exit_code == 0
        old = segbill("send", "in.jsonl", "--to", "lago", "--state", "s.db", env=env(fake, KEY_A))
        assert old.exit_code == 2 and "the API key differs" in old.stderr
        no_secret(idle.stdout, refused.stderr, rotated.stdout, rotated.stderr, old.stderr, state=tmp_path / "s.db")


def test_an_answer_that_the_platform_held_the_events_already_accepts_a_rotated_key(segbill, tmp_path: Path) -> None:
    write(tmp_path / "in.jsonl", jsonl(*messages(10)))
    write(tmp_path / "other.jsonl", jsonl(*messages(5, prefix="o")))
    with FakePlatform(api_key=KEY_A) as fake:
        assert segbill("send", "in.jsonl", "--to", "lago", "--state", "s.db", env=env(fake)).exit_code == 0
        assert segbill("send", "other.jsonl", "--to", "lago", "--state", "elsewhere.db", env=env(fake)).exit_code == 0
        fake.api_key = KEY_B
        held = segbill("send", "other.jsonl", "--to", "lago", "--state", "s.db", "--key-rotated", "--json", env=env(fake, KEY_B))
        summary = orjson.loads(held.stdout)
        assert held.exit_code == 0 and summary["already_delivered"] == summary["delivered"] == 5 and summary["warnings"] == []
        assert segbill("send", "in.jsonl", "--to", "lago", "--state", "s.db", env=env(fake, KEY_B)).exit_code == 0


def test_reconcile_with_a_rotated_key_the_platform_refuses_keeps_the_old_key(segbill, tmp_path: Path) -> None:
    write(tmp_path / "in.jsonl", jsonl(*messages(20)))
    with FakePlatform(api_key=KEY_A) as fake:
        assert segbill("send", "in.jsonl", "--to", "lago", "--state", "s.db", env=env(fake)).exit_code == 0
        for args in (["--json"], []):
            typo = segbill(
                "reconcile", "in.jsonl", "--to", "lago", "--state", "s.db", "--key-rotated", *args, env=env(fake, KEY_B)
            )
            assert typo.exit_code == 3 and STILL_OLD in " ".join(typo.stdout.split()), typo.stdout
            no_secret(typo.stdout, typo.stderr, state=tmp_path / "s.db")
        right = segbill("reconcile", "in.jsonl", "--to", "lago", "--state", "s.db", "--json", env=env(fake))
        assert right.exit_code == 0 and orjson.loads(right.stdout)["found"] == 20


def test_send_check_refuses_another_key_before_reading_the_platform(segbill, tmp_path: Path) -> None:
    """--check read the platform with the other key (and passed, had that organization billed the
    events) before the send's state refused it; with --key-rotated it checks, then sends."""
    write(tmp_path / "in.jsonl", jsonl(*messages(14)))
    write(tmp_path / "more.jsonl", jsonl(*messages(7, prefix="x")))
    with FakePlatform(api_key=KEY_A) as fake:
        fake.add_billable_metric("API Call")
        for customer in range(7):
            fake.add_subscription(f"cus_{customer}", started_at="2023-01-01T00:00:00Z")
        assert segbill("send", "in.jsonl", "--to", "lago", "--state", "s.db", env=env(fake)).exit_code == 0
        fake.api_key = KEY_B
        requests = len(fake.requests("lago"))
        refused = segbill("send", "more.jsonl", "--to", "lago", "--state", "s.db", "--check", env=env(fake, KEY_B))
        assert refused.exit_code == 2 and refused.stderr.count("\n") == 1
        assert refused.stderr.startswith("segbill: error: --state s.db: the API key differs from the one its events were")
        assert len(fake.requests("lago")) == requests
        rotated = segbill(
            "send", "more.jsonl", "--to", "lago", "--state", "s.db", "--check", "--key-rotated", env=env(fake, KEY_B)
        )
        assert rotated.exit_code == 0, rotated.stderr
        assert "--check: all 7 events will be billed" in rotated.stderr and len(fake.counts("lago")) == 21
        no_secret(refused.stderr, rotated.stdout, rotated.stderr, state=tmp_path / "s.db")


@pytest.mark.parametrize("rotated", [[], ["--key-rotated"]])
def test_a_wrong_key_that_delivered_nothing_is_not_remembered(segbill, tmp_path: Path, rotated: list[str]) -> None:
    write(tmp_path / "in.jsonl", jsonl(*messages(10)))
    with FakePlatform(api_key=KEY_B) as fake:
        wrong = segbill("send", "in.jsonl", "--to", "lago", "--state", "s.db", *rotated, env=env(fake, KEY_A))
        assert wrong.exit_code == 3  # 401: nothing delivered
        right = segbill("send", "in.jsonl", "--to", "lago", "--state", "s.db", "--json", env=env(fake, KEY_B))
        assert right.exit_code == 0 and orjson.loads(right.stdout)["delivered"] == 10


def test_key_rotated_is_refused_where_it_would_do_nothing(segbill, tmp_path: Path) -> None:
    write(tmp_path / "in.jsonl", jsonl(*messages(3)))
    with FakePlatform(api_key=KEY_A) as fake:
        without = segbill("send", "in.jsonl", "--to", "lago", "--key-rotated", env=env(fake))
        assert without.exit_code == 2 and "--key-rotated replaces the API key a --state file remembers" in without.stderr
        dry = segbill("send", "in.jsonl", "--to", "lago", "--dry-run", "--state", "s.db", "--key-rotated")
        assert dry.exit_code == 2 and "a dry run uses no API key" in dry.stderr
        reconciled = segbill("reconcile", "in.jsonl", "--to", "lago", "--key-rotated", env=env(fake))
        assert reconciled.exit_code == 2 and "give the --state file" in reconciled.stderr
        assert fake.requests() == []


# -- 3. a dry run writes nothing -------------------------------------------------------------------


def files(folder: Path) -> dict[str, bytes]:
    """What a folder holds: each file's bytes, but for a -shm file (SQLite's index of the -wal
    file, which a reader may rebuild) only that it is there."""
    return {
        path.name: b"" if path.name.endswith("-shm") else path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()
    }


def test_a_dry_run_with_a_state_that_does_not_exist_creates_nothing(segbill, tmp_path: Path) -> None:
    write(tmp_path / "in.jsonl", jsonl(*messages(5), *messages(5)))
    run = segbill("send", "in.jsonl", "--to", "lago", "--dry-run", "--state", "new.db", "--json")
    assert run.exit_code == 0 and len(run.events) == 5
    assert "segbill: --state new.db does not exist: this dry run reads it as empty and creates nothing" in run.stderr
    assert orjson.loads(run.stderr.splitlines()[-1])["skipped_by_reason"] == {"duplicate": 5}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in.jsonl"]
    (tmp_path / "folder.db").mkdir()
    folder = segbill("send", "in.jsonl", "--to", "lago", "--dry-run", "--state", "folder.db")
    assert folder.exit_code == 2 and "segbill: error: --state folder.db: a folder; give the path of a state file" in folder.stderr


def test_a_dry_run_reads_a_state_without_changing_a_byte_or_adding_a_file(segbill, tmp_path: Path) -> None:
    """Also a state from before key sources were kept, with claims left by a run that died: the
    dry run judges them as a send would (a send deletes such claims first), and writes nothing."""
    write(tmp_path / "a.jsonl", jsonl(*messages(30)))
    write(tmp_path / "b.jsonl", jsonl(*messages(40)))
    with FakePlatform(api_key=KEY_A) as fake:
        assert segbill("send", "a.jsonl", "--to", "lago", "--state", "s.db", env=env(fake)).exit_code == 0
    forget_identity(tmp_path / "s.db")
    with closing(sqlite3.connect(tmp_path / "s.db")) as db, db:
        # a dead run's claim
        db.execute("INSERT INTO ledger (target, key, millis, delivered) VALUES ('lago', 'm35', 1704067200000, 0)")
    before = files(tmp_path)
    run = segbill("send", "b.jsonl", "--to", "lago", "--dry-run", "--state", "s.db", "--json")
    summary = orjson.loads(run.stderr.splitlines()[-1])
    assert run.exit_code == 0 and summary["converted"] == 10 and summary["skipped_by_reason"] == {"duplicate": 30}
    assert files(tmp_path) == before


def run_read_only(folder: Path, args: list[str]) -> subprocess.CompletedProcess[bytes]:
    """`segbill ARGS` in `folder` mounted read-only (a private mount namespace), or, for a user
    other than root, in `folder` made read-only by its permissions."""
    command = [sys.executable, "-m", "segbill", *args]
    if os.geteuid() != 0:
        modes = {path: path.stat().st_mode for path in [folder, *folder.iterdir()]}
        try:
            for path in modes:
                path.chmod(0o555 if path.is_dir() else 0o444)
            return subprocess.run(command, cwd=folder, capture_output=True, check=False, timeout=60)
        finally:
            for path, mode in modes.items():
                path.chmod(mode)
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("no private mount namespace here (unshare -rm)")
    script = 'mount --bind -o ro "$0" "$0" && cd "$0" && exec "$@"'
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, str(folder), *command], capture_output=True, check=False, timeout=60
    )


def test_a_state_on_a_read_only_mount_can_be_previewed(segbill, tmp_path: Path) -> None:
    write(tmp_path / "a.jsonl", jsonl(*messages(30)))
    write(tmp_path / "b.jsonl", jsonl(*messages(40)))
    with FakePlatform(api_key=KEY_A) as fake:
        assert segbill("send", "a.jsonl", "--to", "lago", "--state", "s.db", env=env(fake)).exit_code == 0
    before = files(tmp_path)
    done = run_read_only(tmp_path, ["send", "a.jsonl", "b.jsonl", "--to", "lago", "--dry-run", "--state", "s.db", "--json"])
    assert done.returncode == 0, done.stderr
    summary = orjson.loads(done.stderr.splitlines()[-1])
    assert (summary["files_already_done"], summary["converted"], summary["skipped_by_reason"]) == (1, 10, {"duplicate": 30})
    assert files(tmp_path) == before


def test_a_dry_run_reads_what_a_killed_send_left_in_the_wal(segbill, tmp_path: Path) -> None:
    """A killed send's last commits are in the -wal file: reading the state file alone (as an
    immutable file is read) would call those events new."""
    write(tmp_path / "a.jsonl", jsonl(*messages(30)))
    with FakePlatform(api_key=KEY_A) as fake:
        assert segbill("send", "a.jsonl", "--to", "lago", "--state", "s.db", env=env(fake)).exit_code == 0
    killed = tmp_path / "killed"
    killed.mkdir()
    with closing(sqlite3.connect(tmp_path / "s.db", isolation_level=None)) as db:
        db.execute("PRAGMA wal_autocheckpoint=0")  # as a run killed before its connection closed
        db.execute("UPDATE ledger SET delivered = 1")
        db.execute("INSERT INTO ledger (target, key, millis, delivered) SELECT target, 'x' || key, millis, 1 FROM ledger")
        for name in ("s.db", "s.db-wal", "s.db-shm"):
            shutil.copy(tmp_path / name, killed / name)
    write(killed / "x.jsonl", jsonl(*messages(30, prefix="xm")))
    before = files(killed)
    run = segbill("send", "killed/x.jsonl", "--to", "lago", "--dry-run", "--state", "killed/s.db", "--json")
    assert run.exit_code == 0 and orjson.loads(run.stderr.splitlines()[-1])["skipped_by_reason"] == {"duplicate": 30}
    assert files(killed) == before
    (killed / "s.db-shm").unlink()  # and where its -shm file cannot be made: refused, saying why
    done = run_read_only(killed, ["send", "x.jsonl", "--to", "lago", "--dry-run", "--state", "s.db"])
    assert done.returncode == 2 and done.stdout == b""
    assert b"a run that was killed left changes in s.db-wal, which a dry run cannot read" in done.stderr


def test_a_dry_run_beside_a_send_is_refused_and_dry_runs_may_overlap(segbill, tmp_path: Path) -> None:
    write(tmp_path / "a.jsonl", jsonl(*messages(10)))
    with FakePlatform(api_key=KEY_A) as fake:
        assert segbill("send", "a.jsonl", "--to", "lago", "--state", "s.db", env=env(fake)).exit_code == 0
        sending = State(tmp_path / "s.db", "lago")
        try:
            dry = segbill("send", "a.jsonl", "--to", "lago", "--dry-run", "--state", "s.db")
        finally:
            sending.close()
        assert dry.exit_code == 2 and "another segbill run is using s.db" in dry.stderr
        previewing = State(tmp_path / "s.db", "lago", read_only=True)
        try:
            other = segbill("send", "a.jsonl", "--to", "lago", "--dry-run", "--state", "s.db", "--json")
            send = segbill("send", "a.jsonl", "--to", "lago", "--state", "s.db", env=env(fake))
        finally:
            previewing.close()
        assert other.exit_code == 0 and orjson.loads(other.stderr.splitlines()[-1])["files_already_done"] == 1
        assert send.exit_code == 2 and "another segbill run is using s.db" in send.stderr


# -- 4. reconcile: what a send left unanswered, found stored ------------------------------------


def test_reconcile_marks_delivered_the_unanswered_events_it_finds_so_no_send_resends_them(segbill, tmp_path: Path) -> None:
    write(tmp_path / "in.jsonl", jsonl(*messages(30)))
    with FakePlatform(api_key=KEY_A) as fake:
        fake.script(["lost", "503", "503"])  # the first batch is stored, its answer lost, its retries fail
        args = ["--batch-size", "10", "--concurrency", "1", "--max-retries", "2", "--json"]
        first = segbill("send", "in.jsonl", "--to", "lago", "--state", "s.db", *args, env=env(fake))
        assert first.exit_code == 1 and orjson.loads(first.stdout)["dead_lettered_by_reason"] == {"unreachable": 10}
        assert len(fake.counts("lago")) == 30
        with closing(sqlite3.connect(tmp_path / "s.db")) as db:
            unanswered = db.execute("SELECT key, millis FROM ledger WHERE delivered < 0 ORDER BY key").fetchall()
        assert len(unanswered) == 10

        run = segbill("reconcile", "in.jsonl", "--to", "lago", "--state", "s.db", env=env(fake))
        table = " ".join(run.stdout.split())
        assert run.exit_code == 0 and "confirmed 10 found events s.db had as sent without an answer: delivered now" in table
        assert "none taken out: nothing is missing" in table
        with closing(sqlite3.connect(tmp_path / "s.db")) as db:
            rows = db.execute("SELECT key, millis FROM ledger WHERE delivered = 1 ORDER BY key").fetchall()
        assert len(rows) == 30 and set(unanswered) <= set(rows)  # same key, same time
        again = segbill("reconcile", "in.jsonl", "--to", "lago", "--state", "s.db", "--json", env=env(fake))
        assert (orjson.loads(again.stdout)["found"], orjson.loads(again.stdout)["confirmed"]) == (30, 0)

        (tmp_path / "dead.jsonl").rename(tmp_path / "retry.jsonl")
        posts = [r for r in fake.requests("lago") if r.method == "POST"]
        replay = segbill("send", "retry.jsonl", "--to", "lago", "--state", "s.db", "--json", env=env(fake))
        summary = orjson.loads(replay.stdout)
        assert replay.exit_code == 0 and (summary["delivered"], summary["skipped_by_reason"]) == (0, {"duplicate": 10})
        assert [r for r in fake.requests("lago") if r.method == "POST"] == posts  # nothing resent
        no_secret(run.stdout, again.stdout, replay.stdout, state=tmp_path / "s.db")


def test_reconcile_confirms_only_an_unanswered_event_it_lists_not_one_whose_counts_merely_agree(segbill, tmp_path: Path) -> None:
    """Another integration's event of the same subscription, code and day cancels the count of
    one the platform never stored: confirming it would make the dead-letter replay skip it as
    `duplicate`, and it would never be billed."""
    write(tmp_path / "other.jsonl", jsonl(track(messageId="F", userId="sub_1", timestamp="2024-01-10T00:00:00.000Z")))
    write(tmp_path / "in.jsonl", jsonl(track(messageId="E", userId="sub_1", timestamp="2024-01-10T00:00:00.000Z")))
    with FakePlatform(api_key=KEY_A) as fake:
        assert segbill("send", "other.jsonl", "--to", "lago", "--dead-letter", "other-dead.jsonl", env=env(fake)).exit_code == 0
        fake.script(["reset"])  # E's request is cut before it is stored
        args = ["--max-retries", "0", "--json"]
        first = segbill("send", "in.jsonl", "--to", "lago", "--state", "s.db", *args, env=env(fake))
        assert first.exit_code == 1 and orjson.loads(first.stdout)["dead_lettered_by_reason"] == {"unreachable": 1}
        with closing(sqlite3.connect(tmp_path / "s.db")) as db:
            assert db.execute("SELECT COUNT(*) FROM ledger WHERE delivered < 0").fetchone() == (1,)

        run = segbill("reconcile", "in.jsonl", "--to", "lago", "--state", "s.db", "--json", env=env(fake))
        report = orjson.loads(run.stdout)
        assert (report["found"], report["missing"], report["extra"], report["confirmed"]) == (0, 1, 1, 0)

        (tmp_path / "dead.jsonl").rename(tmp_path / "retry.jsonl")
        replay = segbill("send", "retry.jsonl", "--to", "lago", "--state", "s.db", "--json", env=env(fake))
        assert replay.exit_code == 0 and orjson.loads(replay.stdout)["delivered"] == 1
        assert sorted(event["transaction_id"] for event in fake.events("lago")) == ["E", "F"]
        no_secret(run.stdout, replay.stdout, state=tmp_path / "s.db")


def test_the_key_source_a_state_keeps_is_pinned() -> None:
    """A state file compares its key source with each run's as text: another form of the same
    source would refuse every state already written."""
    default = Mapping()
    fallback = replace(default, fields=replace(Fields(), id=FieldSource((("properties", "n"), ("messageId",)))))
    assert default.key_source() == '{"missing": "segbill-sha256", "paths": ["messageId"]}'
    assert fallback.key_source() == '{"missing": "invalid", "paths": ["properties.n", "messageId"]}'
    assert load_mapping("lago", None).key_source() == default.key_source()

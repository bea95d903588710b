"""Run state in SQLite: the ledger of delivered idempotency keys, per-file checkpoints, the lock.

With `--state PATH` it persists between runs. A run that keeps nothing (no `--state`, or a dry
run) holds its own claims in a `KeyIndex` in memory instead, in front of the ledger it reads.

- ledger: (target, key) -> the event time (ms) the key was sent with, whether the platform
  acknowledged it, and until it does, a digest of the event's scope and kind (`scope_digests`).
  Rows with `delivered = 0` are this run's claims on keys not yet sent; they are
  removed if the event is not delivered, and at the end of the run and the start of the next.
  A record outside the run's selection (--since/--until, --shard) claims its key too, with such a
  row, never sent, released or marked: a later copy is a repeat, as in a run over everything,
  and no later run sees the claim. A negative `delivered`
  names the request an event was last sent in, before its answer came: whether it is stored is
  unknown (see `sending`), so the row outlives the run, and only a copy in the same scope and
  kind is sent again (see `_repeat`). Rows of a ledger from before the digest was kept have
  none: a copy with the same key and time is sent again, whatever its scope and kind.
- checkpoints: per selection (the options that decide which records a run bills, and how) and
  input file (path, size, fingerprint of its first bytes): the byte offset and line number before
  which every record has its final outcome, and whether the file is done.
- dead_letters: the position of every record dead-lettered, so that no later run writes it again
  (a read-ahead past the checkpoint, or another selection, reads it again).
- destinations: where the ledger's events were delivered; it holds for no other destination.
- key_sources: what the ledger's keys were made from (`Mapping.key_source`), and api_key_digests:
  per destination, a salted digest of the API key its events were delivered with (another key
  may be another organization at the same URL). Both are adopted with the first delivery, by a
  state from before they were kept too; a run that would make keys another way, or send with
  another key (unless told it was rotated), is refused. A rotated key replaces the one kept only
  once the platform accepts a request made with it (`key_accepted`): a mistyped key never does.
- scope_sources: each mapping of an event's scope and kind (`Mapping.scope_source`: Lago's
  subscription and code) the ledger's events were delivered with, adopted with each run's
  first delivery (a state from before they were kept: its earlier deliveries' cannot be
  known). A send with another mapping is fine (it skips keys delivered, delivers new ones), but
  forgetting (`forget`) is refused unless the run maps as every delivery did: an event missing
  where it looks may be on the platform where another mapping put it.

A dry run opens the file read-only and writes nothing (see `_read_without_writing`).
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import os
import random
import sqlite3
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from segbill.mapping import described, described_scope
from segbill.segment import Record
from segbill.sources import Source
from segbill.targets import Target, get_target

FINGERPRINT_BYTES = 65536
# INSERT ... RETURNING (SQLite 3.35+) claims a chunk of keys in one statement.
RETURNING = sqlite3.sqlite_version_info >= (3, 35)
# Each table: its columns, then anything after them. A dry run creates in its own temporary
# schema those an older state lacks, so that it reads them as empty without writing the file.
_TABLES = {
    "ledger": """(
    target TEXT NOT NULL, key TEXT NOT NULL, millis INTEGER NOT NULL, delivered INTEGER NOT NULL, scope BLOB,
    PRIMARY KEY (target, key)
) WITHOUT ROWID""",
    "checkpoints": """(
    selection TEXT NOT NULL, path TEXT NOT NULL, size INTEGER NOT NULL, fingerprint TEXT NOT NULL,
    offset INTEGER NOT NULL, line INTEGER NOT NULL, complete INTEGER NOT NULL, updated TEXT NOT NULL,
    PRIMARY KEY (selection, path)
)""",
    "dead_letters": """(
    file TEXT NOT NULL, conversion TEXT NOT NULL, offset INTEGER NOT NULL, position INTEGER NOT NULL,
    PRIMARY KEY (file, conversion, offset, position)
) WITHOUT ROWID""",
    "destinations": """(
    target TEXT NOT NULL, url TEXT NOT NULL, since TEXT NOT NULL, PRIMARY KEY (target, url)
)""",
    "key_sources": """(
    target TEXT NOT NULL PRIMARY KEY, source TEXT NOT NULL, since TEXT NOT NULL
)""",
    "scope_sources": """(
    target TEXT NOT NULL, source TEXT NOT NULL, since TEXT NOT NULL, PRIMARY KEY (target, source)
)""",
    "api_key_digests": """(
    target TEXT NOT NULL, url TEXT NOT NULL, salt BLOB NOT NULL, digest BLOB NOT NULL, since TEXT NOT NULL,
    PRIMARY KEY (target, url)
)""",
}
_SCHEMA = "".join(f"CREATE TABLE IF NOT EXISTS {name} {columns};\n" for name, columns in _TABLES.items())
# Dead letters remembered per page of a re-read file: memory stays flat however many there are.
DEAD_LETTER_PAGE = 1000
# Claims a `KeyIndex` holds in memory (~22 MB with its buckets) before they move to disk.
INDEX_LIMIT = 1_000_000


class StateRefused(Exception):
    """A state file this run must not use: the message says why, and how to go on."""


class StateBusy(StateRefused):
    """Another run holds the state file."""


class OtherDestination(StateRefused):
    """The state's ledger holds deliveries to another platform or URL than this run's."""


class OtherKeySource(StateRefused):
    """The state's idempotency keys were made from other fields than this run's would be."""


class OtherScope(StateRefused):
    """The state's events were delivered under other subscriptions or codes (or customers and
    event types) than this run maps them to: what it calls missing may be there."""


class OtherApiKey(StateRefused):
    """The state's events were delivered with another API key: maybe another organization."""


class Claim(Enum):
    NEW = "new"
    DUPLICATE = "duplicate"  # the same key was sent (or is in flight) with the same time
    SHIFTED = "duplicate_shifted"  # the same key with another time: Lago's ClickHouse would count both
    RESEND = "resend"  # sent before without an answer: maybe stored, so never batched with new events


@dataclass(frozen=True)
class Checkpoint:
    offset: int
    line: int
    complete: bool


class Mode(Enum):
    """How a run uses its state: the one fact behind what it reads and what it writes back."""

    MEMORY = "memory"  # no --state: a ledger in memory, gone at the end of the run
    READ = "read"  # --state in a dry run: duplicates and checkpoints are read (the file read-only), nothing is written
    WRITE = "write"  # --state in a send: read, and written back


class State:
    def __init__(
        self,
        path: Path | None,
        target: str,
        *,
        read_only: bool = False,
        selection: str = "",
        url: str | None = None,
        key_source: str | None = None,
        scope_source: str | None = None,
        api_key: str | None = None,
        key_rotated: bool = False,
    ) -> None:
        """`read_only` (a dry run): duplicates and checkpoints are read, nothing is written, not
        even on a read-only mount (a missing file reads as empty, and is not created).
        `selection` names the checkpoints this run reads and writes; `url` is where it delivers
        and `api_key` with what (both None in a dry run); `key_source` what its idempotency keys
        are made from (`Mapping.key_source`), `scope_source` where its events are billed
        (`Mapping.scope_source`). A state that delivered elsewhere raises
        `OtherDestination`, one whose keys were made otherwise `OtherKeySource`, one whose
        events went with another API key `OtherApiKey`, unless `key_rotated`: then it remembers
        this key instead (as a salted digest: the key itself is never kept) once the platform
        accepts a request made with it (`key_accepted`)."""
        self.path = path
        self.target = target
        self.mode = Mode.MEMORY if path is None else Mode.READ if read_only else Mode.WRITE
        self.selection = selection
        self.url = url
        self.key_source = key_source
        self.scope_source = scope_source
        self._api_key: tuple[bytes, bytes] | None = None  # (salt, digest) of this run's key, if not remembered yet
        self.old_key_kept = False  # --key-rotated, and the platform has accepted no request with this run's key yet
        self._destination_kept = False
        kept = path if path is not None and (self.mode is Mode.WRITE or path.exists()) else None
        self._lock_fd = None if kept is None else _lock(kept, shared=self.mode is Mode.READ)
        try:
            self.db = _connect(kept, self.mode)
        except BaseException:
            self._unlock()
            raise
        try:
            self._check_destination()
            self.old_key_kept = self._check_keys(api_key, key_rotated)
        except BaseException:
            self._disconnect()
            raise
        self.db.execute("BEGIN")
        if self.mode is Mode.WRITE:
            self.db.execute("DELETE FROM ledger WHERE delivered = 0")  # claims of a run that died
        # A run that keeps nothing claims in memory, and reads the ledger only if it holds keys.
        self._index = None if self.mode is Mode.WRITE else KeyIndex(self.db)
        self._ledger_empty = self.db.execute("SELECT 1 FROM ledger WHERE target = ? LIMIT 1", (target,)).fetchone() is None
        self.checkpoints_changed: dict[str, tuple[Source, Checkpoint]] = {}
        self.resending: dict[str, int] = {}  # RESEND keys claimed by this run -> the request they were sent in
        self._requests: set[int] = set()  # the marks of this run's own requests (see `sending`)
        self._fingerprints: dict[Path, str] = {}  # per run: a file is hashed once, not per commit

    def _check_destination(self) -> None:
        """Refuse a state whose ledger was delivered to another platform or URL: its duplicates
        and checkpoints say nothing about this destination, and a mistyped --to or --api-url
        would otherwise send a whole backfill to the wrong place."""
        if self.mode is Mode.MEMORY:
            return
        rows = self.db.execute("SELECT target, url FROM destinations").fetchall()
        if not rows:  # a state from before destinations were kept: its ledger names the platform
            other = self.db.execute(
                "SELECT target FROM ledger WHERE target < ? OR target > ? LIMIT 1", (self.target, self.target)
            ).fetchone()
            rows = [(other[0], "")] if other else []
        for target, url in rows:
            if target != self.target or (self.url is not None and url and url != self.url):
                was = f"{target} at {url}" if url else target
                now = f"{self.target} at {self.url}" if self.url else self.target
                raise OtherDestination(
                    f"--state {self.path} holds deliveries to {was}; this run would send to {now}. "
                    "Use a new --state file for another destination (the platform ignores events it already holds)."
                )

    def _check_keys(self, api_key: str | None, key_rotated: bool) -> bool:
        """Refuse a state whose ledger holds keys made another way (every event it delivered
        would go again under a new key, billed twice), or delivered with another API key:
        another key may be another organization (Lago Cloud serves all at one URL), which holds
        none of these events, yet the ledger would skip them all. Returns whether the state is
        to remember this key instead of its own (`key_rotated`), once the platform accepts it
        (`key_accepted`). Only a digest of the key is kept (HMAC-SHA256 with a random salt, 64
        bits): it tells keys apart, and gives nothing to try guesses on beyond that."""
        if self.mode is Mode.MEMORY:
            return False
        if self.key_source is not None:
            row = self.db.execute("SELECT source FROM key_sources WHERE target = ?", (self.target,)).fetchone()
            if row is not None and row[0] != self.key_source:
                raise OtherKeySource(
                    f"--state {self.path} holds events whose idempotency keys were made from {described(row[0])}; "
                    f"this run's would be made from {described(self.key_source)}: every event the state delivered "
                    "would be sent again under a new key and billed twice. Map the id as before, or use a new --state file."
                )
        if api_key is None or self.url is None:
            return False
        row = self.db.execute(
            "SELECT salt, digest FROM api_key_digests WHERE target = ? AND url = ?", (self.target, self.url)
        ).fetchone()
        if row is not None and hmac.compare_digest(row[1], _api_key_digest(row[0], api_key)):
            return False
        if row is not None and not key_rotated:
            raise OtherApiKey(
                f"--state {self.path}: the API key differs from the one its events were delivered with. Another key "
                "may be another organization, which holds none of these events, yet all would be skipped as delivered. "
                "For another organization use a new --state file; if the key was only rotated for the same "
                "organization, pass --key-rotated (the state then remembers this key)."
            )
        salt = os.urandom(16)
        self._api_key = (salt, _api_key_digest(salt, api_key))
        return row is not None

    def key_accepted(self) -> None:
        """The platform accepted a request made with this run's key (a delivery, an event it
        held already, a read answered 2xx): now, and only now, a rotated key replaces the one
        remembered, as a new state adopts its first key with its first delivery. A key the
        platform refused (a typo passed with --key-rotated) leaves the state as it was."""
        if self.old_key_kept:
            self._keep_api_key(replace=True)
            self.old_key_kept = False

    def old_key_note(self) -> str | None:
        """What a --key-rotated run that ends with the old key still remembered says in its summary."""
        if not self.old_key_kept:
            return None
        return (
            f"--key-rotated: the platform accepted no request made with this API key, so --state {self.path} still "
            "remembers the old key; pass --key-rotated again on a run the platform answers (a send that delivers, or a reconcile)"
        )

    def _keep_api_key(self, *, replace: bool) -> None:
        """Remember (a digest of) this run's API key: `replace` the one remembered (the key was
        rotated), or adopt it if none is."""
        assert self._api_key is not None
        verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
        self.db.execute(
            f"{verb} INTO api_key_digests VALUES (?, ?, ?, ?, datetime('now'))", (self.target, self.url, *self._api_key)
        )

    def _fingerprint(self, path: Path) -> str:
        if path not in self._fingerprints:
            self._fingerprints[path] = fingerprint(path)
        return self._fingerprints[path]

    # -- the duplicate index -----------------------------------------------------------------

    def claim(
        self, keys: list[tuple[str, int]], outside: Collection[int] = (), scopes: Sequence[bytes | None] | None = None
    ) -> list[Claim]:
        """For each (key, millis): NEW (now claimed for this run) or why it must not be sent.
        `outside`: the positions of keys claimed for records outside the run's selection, never
        sent: such a key is never a RESEND (an earlier run's unanswered request is the business
        of the run that selects its records), and a later copy in the selection still may be.
        `scopes`: each event's scope and kind (`scope_digests`), kept with its claim, so that
        only a copy in the same ones is sent again if its request goes unanswered (`_repeat`);
        None where unknown (an event outside the selection, never sent)."""
        if scopes is None:
            scopes = [None] * len(keys)
        if self._index is not None:
            return self._claim_in_memory(keys, outside, scopes)
        if not RETURNING:
            return self._claim_in_two_steps(keys, outside, scopes)
        inserted: set[str] = set()
        target = self.target
        for start in range(0, len(keys), 300):  # one statement inserts up to 300 rows, each once
            chunk = keys[start : start + 300]
            values = ",".join(["(?, ?, ?, 0, ?)"] * len(chunk))
            params = [
                item
                for (key, millis), scope in zip(chunk, scopes[start : start + 300], strict=True)
                for item in (target, key, millis, scope)
            ]
            rows = self.db.execute(f"INSERT INTO ledger VALUES {values} ON CONFLICT DO NOTHING RETURNING key", params)
            inserted.update(row[0] for row in rows)
        if len(inserted) == len(keys):
            return [Claim.NEW] * len(keys)
        known = self._rows([key for key, _ in keys if key not in inserted])  # stored before
        verdicts = []
        for at, ((key, millis), scope) in enumerate(zip(keys, scopes, strict=True)):
            if key in inserted and key not in known:  # the first occurrence, inserted just now
                known[key] = (millis, 0, scope)
                verdicts.append(Claim.NEW)
            else:
                verdicts.append(self._repeat(key, millis, scope, *known[key], outside=at in outside))
        return verdicts

    def _repeat(
        self,
        key: str,
        millis: int,
        scope: bytes | None,
        known_millis: int,
        delivered: int,
        known_scope: bytes | None,
        *,
        outside: bool = False,
    ) -> Claim:
        """The verdict on a key the ledger holds: a repeat, unless an earlier run sent it and
        never heard back (the first time this run meets it in its selection) in the same scope
        and kind, where the platform absorbs it if the first request was stored. Elsewhere (a
        copy for another customer, a changed mapping) it would be a second event: a repeat, as
        in one run over everything. The event's other contents do not count (a resend with
        other properties is absorbed all the same). A row without a scope (a ledger from
        before they were kept) is resent on key and time alone. A key this run sent itself,
        still waiting for its answer, is a plain repeat."""
        if known_millis != millis:
            return Claim.SHIFTED
        if (
            delivered < 0
            and not outside
            and delivered not in self._requests
            and key not in self.resending
            and (known_scope is None or known_scope == scope)
        ):
            self.resending[key] = -delivered
            return Claim.RESEND
        return Claim.DUPLICATE

    def _rows(self, keys: list[str]) -> dict[str, tuple[int, int, bytes | None]]:
        """(millis, delivered, scope) of each of `keys` the ledger holds."""
        found: dict[str, tuple[int, int, bytes | None]] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(
                f"SELECT key, millis, delivered, scope FROM ledger WHERE target = ? AND key IN ({marks})", [self.target, *chunk]
            )
            found.update((key, (millis, delivered, scope)) for key, millis, delivered, scope in rows)
        return found

    def _claim_in_memory(
        self, keys: list[tuple[str, int]], outside: Collection[int], scopes: Sequence[bytes | None]
    ) -> list[Claim]:
        """`claim` for a run that keeps nothing: its claims are in the `KeyIndex`. A key it does
        not hold may be in the ledger (an earlier run's, read by a dry run): it is judged by the
        ledger's row, each time, and never claimed."""
        index = self._index
        assert index is not None
        hashes = _hashes([key for key, _ in keys])
        times = [millis for _, millis in keys]
        earlier = (
            {}
            if self._ledger_empty
            else self._rows([key for (key, _), held in zip(keys, index.holds(hashes), strict=False) if not held])
        )
        if not earlier:
            found = index.claim(hashes, times)
            if found.count(None) == len(found):  # the usual block: no repeat
                return [Claim.NEW] * len(found)
            return [_verdict(known, millis) for known, millis in zip(found, times, strict=False)]
        verdicts = []
        for at, ((key, millis), hashed, scope) in enumerate(zip(keys, hashes, scopes, strict=True)):
            if key in earlier:
                verdicts.append(self._repeat(key, millis, scope, *earlier[key], outside=at in outside))
            else:
                verdicts.append(_verdict(index.claim([hashed], [millis])[0], millis))
        return verdicts

    def _claim_in_two_steps(
        self, keys: list[tuple[str, int]], outside: Collection[int], scopes: Sequence[bytes | None]
    ) -> list[Claim]:
        """`claim` for SQLite before 3.35 (no RETURNING): look the keys up, then insert the new."""
        found = self._rows([key for key, _ in keys])
        verdicts = []
        new = []
        for at, ((key, millis), scope) in enumerate(zip(keys, scopes, strict=True)):
            known = found.get(key)
            if known is None:
                found[key] = (millis, 0, scope)
                new.append((self.target, key, millis, scope))
                verdicts.append(Claim.NEW)
            else:
                verdicts.append(self._repeat(key, millis, scope, *known, outside=at in outside))
        if new:
            self.db.executemany("INSERT INTO ledger VALUES (?, ?, ?, 0, ?)", new)
        return verdicts

    def sending(self, keys: list[str]) -> None:
        """Mark keys as sent together in one request, durably, before it leaves. If its answer
        never comes (a kill, a lost answer, a stop), they may be stored: a later run resends
        them together, never beside new events, because a Lago before v1.39 refusing a batch
        for a duplicate still stores its other events (without their fees or wallet updates).
        Each row keeps the scope and kind its claim gave it (`claim`): a later copy elsewhere
        is not resent (`_repeat`)."""
        if self.mode is not Mode.WRITE:
            return
        request = -random.getrandbits(62) - 1
        self._requests.add(request)
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            self.db.execute(
                f"UPDATE ledger SET delivered = ? WHERE target = ? AND key IN ({marks}) AND delivered <> 1",
                [request, self.target, *chunk],
            )
        self.commit()

    def delivered(self, keys: list[str]) -> None:
        if self.mode is not Mode.WRITE:  # a claim is only ever released if undelivered: no mark needed
            return
        if self.url is not None and keys and not self._destination_kept:
            self._keep_destination()
        self.db.executemany(
            "UPDATE ledger SET delivered = 1, scope = NULL WHERE target = ? AND key = ?", [(self.target, key) for key in keys]
        )

    def _keep_destination(self) -> None:
        """With its first delivery, the state adopts this run's destination, key source and API
        key (a state from before they were kept too; a rotated key replaces the old one): from
        then on it holds for no other. It adds this run's scope source to those it delivered with."""
        self.db.execute("INSERT OR IGNORE INTO destinations VALUES (?, ?, datetime('now'))", (self.target, self.url))
        if self.key_source is not None:
            self.db.execute("INSERT OR IGNORE INTO key_sources VALUES (?, ?, datetime('now'))", (self.target, self.key_source))
        if self.scope_source is not None:
            self.db.execute(
                "INSERT OR IGNORE INTO scope_sources VALUES (?, ?, datetime('now'))", (self.target, self.scope_source)
            )
        if self.old_key_kept:
            self.key_accepted()
        elif self._api_key is not None:
            self._keep_api_key(replace=False)
        self._destination_kept = True

    def release(self, keys: list[str], *, refused: bool = False) -> None:
        """Keys that were not delivered: a repeat, a rerun or a replay may send them again. Keys
        sent without an answer stay marked as such, unless the platform `refused` them."""
        if self._index is not None:  # all of this run's claims, and only those, are in the index
            self._index.remove(_hashes(keys))
            return
        kept = "delivered <> 1" if refused else "delivered = 0"
        self.db.executemany(f"DELETE FROM ledger WHERE target = ? AND key = ? AND {kept}", [(self.target, key) for key in keys])

    def forget(self, keys: list[tuple[str, int]]) -> int:
        """(key, millis) the platform answered 200 for and does not hold (reconcile found them
        missing): no longer delivered, so a replay sends them. A key delivered with another
        event time stays: the platform may hold it at that time. Once one is forgotten, no
        checkpoint (of any selection: the send may have used other options) says a file is
        finished, so the next send reads them again, and the ledger lets only the forgotten
        through. Returns how many were forgotten. A dry run reads past them instead (see
        `_read_without_writing`). Raises `OtherScope` unless this run maps scope and kind as
        every delivery of the state did (see `forgetting_refused`)."""
        refused = self.forgetting_refused()
        if refused is not None:
            raise OtherScope(refused)
        rows = [(self.target, key, millis) for key, millis in keys]
        if self.mode is Mode.READ:
            return self.db.executemany(
                "INSERT OR IGNORE INTO forgotten SELECT target, key FROM ledger"
                " WHERE target = ? AND key = ? AND millis = ? AND delivered = 1",
                rows,
            ).rowcount
        forgotten = self.db.executemany(
            "DELETE FROM ledger WHERE target = ? AND key = ? AND millis = ? AND delivered = 1", rows
        ).rowcount
        if forgotten:
            self.db.execute("DELETE FROM checkpoints")
        return forgotten

    def forgetting_refused(self) -> str | None:
        """Why this run may not forget (`forget`) what it does not find, if it may not: the
        state delivered with another mapping of scope and kind (`Mapping.scope_source`), under
        which the events it looks for may be on the platform, and a replay would bill them twice."""
        if self.mode is Mode.MEMORY or self.scope_source is None:
            return None
        rows = self.db.execute("SELECT source FROM scope_sources WHERE target = ? ORDER BY rowid", (self.target,))
        kept = [source for (source,) in rows]
        if kept in ([], [self.scope_source]):
            return None
        reading = get_target(self.target).reading
        names = ("customer", "event") if reading is None else reading.names
        mappings = " and ".join(f"({described_scope(source, names)})" for source in kept)
        how = (
            "reconcile and replay with the send's options (--customer-from, --config)"
            if len(kept) == 1
            else "no one mapping finds them all: reconcile without --state, and replay nothing it calls missing without "
            "checking where the other mappings put it"
        )
        return (
            f"--state {self.path} delivered its events with {'several mappings, ' if len(kept) > 1 else ''}{mappings}; "
            f"this run maps ({described_scope(self.scope_source, names)}): an event it calls missing may be on the "
            f"platform under another {names[0]} or {names[1]}, and a replay would bill it twice. Nothing was changed: {how}."
        )

    def unanswered(self) -> set[tuple[str, int]]:
        """(key, millis) of the events earlier runs sent without hearing back (see `sending`):
        few, as only the requests in flight when a run stopped leave them."""
        rows = self.db.execute("SELECT key, millis FROM ledger WHERE target = ? AND delivered < 0", (self.target,))
        return {(key, millis) for key, millis in rows}

    def confirm(self, keys: list[tuple[str, int]]) -> int:
        """(key, millis) sent without an answer that reconcile found on the platform: delivered,
        so a later send does not send them again (on Lago's ClickHouse store without query-time
        deduplication, a resend counts twice until a merge). Returns how many."""
        rows = [(self.target, key, millis) for key, millis in keys]
        return self.db.executemany(
            "UPDATE ledger SET delivered = 1, scope = NULL WHERE target = ? AND key = ? AND millis = ? AND delivered < 0", rows
        ).rowcount

    # -- checkpoints -----------------------------------------------------------------------------

    def checkpoint(self, source: Source) -> Checkpoint | None:
        """Where to resume `source`, if it is the same file (path, size, first bytes) as before.
        A stream has none: reading its first bytes to compare would take them from the run."""
        if source.path is None or source.is_stream or self.mode is Mode.MEMORY:
            return None
        row = self.db.execute(
            "SELECT size, fingerprint, offset, line, complete FROM checkpoints WHERE selection = ? AND path = ?",
            (self.selection, _key(source)),
        ).fetchone()
        if row is None or row[0] != source.size or row[1] != self._fingerprint(source.path):
            return None
        return Checkpoint(row[2], row[3], bool(row[4]))

    def set_checkpoint(self, source: Source, checkpoint: Checkpoint) -> None:
        if source.path is not None and not source.is_stream and self.mode is not Mode.MEMORY:
            self.checkpoints_changed[_key(source)] = (source, checkpoint)

    # -- dead letters ------------------------------------------------------------------------------

    def file_identity(self, source: Source) -> str | None:
        """Names one version of a file (path, size, first bytes), for its dead letters; a
        stream has no version to name."""
        if source.path is None or source.is_stream or self.mode is Mode.MEMORY:
            return None
        text = f"{_key(source)}\0{source.size}\0{self._fingerprint(source.path)}"
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]

    def dead_lettered(self, file: str, conversion: str, record: Record) -> None:
        """Remember a record written to the dead-letter file, kept with the next checkpoint."""
        if self.mode is Mode.WRITE:
            self.db.execute(
                "INSERT OR IGNORE INTO dead_letters VALUES (?, ?, ?, ?)",
                (file, conversion, record.offset, -1 if record.index is None else record.index),
            )

    def earlier_dead_letters(self, file: str, conversions: tuple[str, ...], offset: int) -> Iterator[tuple[int, int]]:
        """(line offset, position in the line; -1 for a line of one message) of the records of
        `file` at or past `offset` that an earlier run dead-lettered, in order, a page at a time."""
        marks = ",".join("?" * len(conversions))
        after = (offset, -2)
        while True:
            rows = self.db.execute(
                f"SELECT DISTINCT offset, position FROM dead_letters WHERE file = ? AND conversion IN ({marks}) "
                "AND (offset, position) > (?, ?) ORDER BY offset, position LIMIT ?",
                (file, *conversions, *after, DEAD_LETTER_PAGE),
            ).fetchall()
            yield from rows
            if len(rows) < DEAD_LETTER_PAGE:
                return
            after = rows[-1]

    def commit(self) -> None:
        """Make the ledger and the checkpoints durable together (a dry run keeps nothing, nor
        does a run without --state)."""
        if self.mode is not Mode.WRITE:
            return
        for key, (source, checkpoint) in self.checkpoints_changed.items():
            assert source.path is not None
            self.db.execute(
                "INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?, ?, ?, ?, datetime('now'))",
                (
                    self.selection,
                    key,
                    source.size,
                    self._fingerprint(source.path),
                    checkpoint.offset,
                    checkpoint.line,
                    int(checkpoint.complete),
                ),
            )
        self.checkpoints_changed.clear()
        self.db.execute("COMMIT")
        self.db.execute("BEGIN")

    def forget_checkpoints(self) -> None:
        """This run's selection finished nothing worth resuming from (it selected no event): a
        rerun reads its files again rather than skipping them as done."""
        self.checkpoints_changed.clear()
        if self.mode is Mode.WRITE:
            self.db.execute("DELETE FROM checkpoints WHERE selection = ?", (self.selection,))

    def close(self, *, save: bool = True) -> None:
        """Save (not after a failed write: SQLite may have rolled part of it back) and let go of
        the file; the lock is released even when saving fails (a full disk)."""
        try:
            if self.mode is not Mode.WRITE or not save:  # nothing to keep (a temporary file goes with the connection)
                self.db.rollback()
            else:
                self.db.execute("DELETE FROM ledger WHERE delivered = 0")
                self.commit()
                self.db.execute("COMMIT")
        finally:
            self._disconnect()

    def _disconnect(self) -> None:
        """Close the database and drop the lock, so another run (or another try) may use the file."""
        self.db.close()
        self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


class KeyIndex:
    """A run's claims: each key as a 94-bit hash (BLAKE2s) with its exact event time, packed 16
    bytes an entry in 16,384 buckets (14 bits of the hash pick one; a hit is found with one
    `bytearray.find`). Two distinct keys share a hash with probability under n^2 / 2^95: 2.5e-17
    for a million keys, 2.5e-11 for a billion. Past `INDEX_LIMIT` entries, they all move to a
    temporary table (the connection's temp store), where later misses are looked up."""

    _BUCKETS = 1 << 14
    # The hash's bytes 2-11 (80 bits), then the event time: 6 bytes, as segbill's times are
    # 0 <= ms < 2^48 (segment.parse_time).
    _ENTRY = 16

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._buckets = [bytearray() for _ in range(self._BUCKETS)]
        self._size = 0
        self._spilled = False

    def claim(self, hashes: list[bytes], times: list[int]) -> list[int | None]:
        """For each hash: the event time it was claimed with before, or None: claimed now, with its time."""
        if self._size >= INDEX_LIMIT:
            self._spill()
        buckets, entry = self._buckets, self._ENTRY
        spilled = self._on_disk(hashes) if self._spilled else {}
        found: list[int | None] = []
        append = found.append
        for hashed, millis in zip(hashes, times, strict=False):
            bucket = buckets[(hashed[0] << 6) | (hashed[1] >> 2)]
            tail = hashed[2:12]
            at = bucket.find(tail)  # `_find`, inlined: one call less for the usual miss
            if at > 0 and at % entry:
                at = _find(bucket, tail, entry)
            if at >= 0:
                append(int.from_bytes(bucket[at + 10 : at + entry], "little"))
            elif hashed in spilled:
                append(spilled[hashed])
            else:
                bucket += tail + millis.to_bytes(6, "little")
                append(None)
        self._size += found.count(None)
        return found

    def holds(self, hashes: list[bytes]) -> list[bool]:
        """Whether each hash is claimed (without claiming it)."""
        buckets, entry = self._buckets, self._ENTRY
        spilled = self._on_disk(hashes) if self._spilled else {}
        return [
            _find(buckets[(hashed[0] << 6) | (hashed[1] >> 2)], hashed[2:12], entry) >= 0 or hashed in spilled
            for hashed in hashes
        ]

    def remove(self, hashes: list[bytes]) -> None:
        for hashed in hashes:
            bucket = self._buckets[(hashed[0] << 6) | (hashed[1] >> 2)]
            at = _find(bucket, hashed[2:12], self._ENTRY)
            if at >= 0:
                del bucket[at : at + self._ENTRY]
                self._size -= 1
        if self._spilled:
            self._db.executemany("DELETE FROM temp.claims WHERE hash = ?", [(_on_disk(hashed),) for hashed in hashes])

    def _on_disk(self, hashes: list[bytes]) -> dict[bytes, int]:
        """The event times of those of `hashes` that moved to the temporary table."""
        spilled: dict[bytes, int] = {}
        for start in range(0, len(hashes), 500):
            chunk = hashes[start : start + 500]
            stored = {_on_disk(hashed): hashed for hashed in chunk}
            marks = ",".join("?" * len(stored))
            rows = self._db.execute(f"SELECT hash, millis FROM temp.claims WHERE hash IN ({marks})", list(stored))
            spilled.update((stored[key], millis) for key, millis in rows)
        return spilled

    def _spill(self) -> None:
        """Move every entry to the temporary table: memory stays flat however many keys a run claims."""
        self._db.execute("CREATE TEMP TABLE IF NOT EXISTS claims (hash BLOB PRIMARY KEY, millis INTEGER NOT NULL) WITHOUT ROWID")
        entry = self._ENTRY
        for index, bucket in enumerate(self._buckets):
            head = index.to_bytes(2, "big")
            self._db.executemany(
                "INSERT INTO temp.claims VALUES (?, ?)",
                [
                    (head + bucket[at : at + 10], int.from_bytes(bucket[at + 10 : at + entry], "little"))
                    for at in range(0, len(bucket), entry)
                ],
            )
        self._buckets = [bytearray() for _ in range(self._BUCKETS)]
        self._size = 0
        self._spilled = True


def _on_disk(hashed: bytes) -> bytes:
    """How the temporary table names a hash: its bucket (2 bytes), then the bytes an entry holds."""
    return ((hashed[0] << 6) | (hashed[1] >> 2)).to_bytes(2, "big") + hashed[2:12]


def _hashes(keys: list[str]) -> list[bytes]:
    """Each key's BLAKE2s digest, of which the index keeps 94 bits (its first 12 bytes): the
    default size, as a `digest_size` argument costs a third of the call."""
    blake2s = hashlib.blake2s
    return [blake2s(key.encode("utf-8", "surrogatepass")).digest() for key in keys]


def _verdict(known: int | None, millis: int) -> Claim:
    """A key's verdict from the event time this run claimed it with (None: claimed just now)."""
    return Claim.NEW if known is None else Claim.DUPLICATE if known == millis else Claim.SHIFTED


def _find(bucket: bytearray, tail: bytes, entry: int) -> int:
    """Where `tail` starts an entry of `bucket`, or -1."""
    at = bucket.find(tail)
    while at >= 0 and at % entry:  # a match across two entries is none
        at = bucket.find(tail, at + 1)
    return at


def scope_digests(target: Target) -> Callable[[dict[str, Any]], bytes] | None:
    """How the ledger names the scope and kind of a converted event (`Reading.place`: Lago's
    subscription and code, Hyperline's customer and event type): 8 bytes of a BLAKE2s digest,
    two distinct pairs alike with probability 2^-64. None for a platform with no `Reading`."""
    reading = target.reading
    if reading is None:
        return None
    scope_field, kind_field = reading.scope, reading.kind
    blake2s = hashlib.blake2s

    def digest(event: dict[str, Any]) -> bytes:
        scope = str(event[scope_field])
        return blake2s(f"{len(scope)}:{scope}{event[kind_field]}".encode("utf-8", "surrogatepass")).digest()[:8]

    return digest


def _connect(path: Path | None, mode: Mode) -> sqlite3.Connection:
    """The state's database as `mode` uses it; with no file (no --state, or a dry run's state
    that does not exist yet), an empty one of the run's own."""
    if path is not None and mode is Mode.READ:
        db = _read_only(path)
    else:
        db = sqlite3.connect("" if path is None else str(path), isolation_level=None)
    try:
        db.execute("PRAGMA cache_size=-16000")  # 16 MB, whatever the number of keys
        if path is None:
            db.execute("PRAGMA journal_mode=OFF")
            db.execute("PRAGMA synchronous=OFF")
        elif mode is Mode.WRITE:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            if _unselected_checkpoints(db):
                db.execute("DROP TABLE checkpoints")
        if path is None or mode is Mode.WRITE:
            db.executescript(_SCHEMA)
            if not _ledger_keeps_scopes(db):
                db.execute("ALTER TABLE ledger ADD COLUMN scope BLOB")
        if mode is Mode.READ:
            _read_without_writing(db)
    except BaseException:
        db.close()
        raise
    return db


def _read_only(path: Path) -> sqlite3.Connection:
    """The state file opened read-only, as the runs before left it. With no -wal file, all of it
    is in the file, and the lock keeps every send out: it is read as immutable, which needs no
    -shm file either (a read-only mount has none). A -wal file is what a killed run committed:
    it is read too, which needs its -shm file, or the right to create it."""
    wal = path.with_name(path.name + "-wal")
    left = wal.exists() and wal.stat().st_size > 0
    uri = path.absolute().as_uri() + ("?mode=ro" if left else "?mode=ro&immutable=1")
    db = sqlite3.connect(uri, uri=True, isolation_level=None)
    try:
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError as error:
        db.close()
        if left:
            raise StateRefused(
                f"--state {path}: a run that was killed left changes in {wal.name}, which a dry run cannot read "
                f"without writing beside it ({error}): run the send (it takes them in), or preview a copy of the "
                "state and its -wal file where it can write."
            ) from None
        raise
    return db


def _read_without_writing(db: sqlite3.Connection) -> None:
    """A dry run's view of the state, in the connection's temporary schema (found before the
    file's): tables an older state lacks are there empty, and the ledger is read without the
    claims of a run that died (a send deletes them first) nor the keys this run's replay of
    `--missing` entries takes out (`forget`)."""
    present = {name for (name,) in db.execute("SELECT name FROM main.sqlite_master WHERE type = 'table'")}
    if _unselected_checkpoints(db):
        present.discard("checkpoints")  # a send drops them: read none
    for name, columns in _TABLES.items():
        if name not in present:
            db.execute(f"CREATE TEMP TABLE {name} {columns}")
    db.execute("CREATE TEMP TABLE forgotten (target TEXT NOT NULL, key TEXT NOT NULL, PRIMARY KEY (target, key)) WITHOUT ROWID")
    if "ledger" in present:
        read = "*" if _ledger_keeps_scopes(db) else "*, NULL AS scope"  # a send adds the column, empty
        db.execute(
            f"CREATE TEMP VIEW ledger AS SELECT {read} FROM main.ledger AS row WHERE delivered <> 0 AND NOT EXISTS "
            "(SELECT 1 FROM forgotten WHERE forgotten.target = row.target AND forgotten.key = row.key)"
        )


def _ledger_keeps_scopes(db: sqlite3.Connection) -> bool:
    """Whether the ledger has its `scope` column: a state from before scopes were kept has not."""
    return any(row[1] == "scope" for row in db.execute("PRAGMA main.table_info(ledger)"))


def _unselected_checkpoints(db: sqlite3.Connection) -> bool:
    """Checkpoints of segbill 0.1 do not say which selection made them: they are dropped, so the
    files are read again (the ledger still stops every delivered event)."""
    columns = [row[1] for row in db.execute("PRAGMA main.table_info(checkpoints)")]
    return bool(columns) and "selection" not in columns


def _api_key_digest(salt: bytes, api_key: str) -> bytes:
    return hmac.new(salt, api_key.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()[:8]


def _key(source: Source) -> str:
    assert source.path is not None
    return str(source.path.resolve())


def fingerprint(path: Path) -> str:
    """A hash of the file's first bytes: a different file at the same path is not resumed."""
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read(FINGERPRINT_BYTES)).hexdigest()


def _lock(path: Path, *, shared: bool = False) -> int:
    """An exclusive flock on the state file, held for the run; the kernel drops it if we die.
    A dry run's is `shared`: it opens the file only to read, and dry runs may overlap, but
    never a send, so what it reads does not change under it."""
    fd = os.open(path, os.O_RDONLY) if shared else os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StateBusy(f"another segbill run is using {path}; runs on one --state cannot overlap.") from None
    return fd


class Frontier:
    """How far one source is finished: records are held from reading until their outcome is
    final; the checkpoint is the start of the first line still holding one."""

    def __init__(self, start: Checkpoint | None) -> None:
        self._held: OrderedDict[int, list[int]] = OrderedDict()  # line offset -> [line number, records held]
        self._last = (start.offset, start.line) if start else (0, 0)
        self.read_all = False

    def hold(self, record: Record) -> None:
        origin = record.origin
        entry = self._held.get(origin.offset)
        if entry is None:
            self._held[origin.offset] = [origin.line, 1]
        else:
            entry[1] += 1
        if origin.end >= self._last[0]:
            self._last = (origin.end, origin.line)

    @property
    def lines_held(self) -> int:
        """Lines with a record whose outcome is not final yet (or behind one): what memory holds."""
        return len(self._held)

    def release(self, record: Record) -> None:
        entry = self._held[record.origin.offset]
        entry[1] -= 1
        if entry[1] == 0:
            self._trim()  # finished lines leave at once: memory stays flat, checkpoint or not

    def _trim(self) -> None:
        # The line read last stays until a later one is read (or the whole source): a line
        # holding several messages gives them one by one, so its first may be finished (a
        # repeat) while the rest are unread; a checkpoint past it would lose them.
        held = self._held
        keep = 0 if self.read_all else 1
        while len(held) > keep and next(iter(held.values()))[1] == 0:
            held.popitem(last=False)

    def position(self) -> Checkpoint:
        self._trim()
        if self._held:
            offset, (line, _) = next(iter(self._held.items()))
            return Checkpoint(offset, line - 1, False)
        return Checkpoint(self._last[0], self._last[1], self.read_all)

"""The replay core, usable without the CLI: sources -> records -> blocks of claimed events, and
their outcomes -> the ledger, the checkpoints and the summary.

Every record read leaves here either in a block of converted events (for the run loop,
`segbill.runner`, to hand to a sink) or with its final outcome already counted (skipped or
dead-lettered). The summary counts (`Tally`) are changed here alone.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeAlias, TypeVar

import orjson

from segbill.deadletter import DEFAULT_PATH, ENTRIES, MISSING_MARKER, DeadLetterFile, DeadLetterWriteError, is_entry
from segbill.decode import Decoded, block_decoder
from segbill.mapping import Mapping, Skipped
from segbill.report import Tally
from segbill.segment import (
    Billable,
    InexactNumber,
    Invalid,
    Record,
    dumps,
    exact_message,
    parsed_exactly,
)
from segbill.sink import Item
from segbill.sources import Source, SourceUnreadable, read_lines, read_records
from segbill.state import Checkpoint, Claim, Frontier, Mode, OtherScope, State, scope_digests
from segbill.targets import Target

TOO_DEEP = "The message nests objects or lists too deep to convert (about a thousand levels)."
# Past this many, bad input lines are counted and dead-lettered without a line each on stderr.
MAX_WARNINGS = 20
# Converted events are checked against the duplicate index this many at a time (one per event
# on stdin, so that a slow pipe still flows).
CLAIM_CHUNK = 256
# Why a record is skipped when it is not for its message type (every other reason is a type).
VERDICTS = frozenset(
    {"not_included", "excluded", "other_shard", "before_since", "after_until", "dead_lettered_before"}
    | {claim.value for claim in Claim}
)
OTHER_SCOPE = (
    "reconcile found it missing where this run's mapping puts it, but {state} delivered with another mapping of "
    "customers or event codes (--customer-from, --config): it may be on the platform there, and sending it would "
    "bill it twice; not sent"
)
# What stops a run on storage: a full disk or a lost volume under its dead letters or its state,
# or an input that can no longer be opened.
STORAGE_ERRORS = (DeadLetterWriteError, sqlite3.Error, SourceUnreadable)

# A converted event: the platform's event as a dict, or as the exact bytes a worker process
# (`segbill.parallel`) serialized it to.
Event: TypeAlias = dict[str, Any] | bytes
# A claimed event: (record, converted event, idempotency key, sent in): `sent in` names the
# request an earlier run sent it in without an answer (see `State.sending`), else None.
Claimed: TypeAlias = tuple[Record, Event, str, int | None]
# What a record read becomes (`Conversion.results`): (record, event, event time, its key and
# its scope digest (`scope_digests`), or None: read from the event when claimed); for an event
# the run's selection (--since/--until, --shard) leaves out, (record, the reason it is skipped,
# event time, its key, None): it still claims its key, never sent; or (record, outcome): a
# `str`, the reason it is skipped, or an `Invalid`, why it is dead-lettered.
Converted: TypeAlias = tuple[Record, Event, int, str | None, bytes | None]
Unselected: TypeAlias = tuple[Record, str, int, str, None]
Result: TypeAlias = Converted | Unselected | tuple[Record, str | Invalid]
T = TypeVar("T")


class Reading(Protocol):
    """What the run loop wraps around what is read from stdin (its signal handling)."""

    def __call__(self, read: Iterator[T]) -> Iterator[T]: ...


@dataclass
class Options:
    sources: list[Source]
    target: Target
    mapping: Mapping = field(default_factory=Mapping)
    dead_letter: Path | None = field(default_factory=lambda: Path(DEFAULT_PATH))  # None: counted, not written
    dry_run: bool = False
    state: Path | None = None
    since: int | None = None  # event time bounds in ms: since <= time < until
    until: int | None = None
    shard: tuple[int, int] | None = None  # (K, N): this run bills the customers of shard K of N
    url: str | None = None  # where the events go; None in a dry run
    jobs: int = 1  # processes converting files at once (`segbill.parallel`); 1: this one alone

    def conversion(self) -> str:
        """Names how records become events (platform and mapping): a record dead-lettered under
        one conversion is dead-lettered under it again, so a later pass does not write it twice."""
        return _digest(self.target.name, self.mapping.canonical())

    def selection(self) -> str:
        """Names which records a run bills and how: each selection has its own checkpoints."""
        return _digest(self.conversion(), repr((self.since, self.until, self.shard)))

    def partial(self) -> bool:
        """Whether --since/--until or --shard leave events out. Such a run still claims their
        keys (`Conversion._selected`), so it reads every record, every time: a resume would not
        claim the keys of the records before its checkpoint, and could send a repeat of one."""
        return self.since is not None or self.until is not None or self.shard is not None


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:32]


def position_of(start: Checkpoint | None) -> dict[str, int]:
    """Where reading a source starts, as `read_lines` takes it."""
    return {"offset": start.offset, "line": start.line} if start else {}


def _written_by(record: Record, shards: int) -> int | None:
    """The shard (of `shards`) whose run dead-lettered a record read back from its entry: it
    stays that shard's, even when a fix gave it another customer. None: judge it afresh."""
    written = record.shard
    return written[0] if written is not None and written[1] == shards else None


def shard_of(customer: str, shards: int) -> int:
    """A stable split by customer id, the same on every machine and Python version."""
    digest = hashlib.blake2b(customer.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


class Conversion:
    """Records read -> what each becomes (`Result`), changing nothing of the run: the same in
    the run's process and in a worker process (`segbill.parallel`). It counts what the time
    window left out; the mapping notes which of its rules matched (`Mapping.hits`)."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self._quick = options.mapping.fast_billable()
        self._decoder = block_decoder(options.mapping, options.target, self._quick, _event)
        # Events the time window left out, and whether one was in it, whichever shard bills them.
        self.outside_window = 0
        self.inside_window = False

    def results(self, source: Source, progress: Callable[[int], None] | None, position: dict[str, int]) -> Iterator[Result]:
        """What each record of `source` becomes, read from `position` (offset and line) on."""
        take = self._take
        if self._decoder is None:
            for record in read_records(source, progress, **position):
                yield take(record)
            return
        take_decoded = self._take_decoded
        for record, decoded in self._decoder.records(read_lines(source, progress, **position), source.name):
            yield take(record) if decoded is None else take_decoded(record, decoded)

    def _take_decoded(self, record: Record, decoded: Decoded) -> Result:
        """`_take` for a record the decoder converted or gave its outcome."""
        if type(decoded) is tuple:
            fields, event = decoded
            return self._selected(record, fields, event)
        if isinstance(decoded, Skipped):
            return record, decoded.reason
        return record, self._not_billable(decoded)

    def _take(self, record: Record) -> Result:
        """A record read -> (record, converted event, event time, None), or its outcome."""
        message = record.message
        if message is None:
            return record, self._unbillable(record, record.invalid)  # type: ignore[arg-type]
        options = self.options
        try:
            fields = self._quick(message) if self._quick is not None else None
            if fields is not None:
                try:
                    event = _event(fields, message, options.target, options.mapping)
                except InexactNumber:
                    fields = None  # the general path parses the line again, exactly
            if fields is None:
                name = options.mapping.select(message)
                if name is None:
                    return record, self._not_billable(message.get("type"))
                fields, event = to_event(record, message, name, options.target, options.mapping)
        except Skipped as skipped:
            return record, skipped.reason
        except Invalid as invalid:
            return record, self._unbillable(record, invalid)
        except RecursionError:  # objects nested about a thousand deep: one record, not the run
            return record, self._unbillable(record, Invalid("too_deep", TOO_DEEP))
        return self._selected(record, fields, event)

    def _selected(self, record: Record, fields: Billable, event: dict[str, Any]) -> Result:
        """The event, if the run's shard and time bounds take it; if not, why it is skipped, with
        its key: every event claims its key in input order, whatever the selection, so each
        window and each shard agrees with one run over everything on which copy of a repeated
        message is the first (the N shards, or consecutive windows, bill each key once). The
        window is judged for every event, so every shard knows whether it left out all of them."""
        since, until, shard = self.options.since, self.options.until, self.options.shard
        millis = fields.millis
        early = since is not None and millis < since
        late = until is not None and millis >= until
        if early or late:
            self.outside_window += 1
        else:
            self.inside_window = True
        if shard is not None:
            owner = _written_by(record, shard[1])
            if (shard_of(fields.customer, shard[1]) if owner is None else owner) != shard[0]:
                return record, "other_shard", millis, self.options.target.key(event), None
        if early or late:
            return record, "before_since" if early else "after_until", millis, self.options.target.key(event), None
        return record, event, millis, None, None

    def _not_billable(self, kind: Any) -> str | Invalid:
        if self.options.shard is not None and self.options.shard[0] != 0:
            return "other_shard"
        if isinstance(kind, str) and kind:
            return kind
        return Invalid("missing_type", 'The message has no "type" (track, identify, page, ...).')

    def _unbillable(self, record: Record, invalid: Invalid) -> str | Invalid:
        """A record that can never be billed belongs to shard 0 alone, so shards do not repeat it."""
        shard = self.options.shard
        return "other_shard" if shard is not None and (_written_by(record, shard[1]) or 0) != shard[0] else invalid


class Replay:
    """Reads every source once and gives each record its outcome or its converted event.

    Records are held by their source's `Frontier` from reading until their outcome is final, so a
    checkpoint never passes a record whose fate is unknown.
    """

    def __init__(
        self,
        options: Options,
        warn: Callable[[str], None] | None = None,
        *,
        keep_lines: bool = True,
        api_key: str | None = None,
        key_rotated: bool = False,
    ) -> None:
        """`keep_lines`: whether an event's record keeps its line, for a sink that may refuse it
        (its dead letter holds the line) or a reader that writes it (reconcile's --missing). A
        dry run and check need not: worker processes (`--jobs`) then do not hand lines back.
        `api_key`: the key a send delivers with, which its state remembers (a digest of it), or
        `key_rotated` replaces there (see `State`); kept out of `options`, which workers receive."""
        self.options = options
        self._keep_lines = keep_lines
        self.tally = Tally(target=options.target.name, dry_run=options.dry_run)
        self.dead_letters = (
            None
            if options.dead_letter is None
            else DeadLetterFile(options.dead_letter, options.target.name, dry_run=options.dry_run, shard=options.shard)
        )
        self._conversion_digest = options.conversion()
        self.state = State(
            options.state,
            options.target.name,
            read_only=options.dry_run,
            selection=options.selection(),
            url=options.url,
            key_source=options.mapping.key_source(),
            scope_source=options.mapping.scope_source(),
            api_key=api_key,
            key_rotated=key_rotated,
        )
        self.tally.state_file = None if options.state is None else str(options.state)
        self._files: dict[str, str] = {}  # source name -> file identity, for its dead letters
        self._warn = warn
        self._warnings = 0
        self.failure: str | None = None  # why a dead-letter or state write failed, if one did
        self._frontiers: dict[str, tuple[Source, Frontier]] = {}
        self._pending: deque[Converted | Unselected] = deque()
        self._fresh: list[Claimed] = []  # claimed, not yet handed out
        self.conversion = Conversion(options)
        # Checkpoints exist only when the state is kept, and for a selection that resumes (see
        # `Options.partial`): only then is each record held until its outcome is final.
        self._partial = options.partial()
        self._tracking = self.state.mode is Mode.WRITE and not self._partial
        # The ledger keeps each event's scope and kind, to resend only in the same (a run that
        # keeps nothing holds no earlier run's requests: it needs none).
        self._scope_of = None if self.state.mode is Mode.MEMORY else scope_digests(options.target)
        self._refuses_forgetting = self._may_not_forget()

    def _may_not_forget(self) -> bool:
        """Whether the state refuses to forget the events reconcile found missing
        (`State.forgetting_refused`). Then a file this run reads (not one its checkpoints say is
        finished) that is reconcile's --missing is refused before anything is sent; an entry
        anywhere else (a stream, a file of other lines first) is dead-lettered (`_claimed`)."""
        refused = self.state.forgetting_refused()
        if refused is not None and any(_replays_missing(source) for source in self._unfinished()):
            self.state.close(save=False)
            raise OtherScope(refused)
        return refused is not None

    def _unfinished(self) -> Iterator[Source]:
        """The files this run reads: those its checkpoints do not say are finished."""
        for source in self.options.sources:
            if source.is_stream:
                continue
            start = self._start(source)
            if start is None or not start.complete:
                yield source

    def _start(self, source: Source) -> Checkpoint | None:
        """Where this run resumes `source`: a partial selection (`Options.partial`) reads every
        file from its start."""
        return None if self._partial else self.state.checkpoint(source)

    def blocks(
        self, on_progress: Callable[[str, int], None] | None = None, reading: Reading | None = None
    ) -> Generator[list[Claimed]]:
        """Claimed events in input order, a block at a time (`CLAIM_CHUNK` of them; one by one
        from stdin, so a slow pipe still flows; at least one block, maybe empty, every
        `4 * CLAIM_CHUNK` records read), each new to the ledger or sent before without an
        answer. The caller owns a block's outcomes once it takes it (`delivered`, `rejected`,
        `not_attempted`). `reading` wraps a stream's records (a read there may wait for ever).
        A partial selection (`Options.partial`) reads every file from its start."""
        tally = self.tally
        pending = self._pending
        tracking = self._tracking
        unread: list[tuple[Source, Checkpoint | None]] = []
        for source in self.options.sources:
            start = self._start(source)
            if start is not None and start.complete:
                tally.files_already_done += 1
            else:
                unread.append((source, start))
        results_of = self._results(unread, on_progress, reading)
        due = CLAIM_CHUNK * 4  # records read by when a block is handed out, even an empty one
        try:
            for source, start, results in results_of:
                if start is not None and start.line:
                    tally.resumed_at.append(f"{source.name}:{start.line + 1}")
                earlier = self._earlier_dead_letters(source, start.offset if start else 0)
                frontier = Frontier(start)
                self._frontiers[source.name] = (source, frontier)
                hold = frontier.hold if tracking else None
                chunk = 1 if source.is_stdin else CLAIM_CHUNK
                for result in results:
                    record = result[0]
                    tally.read += 1
                    if hold is not None:
                        hold(record)
                    if earlier is not None and earlier.holds(record):
                        self.skip(record, "dead_lettered_before")
                    elif len(result) == 5:
                        pending.append(result)
                        if len(pending) >= chunk:
                            due = tally.read + CLAIM_CHUNK * 4
                            block = self._claimed()
                            if block:
                                yield block
                    elif type(outcome := result[1]) is str:
                        self.skip(record, outcome)
                    elif pending and self._warn is not None and self._warnings < MAX_WARNINGS:
                        # Its notice is shown: the events read before it are claimed first, so
                        # that a repeat among them is said before it, in input order (at most
                        # MAX_WARNINGS smaller blocks a run).
                        early = self._claimed()
                        self.dead_letter(record, outcome.kind, outcome.reason)  # type: ignore[union-attr]
                        if early:
                            yield early
                    else:
                        self.dead_letter(record, outcome.kind, outcome.reason)  # type: ignore[union-attr]
                    if tally.read >= due:  # a stretch with few events: the caller still gets a say (a signal)
                        due = tally.read + CLAIM_CHUNK * 4
                        yield self._claimed()
                block = self._claimed()
                if block:
                    yield block
                frontier.read_all = True
        finally:
            results_of.close()

    def _results(
        self,
        unread: list[tuple[Source, Checkpoint | None]],
        on_progress: Callable[[str, int], None] | None,
        reading: Reading | None,
    ) -> Generator[tuple[Source, Checkpoint | None, Iterator[Result]]]:
        """Each source still to read, from where it starts, with what its records become:
        converted by worker processes (`--jobs`) when there are several files, else here."""
        jobs = min(self.options.jobs, len(unread))
        if jobs > 1 and not any(source.is_stream for source, _ in unread):  # a worker may not see a pipe
            from segbill.parallel import results_from_workers

            yield from results_from_workers(self.conversion, unread, jobs, on_progress, self._keep_lines)
            return
        for source, start in unread:
            progress = (lambda done, name=source.name: on_progress(name, done)) if on_progress else None
            results = self.conversion.results(source, progress, position_of(start))
            if source.is_stream and reading is not None:  # opening or reading it may wait for ever
                results = reading(results)
            yield source, start, results

    def _earlier_dead_letters(self, source: Source, offset: int) -> _EarlierDeadLetters | None:
        file = self.state.file_identity(source)
        if file is None:
            return None
        self._files[source.name] = file
        earlier = _EarlierDeadLetters(self.state.earlier_dead_letters(file, (self._conversion_digest, ""), offset))
        return earlier if earlier.any else None

    def _claimed(self) -> list[Claimed]:
        """Check the buffered events against the ledger and this run's claims: repeats get their
        outcome at once, the new ones are the block handed out. An event the selection leaves
        out claims its key in this run (see `Conversion._selected`) and keeps its outcome. An
        event reconcile found missing on the platform is no longer delivered in the ledger: the
        platform's 200 did not store it (an event the selection leaves out is another run's),
        unless the state delivered with another mapping of scope and kind: then (from a stream,
        or after a file's first line, see `_may_not_forget`) it is dead-lettered, as it may be
        on the platform."""
        pending, fresh = self._pending, self._fresh
        if self._refuses_forgetting and any(item[0].missing_on_platform for item in pending):
            for _ in range(len(pending)):
                item = pending.popleft()
                if item[0].missing_on_platform and type(item[1]) is not str:
                    self.dead_letter(item[0], "other_scope", OTHER_SCOPE.format(state=self.options.state))
                else:
                    pending.append(item)
        key_of = self.options.target.key
        keys = [(key_of(event) if key is None else key, millis) for _, event, millis, key, _ in pending]  # type: ignore[arg-type]
        scope_of = self._scope_of
        scopes = None
        if scope_of is not None:  # read here from an event converted here; a worker's came with it
            scopes = [scope_of(event) if type(event) is dict else scope for _, event, _, _, scope in pending]
        missing = [
            key
            for key, (record, event, *_) in zip(keys, pending, strict=False)
            if record.missing_on_platform and type(event) is not str
        ]
        if missing:
            self.tally.missing_resent += self.state.forget(missing)
        outside = {at for at, (_, event, _, _, _) in enumerate(pending) if type(event) is str} if self._partial else ()
        for (key, _), verdict in zip(keys, self.state.claim(keys, outside, scopes), strict=False):
            record, event, _, _, _ = pending.popleft()
            if isinstance(event, str):  # left out by the selection: claimed, never sent
                self.skip(record, event)
                continue
            if verdict is Claim.NEW:
                fresh.append((record, event, key, None))
                continue
            if verdict is Claim.RESEND:
                fresh.append((record, event, key, self.state.resending[key]))
                continue
            self.skip(record, verdict.value)
            if verdict is Claim.SHIFTED:
                seen = "came before" if self.options.dry_run else "was already sent"
                skipped = "a send would skip it" if self.options.dry_run else "not sent again"
                self._notice(
                    f"{record.where()}: {key} {seen} with another event time; {skipped} ({self.options.target.shifted_repeat})."
                )
        self._fresh = []
        return fresh

    def skip(self, record: Record, reason: str) -> None:
        self.tally.skipped[reason] += 1
        self._release(record)

    def dead_letter(self, record: Record, kind: str, reason: str) -> None:
        if self.dead_letters is not None:
            self.dead_letters.write(record, reason)
            self.tally.dead_letter_file = str(self.options.dead_letter)
            file = self._files.get(record.path)
            if file is not None:  # a line no message came from fails whatever the mapping
                self.state.dead_lettered(file, "" if record.invalid is not None else self._conversion_digest, record)
        self.tally.dead_lettered[kind] += 1
        self._release(record)
        self._notice(f"{record.where()}: {reason}")

    # -- outcomes of the events handed out by `blocks` (see `segbill.sink.Outcomes`) -----------

    def delivered(self, items: Sequence[Item], *, already: int = 0) -> None:
        self.tally.delivered += len(items)
        self.tally.already_delivered += already
        self.state.delivered([key for _, key, _ in items])
        for record, _, _ in items:
            self._release(record)

    def rejected(self, item: Item, kind: str, reason: str) -> None:
        """`kind` "rejected": the platform refused it; otherwise (unreachable) it may be stored."""
        record, key, _ = item
        self.state.release([key], refused=kind == "rejected")
        self.dead_letter(record, kind, reason)

    def not_attempted(self, items: Sequence[Item], *, unanswered: bool = False) -> None:
        """These were never sent, or (`unanswered`) sent without a final answer before the run
        stopped, so whether they reached the platform is unknown: they stay held, so the
        checkpoint stays before them and a rerun sends them (idempotently) again; those that
        were sent stay marked so (see `State.sending`)."""
        if unanswered:
            self.tally.unanswered += len(items)
        else:
            self.tally.not_attempted += len(items)
        if not self.options.dry_run and self.failure is None:  # after a failed write the state is not saved
            self.state.release([key for _, key, _ in items])

    def sending(self, items: Sequence[Item]) -> None:
        """These events are about to leave in one request (see `State.sending`)."""
        self.state.sending([key for _, key, _ in items])

    def request(self, *, retry: bool) -> None:
        self.tally.requests += 1
        if retry:
            self.tally.retries += 1

    def interrupted(self) -> None:
        """SIGINT/SIGTERM: the run stops early at the user's request."""
        self.tally.interrupted = True

    def stopped(self, reason: str) -> None:
        """The run stops early for `reason` (the first one given is kept); not after an interrupt,
        which says why already."""
        if self.tally.stopped is None and not self.tally.interrupted:
            self.tally.stopped = reason

    def checkpoint(self) -> None:
        """Persist how far each file is finished, with the ledger, in one transaction."""
        if self.failure is not None:  # SQLite may have rolled the transaction back: each write would commit alone
            return
        if self.state.mode is Mode.WRITE and self.dead_letters is not None:
            self.dead_letters.sync()  # a checkpoint, or the state's note of a dead letter, needs the letter on disk
        if self._tracking:
            for name, (source, frontier) in list(self._frontiers.items()):
                position = frontier.position()
                self.state.set_checkpoint(source, position)
                if position.complete:
                    del self._frontiers[name]
        self.state.commit()

    def _release(self, record: Record) -> None:
        if self._tracking:
            self._frontiers[record.path][1].release(record)

    def _notice(self, message: str) -> None:
        if self._warn is None:
            return
        self._warnings += 1
        if self._warnings <= MAX_WARNINGS:
            self._warn(message)
        elif self._warnings == MAX_WARNINGS + 1:
            where = f" and {self.options.dead_letter}" if self.options.dead_letter is not None else ""
            self._warn(f"more notices are not shown; see the summary{where}")

    def warn(self, warnings: list[str]) -> None:
        """Say these in the summary: what may not be what the user meant (a mapping rule unused)."""
        self.tally.warnings += warnings

    def selected_nothing(self) -> bool:
        """Track messages were read and the include/exclude rules or the time window left out
        every one, or no message read is of a type that bills (`only_other_types`), in a run that
        read its whole input: nothing was billed, never what a backfill meant. A shard that owns none of them is no such run: its window is judged on them all.
        Nor is a run that resumed (or skipped finished files): an earlier run of this selection
        read the rest, and the end of a time-ordered export past --until is what a resume reads."""
        tally = self.tally
        if tally.resumed_at or tally.files_already_done or tally.interrupted or tally.stopped is not None:
            return False
        by_rules = bool(self.left_out_by_rules()) and not self.options.mapping.hits.selected
        by_window = bool(self.conversion.outside_window) and not self.conversion.inside_window
        return by_rules or by_window or bool(self.only_other_types())

    def only_other_types(self) -> dict[str, int]:
        """The message types read, when every record read is a message of a type that does not
        bill (identify, page... with no track: a wrong source or folder), else nothing. A shard
        other than 0 skips such messages as another shard's: it is never such a run."""
        tally = self.tally
        skipped = {reason: count for reason, count in tally.skipped.items() if count}
        if not tally.read or tally.delivered or tally.dead_lettered or tally.not_attempted or tally.unanswered:
            return {}
        if any(reason in VERDICTS for reason in skipped):
            return {}
        return skipped

    def left_out_by_rules(self) -> int:
        return self.tally.skipped["not_included"] + self.tally.skipped["excluded"]

    def left_out_by_window(self) -> int:
        """Events outside --since/--until, whichever shard bills them."""
        return self.conversion.outside_window

    def nothing_selected(self, warning: str) -> None:
        """Say why a run that selected nothing is a usage error (exit 2)."""
        self.tally.nothing_selected = True
        self.tally.warnings.append(warning)

    def storage_failed(self, error: Exception) -> None:
        """A dead-letter or state write failed: the run stops (the first failure is the reason).
        Nothing is lost: a checkpoint never passes a record whose outcome was not written."""
        if isinstance(error, sqlite3.Error):
            where = f"the state file {self.options.state}" if self.options.state else "the run's temporary duplicate index"
            reason = f"cannot write {where} ({error})"
        else:
            reason = str(error)
        if self.failure is None:
            self.failure = reason
        if self.tally.stopped is None:
            self.tally.stopped = reason

    def close(self) -> None:
        """Count events read but never handed out as not attempted, then save everything. After
        a storage failure, records whose outcome could not be written count as not attempted."""
        self.tally.not_attempted += len(self._pending) + len(self._fresh)
        self._pending.clear()
        self._fresh = []
        # A run that selected nothing keeps no checkpoint: a rerun (the rules fixed or not) reads
        # the files again and says so again, instead of skipping them as finished.
        first = self.state.forget_checkpoints if self.selected_nothing() else self.checkpoint
        steps: list[Callable[[], None]] = [first, lambda: self.state.close(save=self.failure is None)]
        if self.dead_letters is not None:
            steps.append(self.dead_letters.close)
        for step in steps:
            try:
                step()
            except STORAGE_ERRORS as error:
                self.storage_failed(error)
        if self.failure is not None:
            self.tally.not_attempted += self.tally.unsettled
        note = self.state.old_key_note()
        if note is not None:
            self.tally.warnings.append(note)
        self.tally.finish()


class _EarlierDeadLetters:
    """Walks an earlier run's dead letters of one file beside the records read from it (both in
    file order), so a record dead-lettered before is known without a query per record."""

    def __init__(self, positions: Iterator[tuple[int, int]]) -> None:
        self._positions = positions
        self._next = next(positions, None)
        self.any = self._next is not None

    def holds(self, record: Record) -> bool:
        position = (record.offset, -1 if record.index is None else record.index)
        while self._next is not None and self._next < position:
            self._next = next(self._positions, None)
        return self._next == position


def _replays_missing(source: Source) -> bool:
    """Whether a file is reconcile's --missing, entries from its first line (`MISSING_MARKER`):
    only that line is read, so a large export costs nothing to look at. An entry further on is
    dead-lettered when read (`_claimed`). A file that cannot be read is none here: the run says
    so when it reads it."""
    try:
        first = next(read_lines(source), None)  # the generator, dropped at once, closes the file
    except SourceUnreadable:
        return False
    if first is None:
        return False
    try:
        entry = orjson.loads(first[3])
    except orjson.JSONDecodeError:
        return False
    return is_entry(entry) and entry.get(MISSING_MARKER) is True


def to_event(
    record: Record, message: dict[str, Any], name: str, target: Target, mapping: Mapping
) -> tuple[Billable, dict[str, Any]]:
    """A selected message -> its billable fields and the platform's event, or `Invalid`.
    Integers beyond 64 bits stay exact: orjson's float for one triggers an exact re-parse."""
    try:
        return _convert(message, name, target, mapping)
    except InexactNumber:
        record.message = exact_message(record, ENTRIES)
        with parsed_exactly():
            return _convert(record.message, name, target, mapping)


def _convert(message: dict[str, Any], name: str, target: Target, mapping: Mapping) -> tuple[Billable, dict[str, Any]]:
    fields = mapping.billable(message, name)
    return fields, _event(fields, message, target, mapping)


def _event(fields: Billable, message: dict[str, Any], target: Target, mapping: Mapping) -> dict[str, Any]:
    event = target.convert(fields, mapping.separator)
    if mapping.shapes_properties:
        key = target.properties_key
        event[key] = mapping.shape(event[key], target.protected_key)
    amount = mapping.amount_of(message)
    if amount is not None:
        # The mapping file offers an amount only where the platform takes one.
        assert target.amount_field is not None, f"{target.label} takes no amount"
        event[target.amount_field] = amount
    return event


def event_bytes(event: Event) -> bytes:
    """The event as it is sent: its JSON, exactly."""
    return event if type(event) is bytes else dumps(event)


def selected_events(replay: Replay) -> Iterator[tuple[Record, dict[str, Any]]]:
    """The events a send would deliver, for a reader of the platform (check, reconcile): each
    counts as done once the caller asks for the next one; those still in the caller's hands
    when it stops (an error, an interrupt) count as not attempted."""
    for block in replay.blocks():
        done = 0
        try:
            for record, event, _, _ in block:
                yield record, orjson.loads(event) if isinstance(event, bytes) else event
                done += 1
        finally:
            replay.delivered([(record, key, b"") for record, _, key, _ in block[:done]])
            replay.not_attempted([(record, key, b"") for record, _, key, _ in block[done:]])

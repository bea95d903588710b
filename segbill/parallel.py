"""`--jobs N`: files converted in worker processes, while the run's own process keeps the ledger,
the dead letters, the checkpoints and the summary, so every guarantee holds unchanged.

Worker `w` of `N` converts the files `w`, `w + N`, `w + 2N`... in order (`Conversion.results`,
the same code a one-process run uses) and hands back each record's result, with the event
already serialized and its idempotency key (with `--state`, its scope digest too) read. The run takes the files' results in input
order, so it prints, sends, claims and dead-letters exactly what one process would, in the same
order. Each worker converts at most `AHEAD` records ahead of what the run has taken: memory
stays flat whatever the size of the input, and files of similar size (an export's hourly
objects) keep every worker busy; a file much larger than `AHEAD` records among small ones
converts at about one core's speed while the others wait.

Workers are forks of the run while it runs no other thread (on Linux), else they come from a
fresh interpreter (`forkserver`, or `spawn` where there is none). They ignore SIGINT and SIGTERM (the run decides when to stop: it
stops taking results and ends them), end if the run is killed, and never write to the
terminal: what fails in one (a file that can no longer be read) travels back and is raised in
the run, where one process would have raised it.
"""

from __future__ import annotations

import contextlib
import gc
import math
import multiprocessing
import os
import pickle
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from segbill.pipeline import Conversion, Options, Result, position_of
from segbill.segment import Origin, Record, dumps
from segbill.sources import Source, SourceUnreadable
from segbill.state import scope_digests

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.context import ForkContext, ForkServerContext, SpawnContext
    from multiprocessing.process import BaseProcess
    from multiprocessing.synchronize import Semaphore

    from segbill.state import Checkpoint

# How often (seconds) a waiting side checks that the other is still there.
PATIENCE = 1.0
# Results are handed over this many records at a time (one pickle, one pipe write).
CHUNK = 500
# A worker converts at most this many chunks ahead of what the run has taken.
AHEAD_CHUNKS = 64
AHEAD = CHUNK * AHEAD_CHUNKS

# The default number of workers at most: past it, more workers would wait on the run's own
# process, which claims and writes each event (about 3 us) while a worker converts it (8-10 us).
MAX_DEFAULT_JOBS = 4
# A container's CPU limit: cgroup v2, else v1 (quota and period, in microseconds).
CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
CFS_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
CFS_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")

# A plain record (read from a file as one message, no dead-letter history) travels as its
# origin's numbers and its bytes, in msgpack; any other record travels whole, pickled, with
# [its index among those] in its place.
_PLAIN_EVENT = 8  # (line, offset, end, raw, event bytes, event time, key, scope digest or None)
_PLAIN_UNSELECTED = 6  # (line, offset, end, reason, event time, key): an event the selection leaves out
_PLAIN_SKIP = 4  # (line, offset, end, reason)

# An `Origin` made in C (as `segbill.decode` makes them): its own constructor is Python code.
_new_origin = tuple.__new__
_ENCODE_PLAIN = msgspec.msgpack.Encoder().encode
_DECODE_PLAIN = msgspec.msgpack.Decoder(list[list[Any]]).decode


def default_jobs() -> int:
    """The cores this process may run on (its CPU affinity, within a container's CPU limit: a
    pod limited to 2 CPUs on a 64-core node sees 64 cores), at most `MAX_DEFAULT_JOBS`."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    limit = _cpu_limit()
    if limit is not None:
        cores = min(cores, max(1, math.ceil(limit)))
    return min(cores, MAX_DEFAULT_JOBS)


def _cpu_limit() -> float | None:
    """The CPUs a cgroup lets this process use, or None: no limit, or none found."""
    try:
        quota, period = CPU_MAX.read_text().split()[:2]  # "max 100000" (no limit) or "200000 100000"
    except (OSError, ValueError):
        try:
            quota, period = CFS_QUOTA.read_text().strip(), CFS_PERIOD.read_text().strip()  # "-1": no limit
        except OSError:
            return None
    try:
        limit = int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None
    return limit if limit > 0 else None


def results_from_workers(
    conversion: Conversion,
    unread: list[tuple[Source, Checkpoint | None]],
    jobs: int,
    on_progress: Callable[[str, int], None] | None,
    keep_lines: bool,
) -> Generator[tuple[Source, Checkpoint | None, Iterator[Result]]]:
    """`Replay._results` with `jobs` worker processes: each source with what its records become,
    in input order. The workers' notes (which mapping rules matched, events the time window
    left out) join `conversion`'s as each file ends."""
    context = _context()
    channels: list[_Channel] = []
    files = [(source, position_of(start)) for source, start in unread]
    try:
        for number in range(jobs):
            reader, writer = context.Pipe(duplex=False)
            room = context.BoundedSemaphore(AHEAD_CHUNKS)
            worker: BaseProcess = context.Process(
                target=_work,
                args=(conversion.options, files[number::jobs], keep_lines, gc.get_threshold(), writer, room),
                name=f"segbill-job-{number + 1}",
                daemon=True,
            )
            worker.start()
            writer.close()  # the worker's alone: if it dies, even mid-message, reading it ends
            channels.append(_Channel(worker, reader, room))
        for number, (source, start) in enumerate(unread):
            yield source, start, _results(conversion, source, channels[number % jobs], on_progress)
    finally:
        for channel in channels:
            channel.worker.kill()  # it ignores SIGINT and SIGTERM: the run ends it
        for channel in channels:
            channel.worker.join()
            channel.reader.close()


@dataclass
class _Channel:
    """The run's side of one worker: its messages, and room for `AHEAD_CHUNKS` not yet taken."""

    worker: BaseProcess
    reader: Connection
    room: Semaphore

    def take(self, path: str) -> tuple[Any, ...]:
        while not self.reader.poll(PATIENCE):
            if not self.worker.is_alive():
                raise self._ended(path)
        try:
            data = self.reader.recv_bytes()
        except (EOFError, OSError):  # OSError: "got end of file during message"
            raise self._ended(path) from None
        self.room.release()
        return pickle.loads(data)  # type: ignore[no-any-return]

    def _ended(self, path: str) -> SourceUnreadable:
        """A worker killed (out of memory?): the run stops there, and a rerun resumes."""
        self.worker.join()
        return SourceUnreadable(f"cannot convert {path}: the process converting it ended (exit status {self.worker.exitcode})")


def _context() -> ForkContext | ForkServerContext | SpawnContext:
    """On Linux, fork while this process runs no other thread: a worker then starts at once,
    with everything imported. Otherwise a thread could hold a lock the copy would never see
    released, so workers come from a fork server (a fresh interpreter, started once), or are
    fresh interpreters where there is none (Windows). macOS is not forked: its system
    libraries do not survive it (Python's own default there is to spawn)."""
    methods = multiprocessing.get_all_start_methods()
    if sys.platform.startswith("linux") and threading.active_count() == 1 and "fork" in methods:
        for stream in (sys.stdout, sys.stderr):  # a worker flushes its copy when it ends: it must be empty
            with contextlib.suppress(OSError, ValueError):  # closed, or a reader gone: the run finds out when it writes
                stream.flush()
        return multiprocessing.get_context("fork")
    if "forkserver" in methods:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["segbill.parallel"])
        return context
    return multiprocessing.get_context("spawn")


def _results(
    conversion: Conversion, source: Source, channel: _Channel, on_progress: Callable[[str, int], None] | None
) -> Iterator[Result]:
    """One file's results from its worker, records made again on this side."""
    path = source.name
    while True:
        message = channel.take(path)
        kind = message[0]
        if kind == "chunk":
            _, done, plain, others = message
            if on_progress is not None and done is not None:
                on_progress(path, done)
            for item in _DECODE_PLAIN(plain):
                size = len(item)
                if size == _PLAIN_EVENT:
                    line, offset, end, raw, event, millis, key, scope = item
                    yield Record(_new_origin(Origin, (path, line, offset, end)), raw), event, millis, key, scope
                elif size == _PLAIN_SKIP:
                    line, offset, end, reason = item
                    yield Record(_new_origin(Origin, (path, line, offset, end)), b""), reason
                elif size == _PLAIN_UNSELECTED:
                    line, offset, end, reason, millis, key = item
                    yield Record(_new_origin(Origin, (path, line, offset, end)), b""), reason, millis, key, None
                else:
                    other = others[item[0]]
                    if type(other[1]) is tuple:
                        record, (event, millis, key, scope) = other
                        yield record, event, millis, key, scope
                    else:
                        yield other
        elif kind == "end":
            _, hits, renamed, outside, inside = message
            conversion.options.mapping.met(hits, renamed)
            conversion.outside_window += outside
            conversion.inside_window = conversion.inside_window or inside
            return
        else:
            raise message[1]


def _work(
    options: Options,
    files: list[tuple[Source, dict[str, int]]],
    keep_lines: bool,
    gc_threshold: tuple[int, int, int],
    writer: Connection,
    room: Semaphore,
) -> None:
    """A worker: convert `files` in order, a chunk of results at a time, to the run."""
    outbox = _Outbox(writer, room)
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # The run's collector settings (see `segbill.cli.usage.streaming_gc`); a fork has them already.
        gc.freeze()
        gc.set_threshold(*gc_threshold)
        # The thread sending what the converting thread made must not wait the default 5 ms
        # for the interpreter each time, or it, not the work, sets the pace.
        sys.setswitchinterval(0.0002)
        conversion = Conversion(options)
        for source, position in files:
            _convert(conversion, source, position, keep_lines, outbox)
    except BaseException as error:  # the run raises it where one process would have
        outbox.put(("error", _portable(error)))
    outbox.stay()


class _Outbox:
    """A worker's side of its pipe. Messages wait here for room (at most `AHEAD_CHUNKS` sent and
    not yet taken), then for a thread that sends them, so converting goes on while the run
    reads another worker's file. Ends the worker if the run is gone (killed without a word)."""

    def __init__(self, writer: Connection, room: Semaphore) -> None:
        self._writer = writer
        self._room = room
        run = multiprocessing.parent_process()
        assert run is not None
        self._run = run
        self._waiting: deque[bytes] = deque()
        self._ready = threading.Condition()
        threading.Thread(target=self._send, name="segbill-outbox", daemon=True).start()

    def put(self, message: tuple[Any, ...]) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        while not self._room.acquire(timeout=PATIENCE):
            if not self._run.is_alive():
                os._exit(0)
        with self._ready:
            self._waiting.append(data)
            self._ready.notify()

    def _send(self) -> None:
        while True:
            with self._ready:
                while not self._waiting:
                    self._ready.wait()
                data = self._waiting.popleft()
            try:
                self._writer.send_bytes(data)
            except OSError:  # the run is gone
                os._exit(0)

    def stay(self) -> None:
        """Stay while the run takes what is still to send (the run then ends the worker),
        unless the run is gone: the worker would otherwise wait for ever, holding the run's
        stdout and stderr open."""
        self._run.join()
        os._exit(0)

    def chunk(self, done: int | None, items: list[tuple[Any, ...] | list[int]], others: list[tuple[Any, ...]]) -> None:
        """Plain results as msgpack (a third of pickle's cost: nothing to remember), the rest pickled."""
        self.put(("chunk", done, _ENCODE_PLAIN(items), others))


def _convert(conversion: Conversion, source: Source, position: dict[str, int], keep_lines: bool, outbox: _Outbox) -> None:
    """One file's results, then what the conversion noted on the way (see `_results`)."""
    options = conversion.options
    key_of = options.target.key
    scope_of = None if options.state is None else scope_digests(options.target)
    done: list[int | None] = [None]

    def progress(read: int) -> None:
        done[0] = read

    items: list[tuple[Any, ...] | list[int]] = []
    others: list[tuple[Any, ...]] = []
    for result in conversion.results(source, progress, position):
        item = _compact(result, key_of, scope_of, keep_lines)
        if type(item[0]) is int:
            items.append(item)
        else:  # a record that travels whole: in the pickled list, its place in the plain one
            items.append([len(others)])
            others.append(item)
        if len(items) >= CHUNK:
            outbox.chunk(done[0], items, others)
            items, others = [], []
    outbox.chunk(done[0], items, others)
    mapping = options.mapping
    outbox.put(("end", mapping.hits, mapping.renamed, conversion.outside_window, conversion.inside_window))
    conversion.outside_window, conversion.inside_window = 0, False


def _compact(
    result: Result,
    key_of: Callable[[dict[str, Any]], str],
    scope_of: Callable[[dict[str, Any]], bytes] | None,
    keep_lines: bool,
) -> tuple[Any, ...]:
    """A result as it travels: the event serialized, its key (and with `scope_of`, its scope
    digest) read, a plain record as numbers (and its line, if the run keeps the lines of events)."""
    record = result[0]
    plain = record.index is None and record.first_source is None and not record.missing_on_platform
    if len(result) == 5:
        _, event, millis, key, _ = result
        if type(event) is str:  # left out by the selection: only its key travels, to be claimed
            if plain and record.invalid is None:
                origin = record.origin
                return origin.line, origin.offset, origin.end, event, millis, key
            record.drop_message()
            return record, (event, millis, key, None)
        assert isinstance(event, dict)  # as converted: a worker serializes it
        data = dumps(event)
        scope = None if scope_of is None else scope_of(event)
        if plain and record.invalid is None:
            origin = record.origin
            raw = record.raw if keep_lines else b""
            return origin.line, origin.offset, origin.end, raw, data, millis, key_of(event), scope
        record.drop_message()
        return record, (data, millis, key_of(event), scope)
    outcome = result[1]
    if plain and type(outcome) is str:
        origin = record.origin
        return origin.line, origin.offset, origin.end, outcome
    record.drop_message()
    return record, outcome


def _portable(error: BaseException) -> BaseException:
    """`error`, or one that says the same and survives the trip between processes."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error

"""The command line: parse options, build `Options`, run the core, map the result to an exit code."""

from __future__ import annotations

import errno
import math
import os
import sqlite3
import sys
import tempfile
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, TextIO
from urllib.parse import urlsplit

import orjson
import typer

from segbill import __version__
from segbill.cli.inspect import inspect_command
from segbill.cli.progress import Progress
from segbill.cli.summary import render_summary
from segbill.cli.usage import fail, hold_closed_streams, inputs, interruptible, report_stream, say_empty, streaming_gc, warn
from segbill.deadletter import DEFAULT_PATH, holds_other_data, written_by_dry_runs
from segbill.mapping import Mapping
from segbill.mapping_file import ConfigError
from segbill.mapping_file import load as load_mapping
from segbill.pipeline import STORAGE_ERRORS, Options, Replay
from segbill.report import ExitCode, Tally
from segbill.segment import parse_time
from segbill.sink import PrintSink
from segbill.sources import Source, SourceUnreadable
from segbill.state import State, StateRefused
from segbill.targets import PLATFORMS, Target, get_target

if TYPE_CHECKING:
    from segbill.delivery import DeliveryOptions
    from segbill.targets.api import ReadOptions

LOCAL_HOSTS = {"localhost", "::1", "[::1]"}

app = typer.Typer(
    name="segbill",
    help="Replay Segment event exports into usage-based billing platforms (Lago, Hyperline).",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


TargetName = StrEnum("TargetName", {name: name for name in PLATFORMS})  # type: ignore[misc]  # --to: the registry's platforms


def _version(value: bool) -> None:
    if value:
        print(f"segbill {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = None,
) -> None:
    """Replay Segment event exports into usage-based billing platforms (Lago, Hyperline)."""


# -- options: declared once, for every command that takes them ---------------------------------


def _finite(value: float | None) -> float | None:
    """A number of seconds or events per second: click's ranges let nan and inf through."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number.")
    return value


Paths = Annotated[
    list[str] | None,
    typer.Argument(help="The Segment exports, read exactly as send reads them. '-' or nothing reads stdin.", show_default=False),
]
FilePaths = Annotated[
    list[str] | None,
    typer.Argument(
        help="Files or folders of Segment exports, read exactly as send reads them; not stdin, as they are read twice.",
        show_default=False,
    ),
]
ToRead = Annotated[TargetName, typer.Option("--to", help="The billing platform to read.", case_sensitive=False)]
Config = Annotated[
    Path | None,
    typer.Option(
        "--config",
        metavar="FILE",
        help="A TOML mapping file: where each field comes from, which events are billable, code renames, "
        "property rules. See the README; the flags below override it.",
        show_default=False,
    ),
]
CustomerFrom = Annotated[
    str | None,
    typer.Option(
        "--customer-from",
        metavar="PATH",
        help="Dotted path of the field holding the customer id (Lago external_subscription_id, Hyperline "
        "customer_id), for example context.groupId or properties.subscription_id. Default: userId.",
        show_default=False,
    ),
]
Events = Annotated[
    list[str] | None,
    typer.Option(
        "--event", metavar="GLOB", help="Bill only events whose name matches (repeatable), e.g. 'API *'.", show_default=False
    ),
]
ExcludeEvents = Annotated[
    list[str] | None,
    typer.Option(
        "--exclude-event", metavar="GLOB", help="Do not bill events whose name matches (repeatable).", show_default=False
    ),
]
Since = Annotated[
    str | None,
    typer.Option(
        "--since",
        metavar="TIME",
        help="Only events at or after this time (a date or ISO 8601 time, UTC unless a zone is given).",
        show_default=False,
    ),
]
Until = Annotated[
    str | None,
    typer.Option(
        "--until",
        metavar="TIME",
        help="Only events before this time (exclusive, so --until 2024-02-01 --since 2024-02-01 split cleanly).",
        show_default=False,
    ),
]
SHARD_SPLIT = "shard K of N (K from 0 to N-1), a stable split by customer id"
Shard = Annotated[
    str | None,
    typer.Option(
        "--shard",
        metavar="K/N",
        help=f"Bill only the customers of {SHARD_SPLIT}, so N workers share one backfill; give each its own --state.",
        show_default=False,
    ),
]
ShardRead = Annotated[
    str | None,
    typer.Option(
        "--shard", metavar="K/N", help=f"Only the customers of {SHARD_SPLIT}, as send --shard K/N bills them.", show_default=False
    ),
]
ApiUrl = Annotated[
    str | None,
    typer.Option(
        "--api-url",
        metavar="URL",
        help="The platform's base URL; a path prefix is kept. Default: $LAGO_API_URL or https://api.getlago.com, "
        "$HYPERLINE_API_URL or https://ingest.hyperline.co.",
        show_default=False,
    ),
]
ApiKey = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        metavar="KEY",
        help="The platform's API key. Prefer $LAGO_API_KEY / $HYPERLINE_API_KEY: a command line is visible to "
        "other users of the machine. Never printed nor logged.",
        show_default=False,
    ),
]
KeyRotated = Annotated[
    bool,
    typer.Option(
        "--key-rotated",
        help="The API key was rotated for the same organization: the --state file, which remembers (a digest of) the "
        "key its events were delivered with and refuses another, remembers this one instead, once the platform accepts "
        "a request made with it. A key for another organization needs a new --state file.",
    ),
]
Timeout = Annotated[
    float, typer.Option("--timeout", min=0.1, callback=_finite, help="Seconds to wait for each answer before retrying.")
]
ReadRetries = Annotated[
    int, typer.Option("--max-retries", min=0, help="Retries of a read after a transient failure before the run stops (exit 3).")
]
Json = Annotated[bool, typer.Option("--json", help="Print the result as one JSON object on stdout.")]
Jobs = Annotated[
    int | None,
    typer.Option(
        "--jobs",
        min=1,
        metavar="N",
        help="Processes converting files at once, when there are several (stdin is read by one). Default: the "
        "cores available (within a container's CPU limit), at most 4. The output, the outcomes and their order "
        "are the same for any N.",
        show_default=False,
    ),
]


@app.command()
def send(
    paths: Annotated[
        list[str] | None,
        typer.Argument(
            help="Files or folders of Segment exports (NDJSON, gzip or not; folders are read recursively in "
            "sorted order, hidden entries skipped). '-' or nothing reads stdin.",
            show_default=False,
        ),
    ] = None,
    to: Annotated[
        TargetName,
        typer.Option("--to", help="The billing platform to send to.", case_sensitive=False),
    ] = ...,  # type: ignore[assignment]
    dry_run_: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Send nothing: print each converted event to stdout as one JSON line, exactly as it would "
            "stand in a batch. Needs no API key and no network.",
        ),
    ] = False,
    config: Config = None,
    customer_from: CustomerFrom = None,
    event: Events = None,
    exclude_event: ExcludeEvents = None,
    dead_letter: Annotated[
        Path | None,
        typer.Option(
            "--dead-letter",
            metavar="PATH",
            help=f"Where records that cannot be delivered go, one JSON line each with the reason (appended; "
            f"created only when needed, readable by you only). Replay it with segbill send. Default: {DEFAULT_PATH}; "
            "a dry run writes none unless given one, and then replaces it.",
            show_default=False,
        ),
    ] = None,
    state: Annotated[
        Path | None,
        typer.Option(
            "--state",
            metavar="PATH",
            help="SQLite file that makes runs resumable and exactly-once: checkpoints per file and selection, a ledger "
            "of delivered events, the dead letters written. A rerun skips what is finished and never resends a delivered "
            "event nor rewrites a dead letter. One destination per file; one run at a time.",
            show_default=False,
        ),
    ] = None,
    since: Since = None,
    until: Until = None,
    shard: Shard = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
    key_rotated: KeyRotated = False,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            min=1,
            help="Events per request. Default and maximum: Lago 100; Hyperline 1000, at most 5000.",
            show_default=False,
        ),
    ] = None,
    concurrency: Annotated[
        str,
        typer.Option(
            "--concurrency",
            metavar="auto|N",
            help="Requests in flight. auto grows and shrinks it from answer times and 429s (up to 16, or what an announced limit needs, at most 64); N fixes it.",
        ),
    ] = "auto",
    rate: Annotated[
        float | None,
        typer.Option(
            "--rate",
            min=0.001,
            callback=_finite,
            metavar="EVENTS/S",
            help="Send at most this many events per second.",
            show_default=False,
        ),
    ] = None,
    timeout: Timeout = 30.0,
    max_retries: Annotated[
        int,
        typer.Option(
            "--max-retries",
            min=0,
            help="Retries of a batch after a transient failure (connection error, timeout, 408, 429, 5xx) before it is dead-lettered.",
        ),
    ] = 10,
    grace: Annotated[
        float,
        typer.Option(
            "--grace",
            min=0,
            callback=_finite,
            help="On SIGINT/SIGTERM, seconds to let requests in flight finish; a second signal stops at once.",
        ),
    ] = 10.0,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bar or progress lines (the summary is still printed).")
    ] = False,
    json_: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print the summary as one JSON object on stdout (on stderr in a dry run, where stdout holds "
            "the events: its last line, after any notices).",
        ),
    ] = False,
    check_first: Annotated[
        bool,
        typer.Option("--check", help="Lago: run segbill check first and send nothing (exit 1) if any event would not be billed."),
    ] = False,
    jobs: Jobs = None,
) -> None:
    """Convert Segment messages and send them to a billing platform (or print them with --dry-run).

    Exit codes: 0 all delivered or skipped by rule; 1 finished, something was dead-lettered;
    2 usage error, nothing sent; 3 stopped early on a fatal error; 130 interrupted.
    """
    mapping = _mapping(to, config, customer_from, event, exclude_event)
    for note in mapping.notes:
        warn(f"warning: {note}")
    sources = inputs(paths)
    dead_letter_option = "--dead-letter" if dead_letter is not None else "the default --dead-letter"
    if dead_letter is None and not dry_run_:
        dead_letter = Path(DEFAULT_PATH)
    _check_own_files({dead_letter_option: dead_letter, "--state": state}, sources)
    if dead_letter is not None:
        _check_dead_letter_path(dead_letter, sources, config)
        if dry_run_:
            _replace_dry_run_dead_letters(dead_letter)
    window = _window(since, until)
    options = Options(
        sources=sources,
        target=get_target(to.value),
        mapping=mapping,
        dead_letter=dead_letter,
        dry_run=dry_run_,
        state=state,
        since=window[0],
        until=window[1],
        shard=_shard_option(shard),
        jobs=_jobs_option(jobs),
    )
    width = _concurrency_option(concurrency)
    if batch_size is not None and batch_size > options.target.max_batch:  # checked in a dry run too
        fail(
            f"--batch-size {batch_size} is over {options.target.label}'s limit of {options.target.max_batch} events per request."
        )
    if api_url == "":
        fail(
            f"--api-url is empty (an unset variable?); give the platform's URL, or leave the option out for {options.target.default_url}."
        )
    if state is not None and not state.parent.is_dir():
        fail(f"--state {state}: the folder {state.parent} does not exist.")
    if state is not None and state.is_dir():  # a dry run would open it to read, as it opens a state
        fail(f"--state {state}: a folder; give the path of a state file.")
    _check_key_rotated(key_rotated, state, dry_run=dry_run_)
    if dry_run_ and state is not None and not state.exists():
        warn(f"--state {state} does not exist: this dry run reads it as empty and creates nothing (a send would create it).")
    delivery = (
        None if dry_run_ else _delivery_options(options.target, api_url, api_key, batch_size, width, rate, timeout, max_retries)
    )
    if delivery is not None:
        options.url = _destination(delivery.url)
    try:
        if check_first:
            _check_before_sending(options, delivery, json_, key_rotated)
        replay = Replay(
            options,
            warn=warn,
            keep_lines=not options.dry_run,
            api_key=None if delivery is None else delivery.api_key,
            key_rotated=key_rotated,
        )
    except (StateRefused, OSError, sqlite3.DatabaseError) as error:
        _state_refused(state, error)
    _run(replay, delivery, progress=not quiet, grace=grace)
    if replay.failure is not None:
        resume = f", which resumes from {state}" if state else ""
        how = f" once its cause is fixed, run the same command again{resume}" if json_ else " the summary says how to finish"
        print(f"segbill: error: {replay.failure}. Nothing is lost:{how}.", file=sys.stderr)
    _mapping_warnings(replay, mapping, to.value, event, exclude_event)
    if replay.tally.empty and replay.tally.exit_code() is ExitCode.USAGE:
        say_empty(sources)
    _flush_stdout()
    _summarize(replay.tally, json_)
    reading = options.target.reading
    if dry_run_ and reading is not None and reading.decided_by is not None and not json_:
        warn(
            f"whether {options.target.label} will bill these events ({reading.decided_by}): segbill check with the same options."
        )
    raise typer.Exit(int(replay.tally.exit_code()))


def _run(replay: Replay, delivery: DeliveryOptions | None, *, progress: bool, grace: float) -> None:
    """Run the replay into its sink (stdout in a dry run, the platform otherwise), then close it."""
    try:
        from segbill.runner import run  # httpx (and asyncio, for a send) are imported only now

        with streaming_gc():
            if delivery is None:
                run(replay, PrintSink(sys.stdout.buffer))
            else:
                from segbill.delivery import HttpSink

                total = _total_bytes(replay.options.sources)
                shown = Progress(replay.tally, total, sys.stderr, terminal=sys.stderr.isatty()) if progress else None
                run(replay, HttpSink(replay.options.target, delivery), progress=shown, grace=grace)
    except KeyboardInterrupt:  # before the run's own handlers were in place, or after
        replay.interrupted()
    except STORAGE_ERRORS as error:
        replay.storage_failed(error)
    finally:
        replay.close()


def _mapping_warnings(
    replay: Replay, mapping: Mapping, target: str, events: list[str] | None, exclude_events: list[str] | None
) -> None:
    """What in the mapping may not be what the user meant, for the summary."""
    warnings = list(mapping.notes)
    if replay.tally.read:  # with nothing read, every rule matched nothing: not worth saying
        warnings += [_unused_rename(name) for name in mapping.unused_renames()]
        warnings += [_unmatched(rule, glob, target, events, exclude_events) for rule, glob in mapping.unmatched()]
    amount = mapping.amount_unread()
    if amount is not None and replay.tally.delivered:  # (a dry run counts its converted events here)
        field_name = replay.options.target.amount_field
        warnings.append(f'{field_name} = "{amount}" was in no event converted: every event went without its amount.')
    replay.warn(warnings)
    _nothing_selected(replay, mapping, bool(events or exclude_events))


app.command("inspect")(inspect_command)


@app.command("check")
def check_command(
    paths: Paths = None,
    to: ToRead = ...,  # type: ignore[assignment]
    config: Config = None,
    customer_from: CustomerFrom = None,
    event: Events = None,
    exclude_event: ExcludeEvents = None,
    since: Since = None,
    until: Until = None,
    shard: ShardRead = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
    timeout: Timeout = 30.0,
    max_retries: ReadRetries = 10,
    json_: Json = False,
    jobs: Jobs = None,
) -> None:
    """Before a backfill: read the export as send would, send nothing, and say for every event
    whether Lago will bill it (billable, draft) or store it and never bill it (unknown_code,
    unknown_subscription, before_start, after_termination, invoiced), with the codes,
    subscriptions and times behind each verdict. Hyperline: whether its customer exists
    (billable, unknown_customer); its API shows nothing more to check against.

    Exit codes: 0 every event will be billed (billable or draft); 1 some will not, a record
    would be dead-lettered, or there was no event to check; 2 usage error; 3 a read failed (key, URL, the platform); 130 interrupted.
    """
    from segbill.check import run_check
    from segbill.cli.check import render_check

    options, reading = _selection(
        to, paths, config, customer_from, event, exclude_event, since, until, shard, api_url, api_key, timeout, max_retries, jobs
    )
    with streaming_gc(), interruptible():
        result = run_check(options, reading)
    if result.stopped is not None and not result.tally.read and not json_:  # the organization could not be read
        fail(f"check could not read {options.target.label} ({result.stopped}); nothing was checked.", ExitCode.FATAL)
    if result.exit_code() is ExitCode.USAGE:
        say_empty(options.sources)
    _report(result.as_dict() if json_ else None, lambda out: render_check(result, out, terminal=out.isatty()))
    raise typer.Exit(int(result.exit_code()))


@app.command("reconcile")
def reconcile_command(
    paths: FilePaths = None,
    to: ToRead = ...,  # type: ignore[assignment]
    missing: Annotated[
        Path | None,
        typer.Option(
            "--missing",
            metavar="FILE",
            help="Write the missing events' original records here, in the dead-letter format, so that "
            "segbill send FILE --to lago|hyperline (with the same mapping options and --state) completes the backfill. Must not exist yet.",
            show_default=False,
        ),
    ] = None,
    state: Annotated[
        Path | None,
        typer.Option(
            "--state",
            metavar="PATH",
            help="The state file the send used: the missing events are no longer delivered in its ledger (the platform "
            "answered 200 and does not hold them), and no checkpoint in it says a file is finished, so a send with it "
            "reads its files again and sends them. Locked as send locks it. Without it, reconcile changes no file but --missing.",
            show_default=False,
        ),
    ] = None,
    config: Config = None,
    customer_from: CustomerFrom = None,
    event: Events = None,
    exclude_event: ExcludeEvents = None,
    since: Since = None,
    until: Until = None,
    shard: ShardRead = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
    key_rotated: KeyRotated = False,
    timeout: Timeout = 30.0,
    max_retries: ReadRetries = 10,
    json_: Json = False,
    jobs: Jobs = None,
) -> None:
    """After a send: compare, per (subscription, code) for Lago or (customer, event type) for
    Hyperline over the export's time range (or --since/--until), the events the export bills
    with those the platform holds, and name the
    difference: missing (expected, not found) and extra (held, from no event of the export).
    Counts first; events are listed only in the ranges whose counts disagree. Reads the input twice.
    With --state, the missing events are no longer delivered in the send's ledger, and a send
    with that state reads its files again to deliver them.

    Exit codes: 0 nothing missing or extra; 1 something is, or there was no event to reconcile;
    2 usage error; 3 a read failed (key, URL, the platform), or --missing or the state could not
    be written; 130 interrupted.
    """
    from segbill.cli.reconcile import render_reconcile
    from segbill.reconcile import Reconciliation, reconcile

    options, reading = _selection(
        to, paths, config, customer_from, event, exclude_event, since, until, shard, api_url, api_key, timeout, max_retries, jobs
    )
    _refuse_streams(options.sources, "reconcile reads its input twice (counting, then matching)")
    _check_own_files({"--missing": missing, "--state": state}, options.sources)
    if missing is not None:
        if missing.exists():
            fail(f"--missing {missing} already exists: move it away (or replay it) first, or pick another name.")
        if not missing.parent.is_dir():
            fail(f"--missing {missing}: the folder {missing.parent} does not exist.")
    if state is not None and not state.is_file():
        fail(f"--state {state}: no such file; give the state file the send used (reconcile creates none).")
    _check_key_rotated(key_rotated, state)
    ledger = None
    if state is not None:
        try:
            ledger = State(
                state,
                to.value,
                selection=options.selection(),
                url=_destination(reading.url),
                key_source=options.mapping.key_source(),
                scope_source=options.mapping.scope_source(),
                api_key=reading.api_key,
                key_rotated=key_rotated,
            )
        except (StateRefused, OSError, sqlite3.DatabaseError) as error:
            _state_refused(state, error)
        refused = ledger.forgetting_refused()
        if refused is not None:
            ledger.close(save=False)
            fail(refused)
    result = Reconciliation(options.target, state=None if state is None else str(state))
    try:
        with streaming_gc(), interruptible():
            reconcile(options, reading, missing, result, ledger)
    except KeyboardInterrupt:
        result.interrupted = True
    except STORAGE_ERRORS as error:  # --missing or the ledger cannot be written (a full disk)
        result.stopped = _storage_failure(error, state)
    if ledger is not None:
        note = ledger.old_key_note()
        if note is not None:
            result.warnings.append(note)
        try:
            ledger.close(save=result.stopped is None)
        except sqlite3.Error as error:
            result.stopped = result.stopped or _storage_failure(error, state)
    if result.exit_code() is ExitCode.USAGE:
        say_empty(options.sources)
    _report(result.as_dict() if json_ else None, lambda out: render_reconcile(result, out, terminal=out.isatty()))
    raise typer.Exit(int(result.exit_code()))


def _state_refused(state: Path | None, error: Exception) -> NoReturn:
    """A state that cannot be used, found before anything is read: one line, exit 2."""
    if isinstance(error, StateRefused):
        fail(str(error))
    if isinstance(error, OSError):
        fail(f"--state {state}: {error.strerror or error}.")
    if isinstance(error, sqlite3.OperationalError):  # a full disk or a file-size limit
        where = f"--state {state}" if state else f"the run's temporary duplicate index in {tempfile.gettempdir()}"
        fail(f"{where}: cannot be written ({error}).")
    fail(f"--state {state} is not a segbill state file ({error}).")


def _check_key_rotated(key_rotated: bool, state: Path | None, *, dry_run: bool = False) -> None:
    """--key-rotated changes what a --state file remembers of a send's key: without one (or in a
    dry run, which uses no key) it would do nothing, and a flag that does nothing is refused."""
    if key_rotated and dry_run:
        fail("--key-rotated is for a send: a dry run uses no API key, so it reads a --state file whatever its key.")
    if key_rotated and state is None:
        fail("--key-rotated replaces the API key a --state file remembers: give the --state file.")


def _storage_failure(error: Exception, state: Path | None) -> str:
    """Why reconcile stopped writing: its --missing file or the ledger of --state."""
    return f"cannot write the state file {state} ({error})" if isinstance(error, sqlite3.Error) else str(error)


def _check_before_sending(options: Options, delivery: DeliveryOptions | None, as_json: bool, key_rotated: bool) -> None:
    """send --check: the check of exactly what this send would deliver (the state's ledger
    included, and its refusals: one refused reads nothing); anything the platform would not bill
    stops the send before it starts. With --json, a check that stops the send prints its object
    on stdout, as the send's would be."""
    from segbill.check import run_check
    from segbill.cli.check import render_check
    from segbill.targets.api import ReadOptions

    reading = options.target.reading
    if delivery is None or reading is None or reading.decided_by is None:
        gates = [target.label for target in map(get_target, PLATFORMS) if target.reading and target.reading.decided_by]
        fail(f"--check works with a {' or '.join(gates)} send (not a dry run): it reads what decides billing; see segbill check.")
    _refuse_streams(options.sources, "--check reads the input twice (checking, then sending)")
    with streaming_gc(), interruptible():
        read_options = ReadOptions(delivery.url, delivery.api_key, delivery.timeout, delivery.max_retries)
        result = run_check(options, read_options, state_key=None if key_rotated else delivery.api_key)
    if as_json and (result.tally.interrupted or result.stopped is not None or result.unbilled):
        _report(result.as_dict(), lambda out: None)  # a cron's `--json >> runs.jsonl` keeps why nothing was sent
    if result.tally.interrupted:
        fail("interrupted during --check; nothing was sent.", ExitCode.INTERRUPTED)
    if result.stopped is not None:
        fail(f"--check could not read {options.target.label} ({result.stopped}); nothing was sent.", ExitCode.FATAL)
    if result.unbilled:
        if not as_json:
            render_check(result, sys.stderr, terminal=sys.stderr.isatty())
        fail(
            f"--check: {result.unbilled:,} of {result.checked:,} events would not be billed"
            f"{'' if as_json else ' (above)'}; nothing was sent.",
            ExitCode.DEAD_LETTERED,
        )
    if not result.checked:
        warn("--check: no event to check: this send has nothing new to deliver.")
        return
    warn(
        f"--check: all {result.checked:,} events will be billed ({result.verdicts['draft']:,} once a draft invoice is refreshed); sending."
    )


def _selection(
    to: TargetName,
    paths: list[str] | None,
    config: Path | None,
    customer_from: str | None,
    event: list[str] | None,
    exclude_event: list[str] | None,
    since: str | None,
    until: str | None,
    shard: str | None,
    api_url: str | None,
    api_key: str | None,
    timeout: float,
    max_retries: int,
    jobs: int | None,
) -> tuple[Options, ReadOptions]:
    """What a send of these options would select, and how to read the platform."""
    from segbill.targets.api import ReadOptions

    mapping = _mapping(to, config, customer_from, event, exclude_event)
    target = get_target(to.value)
    if target.reading is None:
        fail(f"segbill cannot read {target.label}'s API: check and reconcile do not work with --to {target.name}.")
    window = _window(since, until)
    url, key = _endpoint(target, api_url, api_key, "look without the platform with send --dry-run")
    options = Options(
        sources=inputs(paths),
        target=target,
        mapping=mapping,
        since=window[0],
        until=window[1],
        shard=_shard_option(shard),
        jobs=_jobs_option(jobs),
    )
    return options, ReadOptions(url, key, timeout, max_retries)


def _refuse_streams(sources: list[Source], why: str) -> None:
    """A command that reads its input twice cannot read stdin or a pipe: the second read is empty."""
    for source in sources:
        if source.is_stream:
            fail(f"{why}: give files or folders, not {'stdin' if source.is_stdin else f'a pipe ({source.name})'}.")


def _jobs_option(jobs: int | None) -> int:
    """--jobs, or the cores this process may run on (at most 4)."""
    if jobs is not None:
        return jobs
    from segbill.parallel import default_jobs

    return default_jobs()


def _mapping(
    to: TargetName, config: Path | None, customer_from: str | None, event: list[str] | None, exclude_event: list[str] | None
) -> Mapping:
    """The mapping of --config and the flags, for every command that selects as send does."""
    if config is not None and config.is_dir():
        fail(f"--config {config} is a folder; give the mapping file itself (segbill.toml).")
    if config is not None and not config.is_file():
        fail(f"--config {config}: no such file.")
    try:
        return load_mapping(to.value, config, customer_from=customer_from, events=event, exclude_events=exclude_event)
    except ConfigError as error:
        fail(str(error))


def _report(data: dict[str, object] | None, render_to: Callable[[TextIO], None]) -> None:
    """A result on stdout: one JSON object, or for people."""
    out = report_stream()
    try:
        if data is not None:
            out.write(orjson.dumps(data).decode() + "\n")
        else:
            render_to(out)
    except BrokenPipeError:
        pass
    _flush_stdout()


def _unused_rename(name: str) -> str:
    return f'rename "{name}" matched no event read: names are matched exactly, case included (segbill inspect lists them).'


def _unmatched(rule: str, glob: str, target: str, events: list[str] | None, exclude_events: list[str] | None) -> str:
    """A selection or property rule that matched nothing, named as the user wrote it (a flag or the file's key)."""
    if rule == "include" and events:
        name = f'--event "{glob}"'
    elif rule == "exclude" and exclude_events:
        name = f'--exclude-event "{glob}"'
    else:
        table, _, key = rule.rpartition(".")
        name = f'[{target}.{table or "events"}] {key} "{glob}"'
    what = "property key" if rule.startswith("properties.") else "message type" if rule == "billable_types" else "event"
    return f"{name} matched no {what} read: globs and names match exactly, case included (segbill inspect lists them)."


def _nothing_selected(replay: Replay, mapping: Mapping, by_flags: bool) -> None:
    """Track messages were read but the include/exclude rules or the time window left every one
    out, or no message was of a type that bills: nothing was billed, which is never what a
    backfill meant, so it is said and exits 2 like an empty input. The warning names why."""
    if not replay.selected_nothing():
        return
    tally = replay.tally
    done = f"nothing was {'converted' if tally.dry_run else 'sent'} (exit 2)"
    types = replay.only_other_types()
    if types:
        read = ", ".join(f"{kind} {count:,}" for kind, count in sorted(types.items()))
        billed = ", ".join(["track", *mapping.events.billable_types])
        replay.nothing_selected(f"no message of a type that bills ({billed}) was read, only: {read}; {done}.")
        return
    by_rules, by_window = replay.left_out_by_rules(), replay.left_out_by_window()
    names = []
    if by_rules:
        names.append("--event/--exclude-event" if by_flags else "the include/exclude rules")
    if by_window:
        since, until = replay.options.since is not None, replay.options.until is not None
        names.append("--since/--until" if since and until else "--since" if since else "--until")
    replay.nothing_selected(f"{' and '.join(names)} left out every event read ({by_rules + by_window:,}): {done}.")


def _window(since: str | None, until: str | None) -> tuple[int | None, int | None]:
    """--since and --until in milliseconds: a window that can hold no event is a usage error
    for every command (check or reconcile would exit 1, which a cron job reads as "something
    is missing")."""
    start, end = _time_option("--since", since), _time_option("--until", until)
    if start is not None and end is not None and start >= end:
        fail(f"--since {since} is not before --until {until}: no event could be selected.")
    return start, end


def _time_option(name: str, value: str | None) -> int | None:
    if value is None:
        return None
    millis = parse_time(value, date_alone=True)
    if millis is None:
        fail(f"{name} {value!r} is not a date or time such as 2024-01-31 or 2024-01-31T12:00:00Z.")
    return millis


def _shard_option(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    k, _, n = value.partition("/")
    if not (k.isdigit() and n.isdigit() and 0 <= int(k) < int(n)):
        fail(f"--shard {value!r} is not K/N with 0 <= K < N, such as 0/4.")
    return int(k), int(n)


def _concurrency_option(value: str) -> int | None:
    """Requests in flight: None for auto. Checked in a dry run too: a wrong option is never ignored."""
    if value == "auto":
        return None
    if not (value.isdigit() and 1 <= int(value) <= 256):
        fail(f"--concurrency {value!r} is not auto or a number from 1 to 256.")
    return int(value)


def _delivery_options(
    target: Target,
    api_url: str | None,
    api_key: str | None,
    batch_size: int | None,
    width: int | None,
    rate: float | None,
    timeout: float,
    max_retries: int,
) -> DeliveryOptions:
    url, key = _endpoint(target, api_url, api_key, "use --dry-run")
    from segbill.delivery import DeliveryOptions

    return DeliveryOptions(url, key, batch_size or target.default_batch, width, timeout, max_retries, rate)


def _endpoint(target: Target, api_url: str | None, api_key: str | None, instead: str) -> tuple[str, str]:
    """The platform's URL and key from the options or the environment; a warning when the key
    would travel unencrypted."""
    if api_url is None and os.environ.get(target.url_env) == "":
        fail(f"${target.url_env} is set but empty; unset it to use {target.default_url}, or set it to the platform's URL.")
    url = api_url or os.environ.get(target.url_env) or target.default_url
    if "@" in urlsplit(url).netloc or "@" in url.partition("/")[0]:  # the URL itself is never shown: it may hold a password
        given = "--api-url" if api_url else f"${target.url_env}"
        fail(
            f"{given} holds a user name or password (user:password@host): segbill does not use them; "
            f"give the URL without them and the key with {target.key_env} or --api-key."
        )
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        fail(f"--api-url {url!r} is not an http(s) URL such as {target.default_url}.")
    key = api_key or os.environ.get(target.key_env)
    if not key:
        fail(f"no API key for {target.label}: set {target.key_env} (or pass --api-key), or {instead}.")
    if parts.scheme == "http" and parts.hostname not in LOCAL_HOSTS and not parts.hostname.startswith("127."):
        warn(f"warning: {parts.hostname} is reached over plain http: the API key travels unencrypted.")
    return url, key


def _total_bytes(sources: list[Source]) -> int | None:
    """What the inputs hold, or None when a stream's size is not known until it ends."""
    if any(source.is_stream for source in sources):
        return None
    return sum(source.size or 0 for source in sources)


def _check_dead_letter_path(dead_letter: Path, sources: list[Source], config: Path | None) -> None:
    """A dead-letter path segbill can append to without spoiling what is there: never an input,
    the --config file, nor any existing file that is no dead-letter file (its first line)."""
    if dead_letter.is_dir():
        fail(f"--dead-letter {dead_letter} is a folder; give a file path.")
    if not dead_letter.parent.is_dir():
        fail(f"--dead-letter {dead_letter}: the folder {dead_letter.parent} does not exist.")
    existed = dead_letter.exists()
    try:  # really open it (access() says yes to root, and knows nothing of /proc or read-only mounts)
        if existed:
            os.close(os.open(dead_letter, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK))  # a FIFO must not block
        else:
            target = dead_letter.resolve()  # a symlink to a file still to be created: probe that file
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            target.unlink()  # created only when something is written
    except OSError as error:
        fail(f"--dead-letter {dead_letter}: cannot write there ({error.strerror}); pass --dead-letter PATH.")
    if not existed:
        return
    written = dead_letter.stat()
    for source in sources:
        if source.path is None or not _same_file(source.path, written):
            continue
        retry = source.path.with_name(f"retry-{source.path.name}")
        if source.path.resolve() == dead_letter.resolve() and not source.path.is_symlink():
            fail(
                f"{source.name} is both an input and the dead-letter file. Move it first "
                f"(mv {source.name} {retry}) or pass another --dead-letter."
            )
        fail(  # a link: moving it moves the link, a copy is another file
            f"{source.name} is the dead-letter file {dead_letter} under another name (a link): reading it while "
            f"writing it would never end. Send a copy (cp {source.name} {retry}) or pass another --dead-letter."
        )
    if config is not None and _one_file(dead_letter, config):
        fail(
            f"--dead-letter {dead_letter} and --config {config} are one file{_alias(dead_letter, config)}: dead letters "
            "appended to it would spoil the mapping; give --dead-letter a path of its own."
        )
    try:
        other = holds_other_data(dead_letter)
    except OSError as error:
        fail(
            f"--dead-letter {dead_letter}: cannot read it to see that it holds dead letters ({error.strerror}); pass --dead-letter PATH."
        )
    if other:
        fail(
            f"--dead-letter {dead_letter} holds something else (its first line is no segbill dead-letter entry): "
            "dead letters appended to it would spoil it; give a new path, or that of a dead-letter file."
        )


SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")  # what SQLite writes beside a state file, named after it


def _check_own_files(written: dict[str, Path | None], sources: list[Source]) -> None:
    """Every file a command writes is a file of its own: two options naming one file (the same
    path, or another name for it: a hard link, a symlink) would write over each other (SQLite's
    pages over the dead letters, which the summary still counts), and a state file read as an
    input is no export. Refused (exit 2) before anything is read or written."""
    given = [(option, path) for option, path in written.items() if path is not None]
    for option, path in given:
        if _symlink_loop(path):
            fail(f"{option} {path} is a link that leads back to itself (a symlink loop); give a file path.")
    for at, (option, path) in enumerate(given):
        for other_option, other in given[at + 1 :]:
            for side in ("", *SQLITE_SIDE_FILES) if other_option == "--state" else ("",):
                written_too = Path(f"{other}{side}")
                if _one_file(path, written_too):
                    what = (
                        f"is the file {written_too} SQLite keeps beside {other_option} {other}"
                        if side
                        else f"and {other_option} {other} are one file"
                    )
                    fail(
                        f"{option} {path} {what}{_alias(path, written_too)}: each would write over the other; give each its own path."
                    )
        if option != "--state":
            continue
        for source in sources:
            if source.path is not None and _one_file(source.path, path):
                fail(f"{source.name} is both an input and {option} {path}{_alias(source.path, path)}: a state file is no export.")


def _symlink_loop(path: Path) -> bool:
    """Whether following `path`'s links never ends: no file can be made there, and resolving
    it raises."""
    try:
        path.stat()
    except OSError as error:
        return error.errno == errno.ELOOP
    return False


def _one_file(path: Path, other: Path) -> bool:
    """Whether two paths lead to one file: the same path once links are followed (the file
    may not exist yet), or one file (device and inode) under two names."""
    if path.resolve() == other.resolve():
        return True
    try:
        return _same_file(path, other.stat())
    except OSError:  # `other` does not exist (yet): two files
        return False


def _alias(path: Path, other: Path) -> str:
    return "" if os.path.abspath(path) == os.path.abspath(other) else " under another name (a link)"


def _same_file(path: Path, written: os.stat_result) -> bool:
    """Whether `path` is the file of `written` (device and inode), whatever names lead to it."""
    try:
        return os.path.samestat(path.stat(), written)
    except OSError:  # gone since it was listed: reading it says so
        return False


def _replace_dry_run_dead_letters(dead_letter: Path) -> None:
    """A dry run's dead-letter file holds that dry run alone: an earlier preview is replaced,
    a send's dead letters never are. Only a regular file is replaced: /dev/null or a FIFO is
    written as it is (reading /dev/full for a first line would never end)."""
    if not dead_letter.is_file():
        return
    if not written_by_dry_runs(dead_letter):
        fail(f"--dead-letter {dead_letter} holds dead letters of a send; a dry run replaces its file: name another one.")
    dead_letter.unlink()


def _destination(url: str) -> str:
    """The URL as the state remembers it: the same host written another way is the same place."""
    parts = urlsplit(url)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{parts.path.rstrip('/')}"


def _flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except OSError:
        # The reader went away (| head) or the disk is full: point stdout at /dev/null so exit
        # does not complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _summarize(tally: Tally, as_json: bool) -> None:
    if as_json:
        summary = orjson.dumps(tally.as_dict()).decode() + "\n"
        stream = sys.stderr if tally.dry_run else sys.stdout
        try:
            stream.write(summary)
            stream.flush()
        except OSError as error:  # stdout on a full disk (--json >> runs.jsonl): keep it in the log
            _flush_stdout()
            sys.stderr.write(f"segbill: error: cannot write the summary to stdout ({error.strerror}); here it is:\n{summary}")
        return
    render_summary(tally, sys.stderr, terminal=sys.stderr.isatty())


def main() -> None:
    """Console entry point: no tracebacks for users, whatever happens."""
    hold_closed_streams()
    try:
        app()
    except SystemExit:
        raise
    except SourceUnreadable as error:  # inspect, check, reconcile: nothing was sent
        print(f"segbill: error: {error}; nothing was sent.", file=sys.stderr)
        sys.exit(int(ExitCode.FATAL))
    except Exception as error:  # a bug of ours: one line for the user, details on request
        if os.environ.get("SEGBILL_DEBUG"):
            raise
        print(f"segbill: internal error: {type(error).__name__}: {error} (set SEGBILL_DEBUG=1 for details)", file=sys.stderr)
        sys.exit(int(ExitCode.FATAL))

"""`segbill inspect` on the command line: the report as rich tables or plain text, and the command."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Column

from segbill.cli.tables import literal_table
from segbill.cli.usage import fail, inputs, report_stream, say_empty, streaming_gc
from segbill.inspection import Inspection, _fraction
from segbill.report import ExitCode

# --- rendering ------------------------------------------------------------------------------

SHOWN_EVENTS = 100  # the terminal and plain forms; --json has everything
SHOWN_PROPERTY_EVENTS = 25
_TIMES = {"first", "last"}  # columns rich must not cut: times are the point of them


@dataclass
class _Section:
    title: str
    columns: Sequence[str]  # a name starting with ">" is right-aligned (numbers)
    rows: list[Sequence[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _n(value: int) -> str:
    return f"{value:,}"


def _pct(fraction: float) -> str:
    return f"{100 * fraction:.1f}%"


def _sections(result: dict[str, Any]) -> tuple[list[str], list[_Section]]:
    """The report as a header and titled tables, for both the terminal and the plain form."""
    track = result["track"]
    unreadable = sum(entry["count"] for entry in result["unreadable"].values())
    header = [
        f"segbill inspect: {_n(result['records'])} records in {_n(result['files'])} file(s): "
        f"{_n(result['records'] - unreadable)} messages, {_n(unreadable)} unreadable"
    ]
    if result["interrupted"]:
        header.append("Interrupted: this report covers only what was read before Ctrl-C.")
    sections = []

    messages = sum(result["types"].values())
    if messages:
        types = _Section("Message types", ("type", ">messages", ">share"))
        for name, count in result["types"].items():
            types.rows.append((name, _n(count), _pct(_fraction(count, messages))))
        sections.append(types)

    if result["unreadable"]:
        bad = _Section("Unreadable lines (send dead-letters them)", ("kind", ">lines", "first ones"))
        for kind, entry in result["unreadable"].items():
            bad.rows.append((kind, _n(entry["count"]), ", ".join(entry["examples"])))
        sections.append(bad)

    if not track["messages"]:
        header.append("No track messages: nothing here would be billed.")
        return header, sections
    if track["first_time"] is None:
        header.append(f"Track messages: {_n(track['messages'])}, none with a readable time (send dead-letters them).")
    else:
        header.append(f"Track messages: {_n(track['messages'])}, from {track['first_time']} to {track['last_time']}.")

    quality = _Section("Track message checks", ("check", ">messages", "what send does"))
    quality.rows += [
        ("without userId", _n(track["without_user_id"]), "dead-letters them, unless --customer-from names a field they have"),
        ("without messageId", _n(track["without_message_id"]), "derives a stable id from the message"),
        ("without a readable time", _n(track["without_time"]), "dead-letters them"),
    ]
    optional = (
        ("without an event name", "without_event", "dead-letters them"),
        ("properties not an object", "bad_properties", "dead-letters them"),
        ("two properties, one flat key", "property_conflicts", "dead-letters them"),
    )
    quality.rows += [(label, _n(track[key]), note) for label, key, note in optional if track[key]]
    sections.append(quality)

    events = _Section("Events", ("event", ">messages", "first", "last"))
    listed = result["events"] + ([result["other_events"]] if result["other_events"] else [])
    for event in listed[:SHOWN_EVENTS]:
        events.rows.append((_event_name(event), _n(event["messages"]), event["first_time"] or "-", event["last_time"] or "-"))
    if len(listed) > SHOWN_EVENTS:
        events.notes.append(f"... and {len(listed) - SHOWN_EVENTS} more (--json lists them all).")
    if result["other_events"]:
        events.notes.append(f"Names past the first {_n(result['limits']['events'])} are counted together as (other events).")
    sections.append(events)

    candidates = result["customer_fields"]
    unusable = any(candidate["unusable"] for candidate in candidates)
    fields = _Section(
        "Customer id candidates (in track messages)",
        ("field", ">messages", ">share", ">distinct") + ((">unusable",) if unusable else ()),
    )
    for candidate in candidates:
        distinct = _n(candidate["distinct"]) + ("+" if candidate["distinct_capped"] else "")
        row = (candidate["path"], _n(candidate["messages"]), _pct(candidate["fraction"]), distinct)
        fields.rows.append(row + ((_n(candidate["unusable"]),) if unusable else ()))
    if unusable:
        fields.notes.append("unusable: present, but not an id send accepts (empty, a boolean, an object, a fraction).")
    fields.notes.append("send bills on userId unless --customer-from names another field.")
    sections.append(fields)

    sections.append(_repeats_section(result["message_ids"], result["limits"]["message_ids"]))

    for event in listed[:SHOWN_PROPERTY_EVENTS]:
        section = _Section(f"Properties of {_event_name(event)} ({_n(event['messages'])} messages)", ("key", ">present", "types"))
        for key in event["properties"]:
            kinds = ", ".join(
                name if count == key["present"] else f"{name} {_pct(_fraction(count, key['present']))}"
                for name, count in key["types"].items()
            )
            section.rows.append((key["key"], _pct(key["fraction"]), kinds))
        if not event["properties"]:
            section.notes.append("No properties.")
        if event["untracked_properties"]:
            section.notes.append(
                f"More keys than the first {_n(result['limits']['properties_per_event'])}: "
                f"{_n(event['untracked_properties'])} occurrences not described."
            )
        sections.append(section)
    if len(listed) > SHOWN_PROPERTY_EVENTS:
        sections[-1].notes.append(f"Properties of {len(listed) - SHOWN_PROPERTY_EVENTS} more events: see --json.")
    return header, sections


def _event_name(event: dict[str, Any]) -> str:
    return "(other events)" if event["name"] is None else event["name"]


def _repeats_section(ids: dict[str, Any], cap: int) -> _Section:
    repeats = _Section("Repeated messageIds (track messages)", ("", ">messageIds"))
    repeats.rows += [
        ("seen more than once", _n(ids["repeated"])),
        ("of those, with another event time", _n(ids["repeated_time_differs"])),
        ("extra copies", _n(ids["extra_copies"])),
    ]
    if ids["repeated_time_differs"]:
        repeats.notes.append("Lago's ClickHouse event store counts a repeat with another time as a second event: billed twice.")
        for example in ids["examples"]:
            times = [example[key] or "no readable time" for key in ("time", "first_time")]
            repeats.notes.append(f"  {example['where']}: {example['message_id']} at {times[0]}, first seen at {times[1]}")
    elif ids["repeated"]:
        repeats.notes.append("Every repeat has its first time: the platforms keep one copy of each messageId.")
    if ids["cap_hit"]:
        repeats.notes.append(f"Only the first {_n(cap)} messageIds were tracked: the counts above are lower bounds.")
    return repeats


def render_inspect(result: dict[str, Any], stream: IO[str], *, terminal: bool) -> None:
    """Rich tables on a terminal; aligned plain text otherwise (files, pipes, logs)."""
    header, sections = _sections(result)
    if terminal:
        console = Console(file=stream, highlight=False)
        for line in header:
            console.print(line, markup=False)
        for section in sections:
            columns: list[Column] = []
            for name in section.columns:
                number = name.startswith(">")
                columns.append(Column(name.lstrip(">"), justify="right" if number else "left", no_wrap=number or name in _TIMES))
            console.print()
            console.print(literal_table(section.title, section.rows, columns, title_style="bold"))
            for note in section.notes:
                console.print(note, markup=False)
        return
    lines = list(header)
    for section in sections:
        lines += ["", section.title]
        grid = [tuple(name.lstrip(">") for name in section.columns), *section.rows]
        widths = [max(len(row[i]) for row in grid) for i in range(len(section.columns))]
        for row in grid:
            cells = [
                cell.rjust(width) if name.startswith(">") else cell.ljust(width)
                for cell, width, name in zip(row, widths, section.columns, strict=False)
            ]
            lines.append(("  " + "  ".join(cells)).rstrip())
        lines += [f"  {note}" for note in section.notes]
    stream.write("\n".join(lines) + "\n")


# --- command --------------------------------------------------------------------------------


def inspect_command(
    paths: Annotated[
        list[str] | None,
        typer.Argument(
            help="Files or folders of Segment exports, read exactly as send reads them (NDJSON, gzip or not; "
            "folders recursively). '-' or nothing reads stdin.",
            show_default=False,
        ),
    ] = None,
    json_: Annotated[
        bool,
        typer.Option("--json", help="Print the report as one JSON object on stdout (its shape: segbill/inspection.py)."),
    ] = False,
    customer_from: Annotated[
        str | None,
        typer.Option(
            "--customer-from",
            metavar="PATH",
            help="Also report this dotted path as a customer id candidate (how many track messages have it, "
            "how many distinct values), for example properties.plan_key.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Describe a Segment export before sending it, in one pass: message types, unreadable lines,
    events and their time range, which fields could be the customer id, property keys and types,
    and repeated messageIds. Sends nothing.

    Exit codes: 0 done; 2 usage error, or an input with no record at all; 130 interrupted (the report
    covers what was read).
    """
    if customer_from is not None and not all(customer_from.split(".")):
        fail(f"--customer-from {customer_from!r} is not a dotted path such as userId or context.groupId.")
    sources = inputs(paths)
    inspection = Inspection(customer_from=customer_from)
    try:
        with streaming_gc():
            inspection.read(sources)
    except KeyboardInterrupt:
        inspection.interrupted = True
    result = inspection.result()
    out = report_stream()
    try:
        if json_:
            out.write(orjson.dumps(result).decode() + "\n")
        else:
            render_inspect(result, out, terminal=out.isatty())
        out.flush()
    except BrokenPipeError:  # | head: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if inspection.interrupted:
        raise typer.Exit(int(ExitCode.INTERRUPTED))
    if not inspection.records:
        say_empty(sources)
        raise typer.Exit(int(ExitCode.USAGE))
    raise typer.Exit(int(ExitCode.OK))

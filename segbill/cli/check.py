"""`segbill check`'s report: verdicts as a rich table on a terminal, plain lines for logs."""

from __future__ import annotations

from typing import IO

from rich.console import Console

from segbill.check import CheckResult, Group
from segbill.cli.tables import literal_table
from segbill.segment import iso_millis


def render_check(result: CheckResult, stream: IO[str], *, terminal: bool) -> None:
    """Verdicts with counts and, for each, the codes, subscriptions and times behind it."""
    data = result.as_dict()
    checked = "events a send would deliver" if result.complete else "events checked"
    title = f"segbill check against {result.tally.target}: {result.checked:,} {checked}"
    if result.stopped:
        title += f"; stopped early ({result.stopped})"
    elif result.tally.interrupted:
        title += "; interrupted"
    if not result.complete:
        title += ": INCOMPLETE, the counts cover what was checked"
    rows: list[tuple[str, str, str]] = []
    for verdict in result.shown:
        count = result.verdicts[verdict]
        if not count and verdict != "billable":
            continue
        why = [result.meaning(verdict)]
        if verdict != "billable":
            why += [f"{kind} on {scope}: {_span(g)}" for kind, scope, g in result.top(verdict)]
        rows.append((verdict, f"{count:,}", "\n".join(why)))
    if not result.complete:
        rows.append(("not billed", f"{result.unbilled:,}", "of the events checked; the rest is unknown"))
    else:
        rows.append(
            ("not billed", f"{result.unbilled:,}", "every event will be billed" if result.checked and not result.unbilled else "")
        )
    skipped = ", ".join(f"{reason} {count:,}" for reason, count in data["skipped_by_reason"].items())
    rows.append(
        ("read", f"{result.tally.read:,}", f"records; skipped {data['skipped']:,}" + (f" ({skipped})" if skipped else ""))
    )
    if data["dead_lettered"]:
        reasons = ", ".join(f"{reason} {count:,}" for reason, count in data["dead_lettered_by_reason"].items())
        rows.append(
            (
                "dead-lettered",
                f"{data['dead_lettered']:,}",
                f"records send would dead-letter ({reasons}); segbill send --dry-run names each",
            )
        )
    if not result.complete:
        rows.append(
            (
                "not checked",
                f"{data['not_attempted']:,}",
                "records read, not checked before the run ended; records after them were not read",
            )
        )
    rows.append(("requests", f"{result.requests:,}", f"reads of the organization, {result.retries:,} retries"))
    if not result.checked and result.complete:
        rows.append(("nothing checked", "0", "no event in the input would be sent: check the paths and filters"))
    write_table(title, rows, stream, terminal)


def _span(group: Group) -> str:
    if group.first == group.last:
        return f"{group.events:,} at {iso_millis(group.first)}"
    return f"{group.events:,} from {iso_millis(group.first)} to {iso_millis(group.last)}"


def write_table(title: str, rows: list[tuple[str, str, str]], stream: IO[str], terminal: bool) -> None:
    """A rich table on a terminal, plain indented lines for logs (shared with reconcile)."""
    if terminal:
        Console(file=stream).print(literal_table(title, rows))
        return
    stream.write(title + "\n")
    for name, value, note in rows:
        lines = note.split("\n")
        stream.write(f"  {name:<22} {value:>10}  {lines[0]}".rstrip() + "\n")
        for line in lines[1:]:
            stream.write(f"  {'':<22} {'':>10}    {line}\n")
    stream.flush()

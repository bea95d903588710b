"""The human summary of a send or dry run: a rich table on a terminal, plain lines for logs."""

from __future__ import annotations

import shlex
from collections import Counter
from typing import IO

from rich.console import Console

from segbill.cli.tables import literal_table
from segbill.report import Tally

RESUMED_SHOWN = 3  # files named in the human summary's "resumed at"; --json lists them all


def _breakdown(counts: Counter[str]) -> str:
    return ", ".join(f"{reason} {count:,}" for reason, count in sorted(counts.items()))


def render_summary(tally: Tally, stream: IO[str], *, terminal: bool) -> None:
    """The human summary: a rich table on a terminal, plain `name value` lines for logs."""
    data = tally.as_dict()
    done = "converted" if tally.dry_run else "delivered"
    rows: list[tuple[str, str, str]] = [
        ("read", f"{tally.read:,}", "records: one per non-blank line, or per message in a batch line"),
        (done, f"{tally.delivered:,}", "printed to stdout" if tally.dry_run else ""),
    ]
    if tally.already_delivered:
        rows.append(("already delivered", f"{tally.already_delivered:,}", "of those delivered: the platform held them already"))
    if tally.missing_resent:
        rows.append(
            (
                "missing resent",
                f"{tally.missing_resent:,}",
                "the ledger had them as delivered; reconcile found them missing on the platform",
            )
        )
    rows += [
        ("skipped", f"{data['skipped']:,}", _breakdown(tally.skipped)),
        ("dead-lettered", f"{data['dead_lettered']:,}", _breakdown(tally.dead_lettered)),
    ]
    if tally.not_attempted or not tally.dry_run:
        rows.append(("not attempted", f"{tally.not_attempted:,}", ""))
    if tally.unanswered:
        rows.append(
            ("unanswered", f"{tally.unanswered:,}", "sent, no final answer before the stop: maybe stored; a rerun resends them")
        )
    if not tally.dry_run:
        rows.append(("requests", f"{tally.requests:,}", f"{tally.retries:,} retries"))
    if tally.files_already_done:
        rows.append(
            ("files skipped", f"{tally.files_already_done:,}", f"finished by an earlier run with --state {tally.state_file}")
        )
    if tally.resumed_at:
        more = len(tally.resumed_at) - RESUMED_SHOWN
        rows.append(
            (
                "resumed at",
                ", ".join(tally.resumed_at[:RESUMED_SHOWN]),
                f"and {more:,} more file{'s' if more > 1 else ''}" if more > 0 else "file:line",
            )
        )
    rate = data["events_per_second"]
    rows.append(("elapsed", f"{data['elapsed_seconds']:.2f} s", f"{rate:,.0f} records/s" if rate else ""))
    rows.append(("run", tally.run_id, f"{data['started_at']} to {data['ended_at']}"))
    mode = "dry run" if tally.dry_run else "send"
    title = f"segbill {mode} to {tally.target}"
    if tally.interrupted:
        title += ": interrupted"
    elif tally.stopped:
        title += f": stopped early ({tally.stopped})"
    if tally.dead_letter_file and tally.dead_lettered:
        rows.append(("dead-letter file", tally.dead_letter_file, "replay it with segbill send"))
    elif tally.dead_lettered and tally.dry_run:
        rows.append(("dead-letter file", "not written", "a dry run writes one only with --dead-letter PATH"))
    rows.extend(("warning", text, "") for text in tally.warnings)
    advice = _next_step(tally)
    if terminal:
        console = Console(file=stream, stderr=True)
        console.print(literal_table(title, rows))
        if advice:
            console.print(advice, markup=False, highlight=False)
        return
    stream.write(title + "\n")
    for name, value, note in rows:
        stream.write(f"  {name:<16} {value}{'  (' + note + ')' if note else ''}\n")
    if advice:
        stream.write(advice + "\n")
    stream.flush()


def _next_step(tally: Tally) -> str | None:
    """What is left to do. After a stop: the same command, resumed by --state. And whatever
    ended the run: the events dead-lettered `unreachable` are only in the dead-letter file, since
    a rerun with --state resumes past them (they have their outcome), so they must be replayed
    from it. A rerun that skipped records dead-lettered before says where they are too: it
    exits 0 without having sent them."""
    steps: list[str] = []
    if not tally.dry_run and (tally.interrupted or tally.stopped):
        first = "To resume, run" if tally.interrupted else "Once the cause is fixed, run"
        if tally.state_file:
            steps.append(f"{first} the same command again: --state {tally.state_file} continues where this run stopped.")
        else:
            steps.append(
                f"{first} the same command again: without --state it reads everything again (the platform keeps "
                "one copy of each event); add --state FILE to make the next run resumable."
            )
    unreachable = tally.dead_lettered["unreachable"]
    if unreachable and tally.state_file and tally.dead_letter_file:
        then = "Then" if steps else "Once the platform answers,"
        dead, retry, state = (
            shlex.quote(path) for path in (tally.dead_letter_file, f"retry-{tally.run_id}.jsonl", tally.state_file)
        )
        steps.append(
            f"{then} replay the {unreachable:,} events dead-lettered unreachable: the same command does not send them "
            f"again, they are only in {tally.dead_letter_file}. Move it first (segbill does not read the file it appends "
            f"to) and send it with the same options and --state: mv {dead} {retry} && segbill send {retry} --to "
            f"{tally.target} --state {state} ..."
        )
    earlier = tally.skipped["dead_lettered_before"]
    if earlier and tally.state_file and not tally.dry_run:
        steps.append(
            f"{earlier:,} records were skipped as dead-lettered by an earlier run on --state {tally.state_file}: "
            "they were not sent, and are in that run's dead-letter file; replay it, if not done yet, once fixed."
        )
    return "\n".join(steps) or None

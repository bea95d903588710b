"""`segbill reconcile`'s report: totals and the worst pairs, as check prints its verdicts."""

from __future__ import annotations

from typing import IO

from segbill.cli.check import write_table
from segbill.reconcile import TOP, Reconciliation
from segbill.segment import iso_millis


def _replay_hint(result: Reconciliation, path: str) -> str:
    return f"replay: segbill send {path} --to {result.target.name}, with the backfill's mapping and --state"


def _ledger_note(result: Reconciliation) -> str:
    """What reconcile took out of the ledger of --state."""
    kept = "none taken out" if result.confirmed else f"{result.state} left as it was"
    if not result.missing:
        return f"{kept}: nothing is missing"
    if not result.forgotten:
        return f"{kept}: it has none of the missing as delivered (never sent with it, or dead-lettered)"
    return (
        f"missing events {result.state} had as delivered, and no longer has; none of its files is finished any "
        "more: a send with it reads its files again and sends them"
    )


def render_reconcile(result: Reconciliation, stream: IO[str], *, terminal: bool) -> None:
    """Totals, then the worst subscriptions, codes and days."""
    span = (
        f" from {iso_millis(result.start)} to {iso_millis(result.end)}"
        if result.start is not None and result.end is not None
        else ""
    )
    pair = ", ".join(result.target.require_reading().names)
    title = f"segbill reconcile against {result.target.name}: {result.pairs:,} ({pair}) pairs{span}"
    if result.stopped:
        title += f"; stopped early ({result.stopped})"
    elif result.interrupted:
        title += "; interrupted"
    if not result.complete:
        title += ": INCOMPLETE, not a reconciliation"
    rows: list[tuple[str, str, str]] = [
        ("expected", f"{result.expected:,}", "events the export bills (what send delivers)"),
        ("found", f"{result.found:,}", "of them, held by the platform"),
        (
            "missing",
            f"{result.missing:,}",
            _replay_hint(result, result.missing_file) if result.missing_file else "expected, not on the platform",
        ),
    ]
    if not result.complete:
        rows.append(
            (
                "unchecked",
                f"{result.unchecked:,}",
                "expected, not compared before the run ended: neither found nor missing; run it again",
            )
        )
    rows.append(
        (
            "extra",
            f"{result.extra:,}",
            "on the platform in scope, from no event of the export" + ("" if result.complete else " (incomplete)"),
        )
    )
    if result.none_found and result.state is None:
        note = (
            "pairs with none of their events on the platform: if the send mapped customers or codes otherwise "
            "(--customer-from, rename), its events are there, and a replay would bill them twice; reconcile with its options"
        )
        rows.append(("none found", f"{result.none_found:,}", note))
    if result.state is not None:
        rows.append(("forgotten", f"{result.forgotten:,}", _ledger_note(result)))
        if result.confirmed:
            note = f"found events {result.state} had as sent without an answer: delivered now, so a send does not resend them"
            rows.append(("confirmed", f"{result.confirmed:,}", note))
    for dimension, worst in result.breakdown(TOP).items():
        if worst:
            lines = [f"{key}: {row['missing']:,} missing, {row['extra']:,} extra" for key, row in worst.items()]
            rows.append((f"worst {dimension}", "", "\n".join(lines)))
    rows.append(("requests", f"{result.requests:,}", f"reads of the platform, {result.retries:,} retries"))
    rows.extend(("warning", text, "") for text in result.warnings)
    if not result.expected and result.complete:
        rows.append(("nothing reconciled", "0", "no event in the input would be sent: check the paths and filters"))
    write_table(title, rows, stream, terminal)

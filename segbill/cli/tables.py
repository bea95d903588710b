"""Rich tables that show their title and cells as they are."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rich.table import Column, Table
from rich.text import Text


def literal_table(
    title: str, rows: Iterable[Sequence[str]], columns: Sequence[Column] = (), *, title_style: str = "table.title"
) -> Table:
    """A table whose title and cells are never read as markup: they hold event names, ids and
    config keys, and `[/x] Call` would stop the report with an error (after a send delivered)
    while `[red]` would hide itself. Headers are shown only when `columns` are given."""
    table = Table(*columns, title=Text(title, style=title_style), show_header=bool(columns), title_justify="left")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    return table

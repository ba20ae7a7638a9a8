"""The one table renderer of the command line: every table sbd prints on stderr.

`render_table` turns a title, headers and rows of already formatted cells into a rich
table with one look: the title left, a left-aligned label column first (when there is
one) and right-aligned numbers. `metric_table` renders rows of dicts by (key, header)
columns with one cell formatter. Cells and titles are plain text (file names and record
names are never read as markup; control characters are shown visibly). CLI plumbing only:
the numbers come from the library.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from rich.table import Table
from rich.text import Text

from sbdcli.artifacts.printable import visible


def render_table(
    title: str,
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    caption: str | None = None,
    label_column: bool = True,
    no_wrap: bool = False,
) -> Table:
    """A rich table; the first column is a left-aligned label unless `label_column=False`;
    `no_wrap` keeps every cell on one line (wide numeric tables)."""
    plain_caption = Text(visible(caption)) if caption is not None else None
    table = Table(title=Text(visible(title)), title_justify="left", caption=plain_caption)
    for i, header in enumerate(headers):
        left = label_column and i == 0
        table.add_column(header, justify="left" if left else "right", no_wrap=no_wrap)
    for row in rows:
        table.add_row(*(Text(visible(str(cell))) for cell in row))
    return table


def metric_table(
    title: str,
    columns: Sequence[tuple[str, str]],
    rows: Sequence[dict[str, Any]],
    cell: Callable[[Any], str],
    *,
    caption: str | None = None,
    numbered: bool = False,
    no_wrap: bool = False,
) -> Table:
    """One line per dict in `rows`, one column per (key, header); `numbered` adds '#'."""
    headers = (["#"] if numbered else []) + [header for _, header in columns]
    lines = [
        ([str(i)] if numbered else []) + [cell(row.get(key)) for key, _ in columns]
        for i, row in enumerate(rows, start=1)
    ]
    return render_table(title, headers, lines, caption=caption, label_column=False, no_wrap=no_wrap)

"""The one progress-bar factory of the command line: live bars on stderr, terminals only.

`progress_bar(...)` builds every bar sbd draws (prepare, train, sampling, evaluation, the
demo) from the same columns; `counting(...)` wraps it for the sampling stages, which count
samples and network calls. CLI plumbing only.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from sbdcli.cli._app import console

NARROW = 110
"""Terminal width below which bars drop their elapsed time and draw a short bar."""


def progress_bar(
    *fields: str | ProgressColumn,
    amount: ProgressColumn | None = None,
    spinner: bool = False,
    elapsed: bool = True,
    eta: bool = True,
    transient: bool = True,
    show: bool = True,
) -> Progress:
    """A rich bar on stderr: [spinner] description, bar, done/total, `fields`, time, eta.

    `fields` are rich column templates ("loss {task.fields[loss]:.4f}") or columns;
    `amount` replaces the done/total column; `show=False` (e.g. not process 0) hides it.
    The bar draws only on a terminal, so logs and pipes stay clean. Below NARROW columns
    (an 80-column terminal) the bar shrinks and the elapsed time goes, so that the counts,
    the fields and the eta keep their place.
    """
    narrow = console.width < NARROW
    columns: list[str | ProgressColumn] = [SpinnerColumn()] if spinner else []
    columns += [TextColumn("[bold]{task.description}"), BarColumn(bar_width=8 if narrow else 24)]
    columns.append(amount or MofNCompleteColumn())
    columns += [TextColumn(f) if isinstance(f, str) else f for f in fields]
    if elapsed and not narrow:
        columns.append(TimeElapsedColumn())
    if eta:
        columns += [TextColumn("eta"), TimeRemainingColumn()]
    return Progress(
        *columns,
        console=console,
        transient=transient,
        disable=not (show and console.is_terminal),
    )


@contextlib.contextmanager
def counting(what: str, total: int | None) -> Iterator[tuple[Callable[[int], None], Any]]:
    """A sampling bar; yields (advance samples by n, the consumer of the sampler's call
    events, which counts network calls)."""
    bar = progress_bar("samples", "{task.fields[rate]}", eta=False)
    task = bar.add_task(what, total=total, rate="")
    calls, start = [0], time.perf_counter()

    def on_call(_event: Any) -> None:
        calls[0] += 1
        rate = calls[0] / max(time.perf_counter() - start, 1e-9)
        bar.update(task, rate=f"{calls[0]} calls, {rate:.1f} calls/s")

    with bar:
        yield (lambda n: bar.advance(task, n)), on_call

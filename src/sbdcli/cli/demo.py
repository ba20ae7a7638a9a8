"""`sbd demo`: the end-to-end job on the embedded topic-markov language.

A thin client of `sbdcli.demo.run_demo`: it renders progress and the final table on
stderr. See the library module for the steps and the artifacts.
"""

from __future__ import annotations

from typing import Any

from sbdcli.cli._app import app, console, term
from sbdcli.cli.options import config_options
from sbdcli.cli.progress import progress_bar
from sbdcli.cli.tables import fit_columns, metric_table
from sbdcli.config import DemoConfig

COLUMNS = (
    ("stage", "stage"),
    ("draft", "draft"),
    ("strategy", "strategy"),
    ("gamma", "gamma"),
    ("gen_ppl_per_sample_mean", "Gen PPL (per-sample)"),
    ("gen_ppl_corpus", "Gen PPL (corpus)"),
    ("entropy_per_sample_mean", "entropy"),
    ("nfe_per_sample", "NFE"),
    ("seconds_per_sample", "s / sample"),
)
DROP_ORDER = ("gen_ppl_corpus", "strategy", "draft")
"""Columns left out, first to last, while the table is wider than the terminal (the rows'
names are then listed under it by row number)."""


def _cell(value: Any) -> str:
    from sbdcli.evaluate.report import cell  # the library (torch) loads when the command runs

    return cell(value, compact=True)


def results_table(rows: list[dict[str, Any]], width: int) -> tuple[Any, list[str]]:
    """A rich table of the demo's result rows (oracle Gen PPL, entropy in nats), numbered,
    with the oracle floor in the caption, fitted to `width` columns; and the headers of the
    columns left out to fit."""
    floor = next((r.get("oracle_floor_ppl") for r in rows if r.get("oracle_floor_ppl")), None)
    entropy = next((r.get("oracle_true_entropy_per_sample_mean") for r in rows), None)
    caption = f"oracle floor: PPL {_cell(floor)}, entropy {_cell(entropy)} nats (true samples)"
    title = "Structural Block Diffusion on topic-markov: oracle Gen PPL"
    cols, dropped = fit_columns(COLUMNS, rows, _cell, width, DROP_ORDER)
    table = metric_table(title, cols, rows, _cell, caption=caption, numbered=True, no_wrap=True)
    return table, dropped


def print_results(rows: list[dict[str, Any]]) -> None:
    """The table on stderr; the rows' names by number when columns were left out."""
    table, dropped = results_table(rows, console.width)
    console.print(table)
    if dropped:
        console.print(
            f"({', '.join(dropped)} left out at {console.width} columns; all in results.md)",
            style="dim",
            highlight=False,
        )
        for i, row in enumerate(rows, start=1):
            console.print(f"[bold]{i}[/] {term(row.get('name', ''))}", highlight=False)


def _train_progress(progress: Any, task: Any) -> Any:
    def update(info: Any) -> None:
        progress.update(task, completed=info.step, loss=f"{info.loss:.3f}")

    return update


DEMO_FIELDS = ("out", "seed", "fresh", "quick", "steps", "samples", "device")
"""`DemoConfig` fields `sbd demo` takes as flags (defaults and help from config.py)."""


@app.command()
@config_options("given", DemoConfig, DEMO_FIELDS)
def demo(given: dict[str, Any] | None = None) -> None:
    """Prepare, train (mix-scale), draft, remask with every strategy, revise, evaluate.

    Example: sbd demo --quick --out runs/demo-quick
    """
    from sbdcli.demo import check_demo, demo_summary, run_demo

    cfg = DemoConfig(**(given or {}))
    check_demo(cfg)  # refused before the progress bar or any directory
    with progress_bar("loss {task.fields[loss]}", elapsed=False) as progress:
        task = progress.add_task("training", total=cfg.n_steps, loss="–")
        rows = run_demo(
            cfg,
            log=lambda msg: console.print(f"[dim]·[/] {term(msg)}"),
            train_progress=_train_progress(progress, task),
            step=lambda msg: console.print(f"[dim]·[/] {term(msg)}"),
        )
    print_results(rows)
    for line in demo_summary(rows):
        console.print(f"[dim]·[/] {term(line)}")
    console.print(f"artifacts, results.md, pareto.png and report.html in {term(cfg.out)}")

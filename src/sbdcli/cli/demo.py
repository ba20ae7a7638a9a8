"""`sbd demo`: the end-to-end job on the embedded topic-markov language.

A thin client of `sbdcli.demo.run_demo`: it renders progress and the final table on
stderr. See the library module for the steps and the artifacts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from sbdcli.cli._app import app, console, term
from sbdcli.cli.progress import progress_bar
from sbdcli.cli.tables import metric_table

COLUMNS = (
    ("stage", "stage"),
    ("draft", "draft"),
    ("strategy", "strategy"),
    ("gamma", "gamma"),
    ("gen_ppl_per_sample_mean", "oracle Gen PPL (per-sample mean)"),
    ("gen_ppl_corpus", "oracle Gen PPL (corpus)"),
    ("entropy_per_sample_mean", "entropy (nats)"),
    ("nfe_per_sample", "NFE"),
    ("seconds_per_sample", "s / sample"),
)


def _cell(value: Any) -> str:
    from sbdcli.evaluate.report import cell  # the library (torch) loads when the command runs

    return cell(value, compact=True)


def results_table(rows: list[dict[str, Any]]) -> Any:
    """A rich table of the demo's result rows, with the oracle floor in the caption."""
    floor = next((r.get("oracle_floor_ppl") for r in rows if r.get("oracle_floor_ppl")), None)
    entropy = next((r.get("oracle_true_entropy_per_sample_mean") for r in rows), None)
    caption = f"oracle floor: PPL {_cell(floor)}, entropy {_cell(entropy)} nats (true samples)"
    title = "Structural Block Diffusion on topic-markov"
    return metric_table(title, COLUMNS, rows, _cell, caption=caption)


def _train_progress(progress: Any, task: Any) -> Any:
    def update(info: Any) -> None:
        progress.update(task, completed=info.step, loss=f"{info.loss:.3f}")

    return update


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Demo directory.")] = Path("runs/demo"),
    seed: Annotated[int, typer.Option("--seed", help="Seed of every step.")] = 0,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="Rebuild every step instead of reusing it.")
    ] = False,
    quick: Annotated[
        bool, typer.Option("--quick", help="A reduced budget (tests and CI).")
    ] = False,
    steps: Annotated[
        int | None, typer.Option("--steps", help="Training steps (default 1200; quick 120).")
    ] = None,
    samples: Annotated[
        int | None, typer.Option("-n", "--samples", help="Samples per setting (256; quick 16).")
    ] = None,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
) -> None:
    """Prepare, train (mix-scale), draft, remask with every strategy, revise, evaluate."""
    from sbdcli.config import DemoConfig
    from sbdcli.demo import check_demo, demo_summary, run_demo

    cfg = DemoConfig(
        out=out, seed=seed, quick=quick, fresh=fresh, steps=steps, samples=samples, device=device
    )
    check_demo(cfg)  # refused before the progress bar or any directory
    with progress_bar("loss {task.fields[loss]}", elapsed=False) as progress:
        task = progress.add_task("training", total=cfg.n_steps, loss="–")
        rows = run_demo(
            cfg,
            log=lambda msg: console.print(f"[dim]·[/] {term(msg)}"),
            train_progress=_train_progress(progress, task),
            step=lambda msg: console.print(f"[dim]·[/] {term(msg)}"),
        )
    console.print(results_table(rows))
    for line in demo_summary(rows):
        console.print(f"[dim]·[/] {term(line)}")
    console.print(f"artifacts, results.md, pareto.png and report.html in {term(out)}")

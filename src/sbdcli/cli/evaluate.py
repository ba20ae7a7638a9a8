"""`sbd eval genppl` and `sbd eval ppl`: thin commands over `sbdcli.evaluate`.

genppl reads sample records (files, or stdin), judges them and prints a rich table on
stderr (narrowed to the terminal's width); one JSON object per file / stage group goes to
--out, and to stdout when stdout is a pipe or a file (or with --json); --markdown prints the
table as markdown on stdout instead of the JSON; --plot draws Gen PPL against NFE and
seconds. ppl prints the held-out perplexity exp(NELBO) of a run with its Monte Carlo error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from sbdcli import distributed as dist
from sbdcli.cli._app import app, console, emit, term
from sbdcli.cli.options import DeviceOpt, PrecisionOpt, config_options
from sbdcli.cli.progress import progress_bar
from sbdcli.cli.tables import fit_columns, metric_table
from sbdcli.config import GenPplOptions
from sbdcli.errors import UserError

GENPPL_FIELDS = (
    "evaluator",
    "data_dir",
    "eos",
    "batch_size",
    "context",
    "stride",
    "floor_samples",
    "seed",
    "allow_partial",
    "low_entropy",
    "low_entropy_window",
    "precision",
)
"""`GenPplOptions` fields `sbd eval genppl` takes as flags (defaults and help from config)."""

eval_app = typer.Typer(
    help="Judge samples (Gen PPL with entropy) and held-out data (test perplexity).",
    no_args_is_help=True,
)
app.add_typer(eval_app, name="eval")


def _device(name: str) -> str:
    from sbdcli.model.checkpoint import resolve_device  # torch: only when a command runs

    return resolve_device(name)


def _processes(paths: list[str], device: str) -> tuple[Any, str]:
    """Join the launch's processes if any (each reads every file: stdin cannot be shared);
    the World and this process's device."""
    world = dist.world()
    dist.require_files(world, input="-" if not paths or "-" in paths else None)
    return world, dist.device_for(device, world)


def _read_sets(paths: list[str]) -> list[tuple[str, list[dict[str, Any]]]]:
    from sbdcli.artifacts import read_records

    if not paths:
        if sys.stdin.isatty():
            raise UserError("no input: give record files or pipe records into 'sbd eval genppl'")
        paths = ["-"]
    sets = []
    for path in paths:
        records = list(read_records(path))
        name = "stdin" if path == "-" else path
        if not records:
            raise UserError(f"{name}: no records (empty input)")
        sets.append((name, records))
    return sets


def _progress(total: int, what: str) -> Any:
    bar = progress_bar(eta=True, elapsed=False)
    task = bar.add_task(what, total=total)
    return bar, lambda n: bar.advance(task, n)


def _table(summaries: list[dict[str, Any]]) -> None:
    """The rich table of numbers; names and settings listed under it by row number."""
    from sbdcli.evaluate.report import NARROW_DROP_ORDER, cell, terminal_columns

    cols, dropped = fit_columns(
        terminal_columns(summaries), summaries, cell, console.width, NARROW_DROP_ORDER
    )
    console.print(metric_table("Gen PPL", cols, summaries, cell, numbered=True, no_wrap=True))
    if dropped:
        console.print(
            f"({', '.join(dropped)} left out at {console.width} columns: widen the terminal, "
            "or see --markdown, --json)",
            style="dim",
            highlight=False,
        )
    for i, s in enumerate(summaries, start=1):
        partial = (
            f" [yellow](partial: {s['n']} of {s['n_declared']} records)[/]"
            if s.get("partial")
            else ""
        )
        console.print(
            f"[bold]{i}[/] {term(s.get('name', ''))}{partial}", highlight=False, soft_wrap=True
        )
        console.print(f"  {term(s.get('settings_short', ''))}", style="dim", highlight=False)


def _footer(summaries: list[dict[str, Any]]) -> None:
    from sbdcli.evaluate import ENTROPY_OVER
    from sbdcli.evaluate.report import AVERAGING

    ev = summaries[0]["evaluator"]
    detail = ", ".join(f"{k} {v}" for k, v in ev.items() if k not in ("kind", "path"))
    line = f"evaluator: {ev['kind']} {ev.get('path', '')} {detail}".rstrip()
    console.print(term(line), style="dim")
    first = summaries[0]
    if first.get("oracle_floor_nll_per_token") is not None:
        console.print(
            f"oracle floor: NLL/token {first['oracle_floor_nll_per_token']:.4f} "
            f"(PPL {first['oracle_floor_ppl']:.4f}) from {term(first['oracle_floor_source'])}; "
            f"true samples' entropy {first['oracle_true_entropy_per_sample_mean']:.4f}",
            style="dim",
        )
    console.print(
        f"EOS rule '{first['eos']}'; {AVERAGING} Entropy (nats, mean per sample) over "
        f"{ENTROPY_OVER}.{_low_entropy_note(first)}",
        style="dim",
    )
    for note in sorted({n for s in summaries for n in s.get("notes", [])}):
        console.print(f"[yellow]note:[/] {term(note)}", highlight=False)


def _low_entropy_note(summary: dict[str, Any]) -> str:
    """The footer's sentence on the low-entropy count, empty when it was not asked for."""
    if summary.get("low_entropy") is None:
        return ""
    return (
        f" low-H = samples whose last {summary['low_entropy_window']} tokens have unigram "
        f"entropy < {summary['low_entropy']:g} nats (BD3-LM's redraw rule; only samples "
        "longer than the window are checked)."
    )


def _check_outputs(out: str | None, plot: Path | None = None) -> None:
    """Refuse, before any judging or model loading, an --out or --plot that cannot be written."""
    from sbdcli.artifacts import check_output_path
    from sbdcli.evaluate.report import check_plot_path

    if out is not None:
        check_output_path(out)
    if plot is not None:
        check_plot_path(plot)


def json_to_stdout(out: str | None, as_json: bool = False, markdown: bool = False) -> bool:
    """Whether an eval command prints its JSON on stdout: with --json, or when stdout is a
    pipe or a file (a person at a terminal reads the table) and neither --out nor --markdown
    took it."""
    return as_json or (out is None and not markdown and not sys.stdout.isatty())


def write_json(objs: list[dict[str, Any]], out: str | None, to_stdout: bool) -> None:
    """The JSON objects to --out (atomically, one per line) and, when asked, to stdout."""
    from sbdcli.artifacts import JsonlWriter

    if out:
        with JsonlWriter(out) as writer:
            for obj in objs:
                writer.write(obj)
    if to_stdout:
        for obj in objs:
            sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


JsonOpt = Annotated[
    bool,
    typer.Option("--json", help="Print the JSON on stdout even when it is a terminal."),
]


@eval_app.command("genppl")
@config_options("judge", GenPplOptions, GENPPL_FIELDS)
def genppl(
    files: Annotated[
        list[str] | None,
        typer.Argument(help="Record files (JSONL or .safetensors); none or '-' reads stdin."),
    ] = None,
    inputs: Annotated[
        list[str] | None,
        typer.Option("--input", "-i", help="Record file to read (repeatable; '-' = stdin)."),
    ] = None,
    per_file: Annotated[
        bool, typer.Option("--per-file", help="One row per file instead of per stage group.")
    ] = False,
    out: Annotated[
        str | None, typer.Option("--out", help="Write the JSON summaries here (atomically).")
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", help="Write a plot of Gen PPL vs NFE and vs seconds (png/pdf/svg)."),
    ] = None,
    markdown: Annotated[
        bool,
        typer.Option("--markdown", help="Print the table as markdown on stdout instead of JSON."),
    ] = False,
    as_json: JsonOpt = False,
    device: DeviceOpt = "auto",
    judge: dict[str, Any] | None = None,
) -> None:
    """Gen PPL of sample records, with unigram entropy, NFE, seconds and sampler settings.

    Example: sbd draft -n 64 | sbd remask --gamma 0.25 | sbd revise | sbd eval genppl
    """
    from sbdcli.evaluate import evaluate_sets, markdown_table, plot_genppl

    _check_outputs(out, plot)
    if as_json and markdown:
        raise UserError("--json and --markdown exclude each other: both print on stdout")
    paths = [*(files or []), *(inputs or [])]
    world, device = _processes(paths, device)
    opts = GenPplOptions(**(judge or {}), device=_device(device), group=not per_file)
    sets = _read_sets(paths)
    n = sum(len(r) for _, r in sets)
    dist.check_enough(world, n, n, "records")
    bar, advance = _progress(sum(len(r) for _, r in sets), "judging")
    with bar:
        summaries = evaluate_sets(sets, opts, advance)
    if not world.main:
        return
    _table(summaries)
    _footer(summaries)
    if plot is not None:
        plot_genppl(summaries, plot)
        console.print(f"plot written to {term(plot)}", style="dim")
    write_json(summaries, out, to_stdout=json_to_stdout(out, as_json, markdown))
    if markdown:
        emit(markdown_table(summaries))


def _ppl_inputs(run: Path, data: Path | None, block: int | None) -> tuple[Path, int]:
    """The data directory (flag, else the run's, else ./data) and the block size."""
    from sbdcli.artifacts import RunDir, read_json

    if data is None:
        cfg = (
            read_json(run / "config.json", "run config") if (run / "config.json").is_file() else {}
        )
        recorded = (cfg.get("data") or {}).get("dir") if isinstance(cfg, dict) else None
        data = Path(recorded) if recorded and Path(recorded).is_dir() else Path("data")
    if block is None:
        blocks = RunDir(run).trained_block_sizes()
        if not blocks:
            raise UserError(f"cannot tell the block size {run} was trained with; pass --block")
        block = min(blocks)
    return data, block


@eval_app.command("ppl")
def ppl(
    model: Annotated[
        Path, typer.Option("--model", "-m", help="sbd run directory (or BD3-LM/MDLM checkpoint).")
    ] = Path("runs/latest"),
    data: Annotated[
        Path | None,
        typer.Option(
            "--data", help="Data directory whose val split is scored.", show_default="the run's"
        ),
    ] = None,
    block: Annotated[
        int | None,
        typer.Option(
            "--block", help="Block size B of the NELBO.", show_default="the run's small block"
        ),
    ] = None,
    mc: Annotated[
        int, typer.Option("--mc", help="Monte Carlo repetitions of the noise draw (K).")
    ] = 4,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Rows per forward pass.")] = 16,
    max_batches: Annotated[
        int | None, typer.Option("--max-batches", help="Score only the first N batches.")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the noise draws.")] = 0,
    out: Annotated[
        str | None, typer.Option("--out", help="Write the JSON result here (atomically).")
    ] = None,
    as_json: JsonOpt = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
) -> None:
    """Test perplexity exp(NELBO) on the val split, t in [1e-3, 1] drawn antithetically.

    Example: sbd eval ppl -m runs/latest --data data --block 4 --mc 4
    """
    from sbdcli.evaluate import check_ppl_inputs, heldout_perplexity

    if mc < 1 or batch_size < 1 or (max_batches is not None and max_batches < 1):
        raise UserError("--mc, --batch-size and --max-batches must be >= 1")
    _check_outputs(out)
    if not model.exists():
        from sbdcli.model.checkpoint import model_not_found

        raise model_not_found(model)
    data_dir, block_size = _ppl_inputs(model, data, block)
    from sbdcli.data import load_split
    from sbdcli.model.checkpoint import load_model

    net = load_model(str(model), device=_device(device))
    rows = load_split(data_dir, "val")
    check_ppl_inputs(net, model, data_dir, rows, block_size)
    if max_batches is not None:
        rows = rows[: max_batches * batch_size]
    reps = 1 if block_size == 1 else mc
    bar, advance = _progress(reps * rows.shape[0], f"NELBO B={block_size}")
    with bar:
        result = heldout_perplexity(
            net,
            rows,
            block_size,
            mc=mc,
            batch_size=batch_size,
            seed=seed,
            progress=advance,
            precision=precision,
        ).to_dict()
    result.update({"model": str(model), "data": str(data_dir), "split": "val", "seed": seed})
    stderr = result["nelbo_stderr"]
    se = (
        "exact"
        if result["exact"]
        else (f"± {stderr:.4f} (K={mc})" if stderr is not None else f"(no error bar: K={mc})")
    )
    console.print(
        f"val PPL {result['ppl']:.4f}  NELBO {result['nelbo_per_token']:.4f} nats/token {se}  "
        f"{result['bits_per_token']:.4f} bits/token  B={block_size}  {result['rows']} rows",
        highlight=False,
    )
    write_json([result], out, to_stdout=json_to_stdout(out, as_json))

"""`sbd train`: mix-scale block-diffusion training of a denoiser on a data directory.

Thin client of `sbdcli.train`: turns flags into a `TrainConfig` (or reopens a run with
`--resume`), draws a progress bar with loss, tokens/s and ETA on stderr, prints validation
lines and a final table next to the oracle floor. Works unchanged under `torchrun` /
`accelerate launch` (only process 0 prints). No training logic here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    Progress,
)
from rich.table import Table

from sbdcli.artifacts.files import check_output_dir
from sbdcli.artifacts.rundir import RunDir
from sbdcli.cli._app import app, console, term
from sbdcli.cli.options import config_options
from sbdcli.cli.progress import progress_bar
from sbdcli.cli.tables import render_table
from sbdcli.config import TRAIN_PRESETS, TrainConfig, train_config
from sbdcli.errors import UserError

TRAIN_FIELDS = (
    "steps", "batch_size", "global_batch", "lr", "warmup", "lr_schedule", "seed", "init",
    "eps_min", "eps_max", "clip_search", "clip_search_batches", "resample", "ema",
    "val_every", "val_rows", "save_every", "device", "precision", "compile", "time_conditioning",
)  # fmt: skip
"""`TrainConfig` fields that are options of `sbd train` as they are (others are composite)."""


def preset_defaults(field: str) -> str:
    """'(tiny 1200, small 40000, medium 40000)': a field's default per preset, for help text."""
    base = TrainConfig.__dataclass_fields__[field].default
    values = [(name, spec.get(field, base)) for name, spec in TRAIN_PRESETS.items()]
    if len({repr(v) for _, v in values}) == 1:
        return "" if base is None else f"(default {_show(base)})"  # unset: the doc says
    return "(" + ", ".join(f"{name} {_show(v)}" for name, v in values) + ")"


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def parse_mix(text: str) -> tuple[int, int]:
    """'4,1024' -> (4, 1024); anything else is a UserError."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(p.isdigit() and int(p) >= 1 for p in parts):
        raise UserError(f"bad --mix '{text}': expected two block sizes like 4,1024")
    small, large = sorted(int(p) for p in parts)
    return small, large


def block_fields(mix: str | None, mix_lambda: float | None, block: int | None) -> dict[str, Any]:
    """TrainConfig fields for `--mix a,b --lambda x` or `--block B` (empty: defaults)."""
    if block is not None and (mix is not None or mix_lambda is not None):
        raise UserError("use either --block B or --mix a,b [--lambda x], not both")
    if block is not None:
        if block < 1:
            raise UserError(f"--block must be >= 1 (got {block})")
        return {"block_small": block, "block_large": block, "mix_lambda": 0.0}
    fields: dict[str, Any] = {}
    if mix is not None:
        fields["block_small"], fields["block_large"] = parse_mix(mix)
    if mix_lambda is not None:
        fields["mix_lambda"] = mix_lambda
    return fields


def parse_interval(text: str) -> tuple[float, float]:
    """'0.001,1' -> (0.001, 1.0); anything else is a UserError."""
    try:
        lo, hi = (float(p) for p in text.split(","))
    except ValueError:
        raise UserError(f"bad --eps-large '{text}': expected two numbers like 0.001,1") from None
    return lo, hi


def _progress_bar(show: bool) -> Progress:
    return progress_bar(
        "loss {task.fields[loss]:.4f}  block {task.fields[block]:>4}",
        "{task.fields[tps]:>7,.0f} tok/s",
        transient=False,
        show=show,
    )


def _val_line(step: int, val: dict[int, float], reference: dict[str, float]) -> str:
    parts = [f"B={b}: {v:.4f}" for b, v in sorted(val.items())]
    floor = reference.get("oracle_floor")
    tail = f"  (oracle floor {floor:.4f})" if floor is not None else ""
    return f"step {step}: val NELBO/token " + ", ".join(parts) + tail


def summary_table(summary: Any) -> Table:
    """Validation NELBO per block size beside the oracle references, as a rich table."""
    rows = [(f"NELBO, B = {block}", f"{value:.4f}") for block, value in sorted(summary.val.items())]
    names = {"oracle_floor": "oracle floor (manifest)", "oracle_val_nll": "oracle NLL, val rows"}
    rows += [
        (label, f"{summary.reference[k]:.4f}")
        for k, label in names.items()
        if k in summary.reference
    ]
    rows += [("processes", str(summary.processes)), ("seconds", f"{summary.seconds:.0f}")]
    title = f"{summary.run_dir} (step {summary.step})"
    return render_table(title, ("validation", "nats/token"), rows)


def _fit(trainer: Any) -> Any:
    """Run the loop under a progress bar; validation lines are printed above it."""
    cfg = trainer.cfg
    smooth: list[float] = []  # running averages of loss and tokens/s
    with _progress_bar(trainer.is_main) as bar:
        task = bar.add_task("train", total=cfg.steps, completed=trainer.progress_state.step,
                            loss=float("nan"), block=0, tps=0.0)  # fmt: skip

        def report(info: Any) -> None:
            new = [info.loss, info.tokens_per_s]
            smooth[:] = (
                new if not smooth else [0.9 * a + 0.1 * b for a, b in zip(smooth, new, strict=True)]
            )
            bar.update(task, completed=info.step, loss=smooth[0], block=info.block_size,
                       tps=smooth[1])  # fmt: skip
            if info.val is not None:
                bar.console.print(_val_line(info.step, info.val, trainer.reference))

        return trainer.fit(report)


@app.command()
@config_options("given", TrainConfig, TRAIN_FIELDS, optional=True, help_suffix=preset_defaults)
def train(
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Data directory from 'sbd prepare'.", show_default="./data"),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Run directory.", show_default="a new ./runs/<preset>-<data>-<time>"
        ),
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option("--preset", help="Model size: tiny, small or medium.", show_default="tiny"),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume", help="Continue the run --out (./runs/latest unless given) exactly."
        ),
    ] = False,
    mix: Annotated[
        str | None,
        typer.Option("--mix", help="Mix-scale block sizes 'small,large'.", show_default="4,1024"),
    ] = None,
    mix_lambda: Annotated[
        float | None,
        typer.Option("--lambda", help="Probability of a large-block step.", show_default="0.1"),
    ] = None,
    block: Annotated[
        int | None, typer.Option("--block", help="Train a single block size instead of a mix.")
    ] = None,
    eps_large: Annotated[
        str | None,
        typer.Option(
            "--eps-large",
            help="Noise interval 'lo,hi' of large-block steps.",
            show_default="0.001,1",
        ),
    ] = None,
    log_with: Annotated[
        str | None,
        typer.Option(
            "--log-with",
            help="accelerate trackers that watch the run, e.g. tensorboard or wandb "
            "(comma-separated; files under RUN/logs; WANDB_MODE=offline works).",
        ),
    ] = None,
    given: dict[str, Any] | None = None,
) -> None:
    """Train a block-diffusion denoiser, mix-scale by default (--mix 4,1024 --lambda 0.1).

    Example: sbd prepare --synthetic topic-markov && sbd train --steps 200
    """
    from sbdcli.train import resume_config, setup  # torch: imported when a command runs
    from sbdcli.train.tracking import check_trackers, parse_trackers

    trackers = parse_trackers(log_with)
    check_trackers(trackers)

    if out is not None:
        check_output_dir(out)
    given = {**(given or {}), **block_fields(mix, mix_lambda, block)}
    if eps_large is not None:
        given["large_eps_min"], given["large_eps_max"] = parse_interval(eps_large)
    if resume:
        run = out if out is not None else Path("runs") / "latest"
        cfg = resume_config(run, preset=preset, **given)
        data_dir = data if data is not None else RunDir(run).recorded_data_dir() or Path("data")
    else:
        cfg = train_config(preset or "tiny", **given)
        data_dir = data if data is not None else Path("data")
    trainer = setup(cfg, data_dir, out, resume=resume, log_with=trackers)
    if trainer.is_main:
        for note in trainer.notes:
            console.print(f"note: {term(note)}")
        _describe(trainer)
    try:
        summary = _fit(trainer)
    except KeyboardInterrupt:
        if trainer.is_main:
            console.print(
                f"checkpoint written to {term(trainer.run_dir)}/state; continue with "
                f"'sbd train --resume --out {term(trainer.run_dir)}'"
            )
        raise
    if trainer.is_main:
        console.print(summary_table(summary))


def _describe(trainer: Any) -> None:
    cfg, mc = trainer.cfg, trainer.model_config
    params = sum(p.numel() for p in trainer.denoiser.parameters())
    sizes = ", ".join(str(b) for b in trainer.sizes)
    mix = f"Mix({sizes}), lambda {cfg.mix_lambda}" if len(trainer.sizes) > 1 else f"B = {sizes}"
    console.print(
        f"run {term(trainer.run_dir)}: {params / 1e6:.2f}M params ({mc.n_layers} layers, d "
        f"{mc.d_model}), L = {trainer.length}, {mix}, global batch {trainer.global_batch} = "
        f"{cfg.batch_size} x {trainer.processes} process(es) x {trainer.accum} accumulation, "
        f"lr {cfg.lr:g}, {cfg.steps} steps",
        highlight=False,
    )

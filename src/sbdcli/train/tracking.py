"""Experiment trackers of `sbd train --log-with`: accelerate's trackers, nothing home-made.

`check_trackers` refuses a name accelerate does not know or whose package is not installed
(before any work); `tracker_kwargs` gives the `Accelerator` its `log_with` and the
directory the trackers write under (`RUN/logs`); `start` calls `init_trackers` with the
run's settings as hyperparameters; `step_values` is what each optimizer step logs, the
same numbers `metrics.jsonl` holds: `train/loss_B<b>` (the step's loss, under its block
size), `train/lr`, `train/grad_norm`, `train/tokens_per_s`, and at validations
`val/nelbo_B<b>` per block size. accelerate logs on process 0 only. Weights & Biases runs
offline with `WANDB_MODE=offline` (its files go to `RUN/logs/wandb`).

Not here: the loop (trainer.py) or metrics.jsonl (artifacts/rundir.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sbdcli.errors import UserError

PROJECT = "sbd"
"""The tracker project name (TensorBoard: the sub-directory of RUN/logs)."""


def parse_trackers(text: str | None) -> tuple[str, ...]:
    """'tensorboard,wandb' -> ('tensorboard', 'wandb'); None or '' -> ()."""
    return tuple(t.strip().lower() for t in (text or "").split(",") if t.strip())


def check_trackers(names: tuple[str, ...]) -> None:
    """Every name is one of accelerate's trackers and its package is installed."""
    import accelerate.utils as au
    from accelerate.utils import LoggerType

    known = sorted(t.value for t in LoggerType if t.value != "all")
    for name in names:
        if name not in known:
            raise UserError(f"unknown tracker {name!r} for --log-with (one of {', '.join(known)})")
        available = getattr(au, f"is_{name}_available", None)
        if available is None or not available():
            raise UserError(
                f"tracker {name!r} is not installed: pip install 'sbdcli[track]' "
                f"(TensorBoard, Weights & Biases) or the tracker's own package"
            )


def tracker_kwargs(names: tuple[str, ...], run_dir: Path) -> dict[str, Any]:
    """Keyword arguments of `Accelerator` for these trackers (empty when none)."""
    if not names:
        return {}
    return {"log_with": list(names), "project_dir": str(run_dir / "logs")}


def _hparam(value: Any) -> Any:
    """TensorBoard's hparams take numbers, strings and booleans only."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return "none" if value is None else str(value)


def start(accelerator: Any, names: tuple[str, ...], run_dir: Path, config: dict[str, Any]) -> None:
    """`init_trackers` with the run's config flattened (`train.lr`, `model.d_model`, ...)."""
    if not names:
        return
    flat = {
        f"{section}.{key}": _hparam(value)
        for section, values in config.items()
        if isinstance(values, dict)
        for key, value in values.items()
        if not isinstance(value, (dict, list))
    }
    kwargs = {"wandb": {"dir": str(run_dir / "logs"), "name": run_dir.name}}
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    accelerator.init_trackers(PROJECT, config=flat, init_kwargs=kwargs)


def step_values(record: dict[str, Any]) -> dict[str, float]:
    """The tracked numbers of one metrics.jsonl record (module docstring)."""
    out = {
        f"train/loss_B{record['block_size']}": record["loss"],
        "train/lr": record["lr"],
        "train/tokens_per_s": record["tokens_per_s"],
    }
    if record.get("grad_norm") is not None:
        out["train/grad_norm"] = record["grad_norm"]
    for block, value in (record.get("val_nelbo") or {}).items():
        out[f"val/nelbo_B{block}"] = value
    return out

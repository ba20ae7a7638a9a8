"""Building a run: the training config a resume continues with.

Not here: the loop (trainer.py) or the resume tensors (checkpoint.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sbdcli.artifacts.rundir import RunDir
from sbdcli.config import TrainConfig
from sbdcli.errors import UserError

RESUMABLE_CHANGES = (
    "steps", "val_every", "save_every", "val_rows", "device", "batch_size", "global_batch",
)  # fmt: skip
"""Training-config fields a resumed run may change; every other field must stay."""
FLAGS = {
    "block_small": "--mix/--block",
    "block_large": "--mix/--block",
    "mix_lambda": "--lambda",
    "large_eps_min": "--eps-large",
    "large_eps_max": "--eps-large",
}
"""Command-line flags of the training-config fields whose flag is not the field's name."""


def resume_config(run_dir: Path, **changes: Any) -> TrainConfig:
    """The training config saved in `run_dir`, with the allowed `changes` applied.

    Changing anything but the step count, the val/save intervals, the val rows, the device
    or how the (unchanged) global batch is split is a UserError: a resumed run must continue
    the same optimisation.
    """
    run = RunDir(run_dir)
    if not run.has_state():
        raise UserError(f"{run_dir} holds no resume state (state/trainer.json)")
    saved = run.config()
    base = TrainConfig.from_dict(saved["train"])
    values = base.to_dict()
    for key, value in changes.items():
        if value is None or value == values.get(key):
            continue
        if key not in RESUMABLE_CHANGES:
            flag = FLAGS.get(key, "--" + key.replace("_", "-"))
            raise UserError(f"cannot change {flag} when resuming (the run used {values[key]})")
        values[key] = value
    return TrainConfig(**values)

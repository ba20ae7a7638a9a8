"""Mix-scale block-diffusion training on `accelerate`, with exact resume.

- build.py: building a run (accelerator, model, data, `config.json`), `setup` / `train`,
  and the config a resumed run continues with (`resume_config`);
- trainer.py: the `Trainer`: the loop, optimizer steps, validation, clip search;
- checkpoint.py: saving and restoring the resume state (`RUN/state/`), `model.safetensors`;
- state.py: EMA, block-size sampler, LR schedule, data order, the loop's counters, seeds.

Not here: the loss and noise math (diffusion/), the network (model/), the run directory's
layout (artifacts/rundir.py) or the command line (cli/train.py).
"""

from __future__ import annotations

from sbdcli.diffusion.schedule import draw_noise
from sbdcli.train.build import (
    resume_config,
    setup,
    train,
)
from sbdcli.train.trainer import (
    StepInfo,
    Trainer,
    TrainSummary,
)

__all__ = [
    "StepInfo",
    "TrainSummary",
    "Trainer",
    "draw_noise",
    "resume_config",
    "setup",
    "train",
]

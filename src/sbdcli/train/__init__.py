"""Mix-scale training on accelerate with exact resume.

- trainer.py: the loop, validation, clip search, checkpoints;
- build.py: the config a resumed run continues with;
- state.py: EMA, block-size sampler, LR schedule, data order, resume state tensors.

Not here: the loss and noise math (diffusion/) or the model (model/).
"""

from __future__ import annotations

from sbdcli.train.build import (
    resume_config,
)
from sbdcli.train.trainer import (
    StepInfo,
    Trainer,
    TrainSummary,
    draw_noise,
    setup,
    train,
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

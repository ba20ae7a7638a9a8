"""Train the tiny preset for STEPS steps with FSDP2 sharding on CPU processes (gloo).

accelerate (1.16) selects FSDP only for GPU processes, so this script builds the
accelerator as an FSDP launch on GPUs would (the FSDP2 plugin of examples/accelerate/
fsdp.yaml: each DiTBlock a shard unit, full state dicts) on CPU processes, to exercise
sbd's training, checkpoint and resume code under real sharding without a GPU. Used by
tests/test_train_checkpoint.py::test_fsdp2_training_resumes_exactly. Run under
`torchrun --nproc_per_node 2`. Usage: fsdp_steps.py DATA RUN STEPS RESUME(0/1).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

import sbdcli.train.build as build
from train_helpers import tiny


def sharded_accelerator(cfg, trackers: dict | None = None) -> Accelerator:
    accelerator = Accelerator(cpu=True, mixed_precision="no", **(trackers or {}))
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2,
        auto_wrap_policy="transformer_based_wrap",
        transformer_cls_names_to_wrap=["DiTBlock"],
        reshard_after_forward=True,
        state_dict_type="FULL_STATE_DICT",
    )
    return accelerator


def main(data: str, run: str, steps: int, resume: bool) -> None:
    torch.set_num_threads(1)
    build.make_accelerator = sharded_accelerator
    cfg = tiny(steps=steps, val_every=0, save_every=2, mix_lambda=0.0, global_batch=8)
    trainer = build.setup(cfg, data, run, resume=resume, runs_root=str(Path(run).parent))
    param = next(iter(trainer.model.parameters()))
    trainer.fit(None)
    if trainer.is_main:
        (Path(run) / "sharding.json").write_text(json.dumps({"param": type(param).__name__}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1")

"""Write the first training step's loss and gradients to OUT/grads.safetensors.

Run under `torchrun --nproc_per_node P` or plain `python`; used by
tests/test_trainer.py::test_two_processes_match_one_process to show that P processes x b rows
and 1 process x P*b rows compute the same step. Usage: ddp_first_step.py DATA OUT BATCH.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from sbdcli import artifacts
from sbdcli.config import train_config
from sbdcli.train import setup


def main(data: str, out: str, batch: int) -> None:
    torch.set_num_threads(1)
    cfg = train_config(
        "tiny", steps=1, batch_size=batch, global_batch=8, seed=5, val_rows=8, device="cpu"
    )
    trainer = setup(cfg, data, Path(out) / "run")
    loss = trainer.forward_backward(trainer.sampler.draw())
    grads = {n: p.grad.detach().clone() for n, p in trainer.denoiser.named_parameters()}
    if trainer.is_main:
        tensors = {**grads, "__loss__": torch.tensor(loss, dtype=torch.float64)}
        header = {"processes": trainer.processes, "accum": trainer.accum}
        artifacts.save_tensors(Path(out) / "grads.safetensors", tensors, "test.grads", header)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))

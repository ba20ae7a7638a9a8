"""The arithmetic precision of inference-time network calls: fp32, or bf16 autocast.

`--precision auto|fp32|bf16` of the sampling, remasking and evaluation commands resolves
here, exactly as `sbd train` resolves its own: `auto` is bf16 autocast on CUDA and fp32
anywhere else. `network(precision, device)` is the context one network call runs in:
- bf16: `torch.autocast(device, torch.bfloat16)`: matmuls and attention in bf16, the
  float32 LayerNorms and the float32 logits (`Denoiser` upcasts them) as they are;
- fp32 on CUDA: TF32 tensor cores for float32 matmuls (`float32_matmul_precision`
  "high", restored afterwards), the same setting `sbd train` leaves on;
- fp32 elsewhere: nothing changes.
`session(precision, device)` wraps many calls (a whole fill): under it the weights that
autocast casts to bf16 are cast once and reused by every call inside, instead of once per
call (autocast drops its cast cache when the outermost autocast context exits).

Not here: what is computed in float64 from the logits (the categorical draw and the
confidences, diffusion/sampler.py) and training's mixed precision (train/build.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from sbdcli.config import PRECISIONS
from sbdcli.errors import UserError

__all__ = ["PRECISIONS", "network", "resolve", "session"]


def _device_type(device: Any) -> str:
    return torch.device(device).type


def resolve(precision: str, device: Any) -> str:
    """'fp32' or 'bf16': `auto` is bf16 on CUDA, fp32 elsewhere; refuses unknown names."""
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    return "bf16" if _device_type(device) == "cuda" else "fp32"


@contextlib.contextmanager
def network(precision: str, device: Any) -> Iterator[None]:
    """The context of one network call at `precision` on `device` (see the module doc)."""
    kind = _device_type(device)
    if resolve(precision, device) == "bf16":
        with torch.autocast(kind, dtype=torch.bfloat16):
            yield
        return
    if kind != "cuda":
        yield
        return
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # TF32 tensor cores for fp32 matmuls
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


@contextlib.contextmanager
def session(precision: str, device: Any) -> Iterator[None]:
    """Keep autocast's bf16 weight casts alive across the network calls made inside.

    Opens a disabled autocast context (it runs nothing in bf16 itself: the draw and every
    other operation between calls keep their dtype) so that the cast cache is dropped
    only when the session ends; a no-op at fp32.
    """
    if resolve(precision, device) != "bf16":
        yield
        return
    with torch.autocast(_device_type(device), dtype=torch.bfloat16, enabled=False):
        yield

"""The arithmetic precision of inference-time network calls: fp32, or bf16 autocast.

`--precision auto|fp32|bf16` of the sampling, remasking and evaluation commands resolves
here, exactly as `sbd train` resolves its own: `auto` is bf16 autocast on CUDA and fp32
anywhere else. `network(precision, device)` is the context one network call runs in:
- bf16: `torch.autocast(device, torch.bfloat16)`: matmuls and attention in bf16, the
  float32 LayerNorms and the float32 logits (`Denoiser` upcasts them) as they are;
- fp32 on CUDA: TF32 tensor cores for float32 matmuls (`float32_matmul_precision`
  "high", restored afterwards);
- fp32 elsewhere: nothing changes.
`for_calls(model, precision, device)` is the module the calls run: at bf16 a copy of the
model whose `nn.Linear` weights and biases are stored in bf16 (made once per model and
weight version, everything else shared with the model), so that autocast finds them in
bf16 instead of casting every weight at every call. Autocast's own cast cache does not
help here: it is off under `torch.inference_mode`, which every sampling pass runs in. The
copy computes exactly what autocast computes from the float32 weights (the same rounding).

Not here: what is computed in float64 from the logits (the categorical draw and the
confidences, diffusion/sampler.py) and training's mixed precision (train/build.py).
"""

from __future__ import annotations

import contextlib
import copy
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from sbdcli.config import PRECISIONS
from sbdcli.errors import UserError

__all__ = ["PRECISIONS", "bf16_copy", "for_calls", "network", "resolve", "stage_entry"]


def _device_type(device: Any) -> str:
    """'cuda', 'cpu', ...: the type of a device (or of 'auto', as `--device auto` picks)."""
    if str(device) == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
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


def stage_entry(precision: str, device: Any) -> dict[str, str]:
    """A stage entry's `precision` key: {"precision": "bf16"} when the network ran in bf16,
    nothing at fp32 (every entry without the key was computed in fp32)."""
    resolved = resolve(precision, device)
    return {} if resolved == "fp32" else {"precision": resolved}


_SHADOWS: weakref.WeakKeyDictionary[Any, tuple[Any, Any]] = weakref.WeakKeyDictionary()


def for_calls(model: Any, precision: str, device: Any) -> Any:
    """The module that network calls at `precision` run (see the module doc): `model`
    itself at fp32, else its bf16-weight copy (cached; remade when the weights change)."""
    if resolve(precision, device) != "bf16" or not isinstance(model, nn.Module):
        return model
    linear = _cast_parameters(model)
    if not linear:
        return model
    key = _versions(linear)
    cached = _SHADOWS.get(model)
    if cached is None or cached[0] != key:
        cached = (key, bf16_copy(model, linear))
        _SHADOWS[model] = cached
    return cached[1]


def _cast_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Floating weights and biases of `nn.Linear` modules that no other module uses (a
    weight tied to an embedding stays float32: the lookup is not a matmul)."""
    other = {
        id(p)
        for m in model.modules()
        if not isinstance(m, nn.Linear)
        for p in m.parameters(recurse=False)
    }
    out: dict[int, nn.Parameter] = {}
    for m in model.modules():
        if isinstance(m, nn.Linear):
            for p in m.parameters(recurse=False):
                if p.dtype == torch.float32 and id(p) not in other:
                    out[id(p)] = p
    return list(out.values())


def _versions(params: list[nn.Parameter]) -> tuple[Any, ...]:
    """What identifies these weights' values: storage and in-place update count."""
    try:
        return tuple((p.data_ptr(), p._version) for p in params)
    except RuntimeError:  # made under inference_mode: no version counter
        return tuple((p.data_ptr(), None) for p in params)


def bf16_copy(model: nn.Module, params: list[nn.Parameter] | None = None) -> nn.Module:
    """A copy of `model` with `params` (default: `_cast_parameters`) stored in bf16 and
    every other parameter and buffer shared (not copied)."""
    params = _cast_parameters(model) if params is None else params
    memo: dict[int, Any] = {}
    with torch.no_grad():
        for p in params:
            memo[id(p)] = nn.Parameter(p.detach().to(torch.bfloat16), requires_grad=False)
    for t in (*model.parameters(), *model.buffers()):
        memo.setdefault(id(t), t)
    return copy.deepcopy(model, memo)

"""Centred windows over sequences longer than the trained length L: scoring and full revises.

A model trained on L tokens runs at most L positions per call. Post-hoc and masked scores,
and a revise with one bidirectional ("full") block, need both sides of a position visible,
so a sequence of T > L tokens is cut into windows of L tokens that overlap by half:

- window k starts at s_k = min(k * L/2, T - L) (k = 0, 1, ... until a window ends at T)
  and runs with window-relative positions 0..L-1, as the sampler's sliding window does;
- each position belongs to exactly one window's *core*: the window whose centre half
  [s_k + L/4, s_k + 3L/4) holds it, the first core stretched to 0 and the last to T, so
  a position is scored and revised with at least L/4 tokens of context on each side
  (fewer only at the sequence's ends, where there is nothing more to see);
- scores: every window is scored on its own, each position keeps its core's score;
- revise: windows run left to right, each regenerating the masked positions of its core
  with everything else in the window visible, later windows seeing earlier windows'
  results; one sample generator continues from window to window.

T <= L is a single window equal to the whole sequence, so these functions then give
exactly the unwindowed results. Not here: the selection of positions (remask.py) and the
block-by-block engine itself (sampler.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sbdcli.config import SamplerConfig
from sbdcli.diffusion import remask as rm
from sbdcli.diffusion import sampler as sp


@dataclass(frozen=True)
class Window:
    """One window [start, start + size) and its core [core_lo, core_hi) (absolute indices)."""

    start: int
    size: int
    core_lo: int
    core_hi: int


def plan(length: int, max_len: int) -> list[Window]:
    """The windows of a sequence of `length` tokens for a model trained on `max_len`."""
    if length <= max_len:
        return [Window(0, length, 0, length)]
    stride, quarter = max(max_len // 2, 1), max_len // 4
    starts: list[int] = []
    s = 0
    while True:
        starts.append(min(s, length - max_len))
        if starts[-1] + max_len >= length:
            break
        s += stride
    out = []
    for k, start in enumerate(starts):
        lo = 0 if k == 0 else out[-1].core_hi
        hi = length if k == len(starts) - 1 else start + max_len - quarter
        out.append(Window(start, max_len, lo, hi))
    return [w for w in out if w.core_hi > w.core_lo]


def _core(w: Window, length: int, device: Any) -> torch.Tensor:
    """Bool (length,) that is true on the window's core."""
    idx = torch.arange(length, device=device)
    return (idx >= w.core_lo) & (idx < w.core_hi)


def scores(
    model: Any,
    tokens: torch.Tensor,
    eligible: torch.Tensor,
    strategy: str,
    passes: int,
    precision: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Post-hoc or masked scores (n, T) float64 and calls (n,) of sequences of any length T.

    Positions that are not eligible score 1.0 under `masked` (as `remask.masked_scores`).
    `precision`: the network calls' arithmetic (diffusion/precision.py).
    """
    n, length = tokens.shape
    out = torch.ones(n, length, dtype=torch.float64)
    calls = torch.zeros(n, dtype=torch.long)
    for w in plan(length, model.config.seq_len):
        core = _core(w, length, "cpu")[w.start : w.start + w.size]
        x = tokens[:, w.start : w.start + w.size]
        if strategy == "posthoc":
            s, c = rm.posthoc_scores(model, x, precision), torch.ones(n, dtype=torch.long)
        else:
            elig = eligible[:, w.start : w.start + w.size].cpu() & core[None, :]
            s, c = rm.masked_scores(model, x, elig, passes, precision)
        out[:, w.core_lo : w.core_hi] = s[:, core]
        calls += c
    return out, calls


def revise(
    model: Any,
    tokens: torch.Tensor,
    masked: torch.Tensor,
    cfg: SamplerConfig,
    generators: Sequence[Any],
    *,
    step_offset: torch.Tensor,
    progress: Callable[[sp.CallEvent], None] | None = None,
) -> sp.FillResult:
    """A full-block revise of `masked` (n, T) positions of `tokens` (n, T), window by window.

    `cfg.block_size` is ignored: every window is one bidirectional block of L tokens.
    `progress` receives every call's `CallEvent` with positions of the whole sequence (a
    window's events are shifted by its start; `call` counts on across windows).
    """
    n, length = tokens.shape
    x = tokens.clone()
    dev = x.device
    conf = torch.ones(n, length, dtype=torch.float64, device=dev)
    conf_n = torch.ones(n, length, dtype=torch.float64, device=dev)
    step = torch.zeros(n, length, dtype=torch.long, device=dev)
    committed = torch.zeros(n, length, dtype=torch.bool, device=dev)
    nfe = torch.zeros(n, dtype=torch.long)
    full = dataclasses.replace(cfg, block_size=0)
    seen = [0]  # network calls reported so far, across windows
    for w in plan(length, model.config.seq_len):
        sl = slice(w.start, w.start + w.size)
        todo = masked[:, sl] & _core(w, length, dev)[sl][None, :]
        if not bool(todo.any()):
            continue
        res = sp.revise(
            model,
            x[:, sl],
            todo,
            full,
            generators,
            step_offset=step_offset + nfe,
            progress=_shifted(progress, w.start, seen),
        )
        x[:, sl] = torch.where(todo, res.tokens, x[:, sl])
        for dst, src in ((conf, res.confidence), (conf_n, res.confidence_nucleus)):
            dst[:, sl] = torch.where(todo, src, dst[:, sl])
        step[:, sl] = torch.where(todo, res.step, step[:, sl])
        committed[:, sl] |= todo
        nfe += res.nfe
    stop = torch.full((n,), -1, dtype=torch.long)
    cancelled = torch.zeros(n, dtype=torch.bool)
    return sp.FillResult(x, conf, conf_n, step, nfe, stop, committed, cancelled)


def _shifted(
    progress: Callable[[sp.CallEvent], None] | None, start: int, seen: list[int]
) -> Callable[[sp.CallEvent], None] | None:
    """`progress` for one window: its events moved to sequence positions and call numbers."""
    if progress is None:
        return None
    report = progress

    def shifted(ev: sp.CallEvent) -> None:
        seen[0] += 1
        report(
            dataclasses.replace(
                ev,
                call=seen[0],
                lo=ev.lo + start,
                hi=ev.hi + start,
                positions=tuple(tuple(p + start for p in ps) for ps in ev.positions),
            )
        )

    return shifted

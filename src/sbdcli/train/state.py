"""The small stateful pieces of training, each deterministic from its seed and a counter.

- `resolve_block_sizes` / `BlockSizeSampler`: mix-scale block sizes (README.md), clamped to L.
- `DataOrder`: which rows form each global batch (a seeded permutation per epoch).
- `lr_at`: the learning-rate schedule (linear warmup, then constant or cosine).
- `EMA`: exponential moving average of the weights (what is saved, validated, sampled).
- `sizes_in_use`, `LoopCounters`, `initial_eps`: the block sizes trained, the loop's counters and
  the noise interval per block size.
- `RunData`: the rows a run trains and validates on, with the oracle references.
- `seed_for`: independent seeds for the named random streams of one run.

Because each piece is a pure function of its seed and a counter, a resumed run continues
exactly. Not here: the loop (trainer.py) or how these are saved and restored (checkpoint.py).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sbdcli.config import TrainConfig
from sbdcli.data.datadir import TokenRows
from sbdcli.errors import UserError

STREAMS = {"init": 1, "blocks": 2, "data": 3, "noise": 4, "val": 5, "dropout": 6}
"""Random streams of a run; each gets its own seed from (run seed, stream, index)."""


def seed_for(seed: int, stream: str, index: int = 0) -> int:
    """A 63-bit seed for `stream` (and e.g. a rank or an epoch) derived from the run seed."""
    mixed = (seed * 0x9E3779B97F4A7C15 + STREAMS[stream] * 0xBF58476D1CE4E5B9 + index) & (2**64 - 1)
    mixed ^= mixed >> 31
    mixed = (mixed * 0x94D049BB133111EB) & (2**64 - 1)
    return (mixed ^ (mixed >> 29)) & (2**63 - 1)


# --------------------------------------------------------------------------- block sizes
def resolve_block_sizes(small: int, large: int, length: int) -> tuple[int, int, list[str]]:
    """Clamp block sizes >= L to L (one global block); each must divide L.

    Returns (small, large, notes) with one human-readable note per clamped size.
    """
    notes: list[str] = []
    resolved = []
    for size in (small, large):
        if size >= length:
            if size > length:
                notes.append(f"block size {size} >= L = {length}: using one global block")
            size = length
        if length % size != 0:
            raise UserError(f"block size {size} does not divide the sequence length L = {length}")
        resolved.append(size)
    return resolved[0], resolved[1], sorted(set(notes))


class BlockSizeSampler:
    """Per-step block size B ~ P_B = (1 - lambda) delta(B_small) + lambda delta(B_large).

    One uniform draw per call from a seeded generator, so the sequence of sizes is a pure
    function of the seed and the number of draws; `state` / `load_state` carry it.
    """

    def __init__(self, small: int, large: int, mix_lambda: float, seed: int) -> None:
        self.small, self.large, self.mix_lambda = small, large, mix_lambda
        self.generator = torch.Generator().manual_seed(seed)

    def draw(self) -> int:
        u = torch.rand((), generator=self.generator).item()
        return self.large if u < self.mix_lambda else self.small

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def load_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


# --------------------------------------------------------------------------- data order
class DataOrder:
    """Global row order: epoch e is a permutation of the rows drawn from seed (run, e).

    Position p (rows consumed so far) fully determines what comes next, so the resume
    state is one integer, and it does not depend on the number of processes.
    """

    def __init__(self, n_rows: int, seed: int) -> None:
        if n_rows < 1:
            raise UserError("the training split has no rows")
        self.n_rows, self.seed = n_rows, seed
        self._epoch = -1
        self._perm = torch.empty(0, dtype=torch.long)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(seed_for(self.seed, "data", epoch))
            self._perm, self._epoch = torch.randperm(self.n_rows, generator=g), epoch
        return self._perm

    def rows(self, start: int, count: int) -> torch.Tensor:
        """Row indices (count,) at global positions start .. start + count - 1."""
        out = []
        pos, end = start, start + count
        while pos < end:
            epoch, offset = divmod(pos, self.n_rows)
            take = min(end - pos, self.n_rows - offset)
            out.append(self._permutation(epoch)[offset : offset + take])
            pos += take
        return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


# --------------------------------------------------------------------------- LR schedule
def lr_at(step: int, lr: float, warmup: int, steps: int, schedule: str, min_ratio: float) -> float:
    """Learning rate for optimizer step `step` (0-based).

    Warmup: lr * (step + 1) / warmup for step < warmup (the first step is not wasted at 0).
    Then `constant`: lr; `cosine`: lr * (r + (1 - r) * (1 + cos(pi * p)) / 2) with
    p = (step - warmup) / (steps - warmup) and r = min_ratio.
    """
    if step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return lr * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


# --------------------------------------------------------------------------- EMA
class EMA:
    """Exponential moving average of parameters: e <- d e + (1 - d) p (float32 shadow).

    With `warmup`, d = min(decay, (1 + n) / (10 + n)) after n updates (the schedule of the
    EMA used by MDLM / BD3-LM), so a short run is not dominated by its initial weights.
    """

    def __init__(self, named: dict[str, torch.Tensor], decay: float, warmup: bool = True) -> None:
        self.decay, self.warmup = decay, warmup
        self.updates = 0
        self.shadow = {n: p.detach().float().clone() for n, p in named.items()}

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, named: dict[str, torch.Tensor]) -> None:
        decay = self.current_decay()
        names = list(self.shadow)
        shadow = [self.shadow[n] for n in names]
        params = [named[n].detach().float() for n in names]
        torch._foreach_lerp_(shadow, params, 1.0 - decay)
        self.updates += 1

    @contextlib.contextmanager
    def swapped_into(self, named: dict[str, torch.Tensor]) -> Iterator[None]:
        """Temporarily copy the EMA weights into the parameters `named`; restore afterwards."""
        with torch.no_grad():
            saved = {n: p.detach().clone() for n, p in named.items()}
            for n, p in named.items():
                p.copy_(self.shadow[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in named.items():
                    p.copy_(saved[n])


# --------------------------------------------------------------------------- progress
@dataclass
class LoopCounters:
    """The loop's counters: optimizer steps done, tokens seen, training seconds, the noise
    interval per block size and the last validation NELBO per block size."""

    step: int = 0
    tokens: int = 0
    elapsed_s: float = 0.0
    eps: dict[int, list[float]] = field(default_factory=dict)
    last_val: dict[int, float] = field(default_factory=dict)


def initial_eps(
    cfg: TrainConfig, small: int, large: int, sizes: list[int]
) -> dict[int, list[float]]:
    """Noise interval per block size in use: small-block steps use [eps_min, eps_max],
    large-block steps [large_eps_min, large_eps_max] (single-size runs: the former)."""
    eps = {b: [cfg.large_eps_min, cfg.large_eps_max] for b in sizes if b == large}
    eps.update({b: [cfg.eps_min, cfg.eps_max] for b in sizes if b == small})
    return eps


def sizes_in_use(small: int, large: int, mix_lambda: float) -> list[int]:
    """The block sizes a run trains and validates: both, or the one lambda leaves."""
    if mix_lambda == 0.0:
        return [small]
    return [large] if mix_lambda >= 1.0 else sorted({small, large})


@dataclass(frozen=True)
class RunData:
    """What a run trains and validates on."""

    data_dir: Path
    manifest: dict[str, Any]
    train_rows: TokenRows
    """The training split, read lazily."""
    val_rows: torch.Tensor
    """(n, L) validation rows used by every evaluation."""
    reference: dict[str, float]
    """Oracle references of the validation rows (floor, NLL), when the data has an oracle."""

    @property
    def length(self) -> int:
        return self.train_rows.seq_len

"""The small stateful pieces of training and their resume format.

- `resolve_block_sizes` / `BlockSizeSampler`: mix-scale block sizes (METHOD §4), clamped to L.
- `DataOrder`: which rows form each global batch (a seeded permutation per epoch).
- `lr_at`: the learning-rate schedule (linear warmup, then constant or cosine).
- `EMA`: exponential moving average of the weights (what is saved, validated, sampled).
- `flatten_optimizer_state` / `unflatten_optimizer_state`: an optimizer state dict as
  safetensors tensors plus a JSON remainder, so resume state never needs pickle.
- `write_state` / `read_state`: the resume state directory (`RUN/state/`): one
  safetensors file per group (model, ema, optimizer, rng) and `trainer.json`.
- `seed_for`: independent seeds for the named random streams of one run.

Everything here is deterministic from its seed and a counter, so a resumed run continues
exactly. This module holds no training loop (see `train.py`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from sbdcli import artifacts
from sbdcli.errors import UserError

STATE_SCHEMA = "sbd.train_state"
STATE_GROUPS = ("model", "ema", "optimizer", "rng")

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


# --------------------------------------------------------------------------- optimizer state
def _json_safe(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    raise TypeError(f"optimizer state value of type {type(value).__name__} is not JSON-safe")


def flatten_optimizer_state(
    state_dict: dict[str, Any],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an FQN-keyed optimizer state dict into (tensors, JSON remainder).

    Tensors are named `state/<param fqn>/<key>`; scalars and param_groups go to JSON.
    """
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for fqn, entries in state_dict["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"state/{fqn}/{key}"] = value.detach().cpu()
            else:
                scalars.setdefault(str(fqn), {})[key] = _json_safe(value)
    groups = [{k: _json_safe(v) for k, v in g.items()} for g in state_dict["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def unflatten_optimizer_state(
    tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> dict[str, Any]:
    """Inverse of `flatten_optimizer_state` (betas come back as tuples)."""
    state: dict[str, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, rest = name.split("/", 1)
        fqn, key = rest.rsplit("/", 1)
        state.setdefault(fqn, {})[key] = value
    for fqn, entries in meta.get("scalars", {}).items():
        state.setdefault(fqn, {}).update(entries)
    groups = []
    for g in meta["param_groups"]:
        group = dict(g)
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


# --------------------------------------------------------------------------- state directory
def write_state(
    state_dir: Path, groups: dict[str, dict[str, torch.Tensor]], meta: dict[str, Any]
) -> None:
    """Write `state_dir/<group>.safetensors` for each group and `trainer.json`, replacing an
    earlier state only once the new one is complete."""
    with artifacts.atomic_dir(state_dir) as tmp:
        for name in STATE_GROUPS:
            artifacts.save_tensors(tmp / f"{name}.safetensors", groups[name], STATE_SCHEMA)
        artifacts.write_json(tmp / "trainer.json", {"schema": STATE_SCHEMA, **meta})


def read_state(state_dir: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """The tensor groups and the JSON of a state directory written by `write_state`."""
    meta = artifacts.read_json(state_dir / "trainer.json", "resume state")
    if not isinstance(meta, dict) or meta.get("schema") != STATE_SCHEMA:
        raise UserError(f"{state_dir / 'trainer.json'} is not an sbd training state")
    groups = {}
    for name in STATE_GROUPS:
        groups[name], _ = artifacts.load_tensors(state_dir / f"{name}.safetensors", STATE_SCHEMA)
    return groups, meta

"""Noise schedule and noise-level sampling for masked (absorbing-state) block diffusion.

What is here
- `LogLinearSchedule`: the BD3-LM / MDLM log-linear schedule. A token is masked with
  probability t (alpha_t = 1 - t keeps it), and the NELBO weight on a masked token is
  -alpha'_t / (1 - alpha_t) = 1 / t. `sigma(t)` is the noise level a time-conditioned
  network receives, BD3-LM's min(-log(1 - t), -log eps) (bd3lms `_sigma_from_p`, commit
  1c3e8f43d88dfbcee5ff2aa6932a9e74b31ae1d7); a network without time conditioning ignores it.
- `sample_t`: one t per (sequence, block), drawn low-discrepancy (antithetic / stratified).
- `sample_masks` and `resample_masks`: the forward process q(x_t | x_0) per block, with
  position 0 (BOS) never masked, and optional redraws into a clipped interval.
- `draw_noise`: the levels and masks of a whole batch at once (what training draws per
  global batch before splitting it over processes and micro-batches).

What is not here: the network or the loss itself (loss.py), the level of a sampler call
(each reveal policy's `level` in reveal.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "LogLinearSchedule",
    "draw_noise",
    "resample_masks",
    "sample_masks",
    "sample_t",
]


@dataclass(frozen=True)
class LogLinearSchedule:
    """Log-linear masking schedule: mask probability t, loss weight 1/t (t in (0, 1])."""

    eps: float = 1e-3
    """Caps the noise level at t = 1: sigma(t) <= sigma_max = -log eps."""

    def mask_prob(self, t: torch.Tensor) -> torch.Tensor:
        """P(x_t^i = [MASK] | x_0) = 1 - alpha_t = t."""
        return t

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """NELBO weight on masked tokens, -alpha'_t / (1 - alpha_t) = 1 / t."""
        return 1.0 / t

    @property
    def sigma_max(self) -> float:
        """-log eps, computed as BD3-LM does (-log1p(-(1 - eps)) in float32): sigma at t = 1."""
        return float(-torch.log1p(torch.tensor(-(1.0 - self.eps))))

    def sigma(self, t: torch.Tensor | float) -> torch.Tensor:
        """Noise level of mask rate t fed to a time-conditioned DiT: min(-log(1 - t), -log eps).

        BD3-LM's mapping in training (the first block's t of each row) and in every sampling
        call (its semi-AR DDPM / first-hitting update); t = 1 gives -log eps, t = 0 gives 0.
        """
        t = torch.as_tensor(t)
        if not t.is_floating_point():
            t = t.float()
        return torch.clamp(-torch.log(1 - t), max=self.sigma_max)


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device):
    """U[0, 1) draws made on the generator's device (reproducible), moved to `device`."""
    where = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=where).to(device)


def sample_t(
    batch: int,
    n_blocks: int,
    *,
    generator: torch.Generator | None = None,
    eps_min: float = 1e-3,
    eps_max: float = 1.0,
    antithetic: bool = True,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Noise levels t (batch, n_blocks), one per (sequence, block).

    Antithetic (low-discrepancy) draw over the K = batch * n_blocks cells in row-major order:
    u_k = (v_k / K + k / K) mod 1 with v_k ~ U[0, 1) i.i.d., so exactly one u_k falls in each
    stratum [k/K, (k+1)/K). Then t = eps_min + u (eps_max - eps_min).
    """
    device = torch.device(device)
    u = _uniform((batch, n_blocks), generator, device)
    if antithetic:
        k = batch * n_blocks
        offset = torch.arange(k, device=device, dtype=u.dtype).view(batch, n_blocks) / k
        u = (u / k + offset) % 1.0
    return eps_min + u * (eps_max - eps_min)


def sample_masks(
    t_tok: torch.Tensor, generator: torch.Generator | None = None, protect_first: bool = True
) -> torch.Tensor:
    """Forward process q(x_t | x_0): mask token i with probability t_i, independently.

    t_tok (B, L) holds each token's block level; returns bool (B, L), True = masked.
    Position 0 (BOS) is never masked when `protect_first`.
    """
    masked = _uniform(tuple(t_tok.shape), generator, t_tok.device) < t_tok
    if protect_first:
        masked[:, 0] = False
    return masked


def _bad_blocks(
    masked: torch.Tensor, eligible: torch.Tensor, block_size: int, lo: float, hi: float
) -> torch.Tensor:
    """Blocks whose realised masked fraction (masked / eligible tokens) lies outside [lo, hi].

    A bound at its default (lo <= 1e-3, hi >= 1) is not enforced, as in BD3-LM.
    Returns bool (B, n_blocks).
    """
    b = masked.shape[0]
    count = masked.view(b, -1, block_size).sum(-1).float()
    n_elig = eligible.view(b, -1, block_size).sum(-1).float()
    frac = count / n_elig.clamp(min=1.0)
    bad = torch.zeros_like(frac, dtype=torch.bool)
    if lo > 1e-3:
        bad |= frac < lo
    if hi < 1.0:
        bad |= frac > hi
    return bad & (n_elig > 0)


def resample_masks(
    masked: torch.Tensor,
    t_tok: torch.Tensor,
    block_size: int,
    eps_min: float,
    eps_max: float,
    generator: torch.Generator | None = None,
    protect_first: bool = True,
    max_tries: int = 100,
) -> torch.Tensor:
    """Redraw the masks of blocks whose masked fraction falls outside [eps_min, eps_max].

    Each offending block is redrawn from q(x_t | x_0) at its own t until it fits, at most
    `max_tries` rounds (an interval may hold no achievable fraction k/B; those blocks are
    then left as drawn). Returns a new bool (B, L).
    """
    eligible = torch.ones_like(masked)
    if protect_first:
        eligible[:, 0] = False
    masked = masked.clone()
    for _ in range(max_tries):
        bad = _bad_blocks(masked, eligible, block_size, eps_min, eps_max)
        if not bool(bad.any()):
            break
        redo = bad.repeat_interleave(block_size, dim=1)  # (B, L)
        fresh = sample_masks(t_tok, generator, protect_first)
        masked = torch.where(redo, fresh, masked)
    return masked


def draw_noise(
    rows: int,
    length: int,
    block: int,
    generator: torch.Generator,
    eps: tuple[float, float],
    resample: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block levels t (rows, L / block) and masks (rows, L) for a whole (global) batch.

    The same draws as `loss.block_nelbo` makes internally (antithetic t per (row, block),
    mask token i with probability t, BOS never), made once per global batch so that how the
    batch is split over processes and micro-batches does not change the step.
    """
    t = sample_t(rows, length // block, generator=generator, eps_min=eps[0], eps_max=eps[1])
    t_tok = t.repeat_interleave(block, dim=1)  # (rows, L)
    masked = sample_masks(t_tok, generator)
    if resample:
        masked = resample_masks(masked, t_tok, block, eps[0], eps[1], generator)
    return t, masked

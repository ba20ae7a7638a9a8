"""The BD3-LM block NELBO with the SUBS parameterisation, and the clipped-schedule search.

NELBO (log-linear schedule, BD3-LM eq. for masked block diffusion): for every block b of
size B a level t_b ~ U[eps_min, eps_max] (antithetic), x_t masks each token of block b with
probability t_b, and
    L(x_0) = sum_b E[ sum_{i in b, x_t^i = [MASK]} -log p_theta(x_0^i | x_t^b, x_0^{<b}) / t_b ].
`block_nelbo` reports it per token (position 0, BOS or the first raw token of a `bd3lm`
row, is never masked and is excluded from the mean: B (L - 1) tokens, where the reference
divides its training loss by B L; docs/evaluation.md). SUBS: the [MASK] logit is
suppressed and unmasked positions copy their input token (so they cost 0). `clip_search`
picks the interval [eps_min, eps_max] that minimises the variance of the per-block loss
on validation batches, as BD3-LM does (the trainer passes it `clip_search_batches`
batches, by default the reference's 100).

What is not here: the optimisation loop (train.py) and the noise draws (schedule.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from sbdcli.diffusion.schedule import LogLinearSchedule, resample_masks, sample_masks, sample_t
from sbdcli.errors import UserError

__all__ = [
    "ClipSearch",
    "NelboOutput",
    "block_nelbo",
    "clip_intervals",
    "clip_search",
    "subs_log_probs",
    "token_nelbo",
]

DEFAULT_WIDTHS = tuple(round(0.5 + 0.05 * i, 2) for i in range(9))  # 0.5 .. 0.9


def subs_log_probs(logits: torch.Tensor, x_t: torch.Tensor, mask_id: int) -> torch.Tensor:
    """SUBS log-probabilities (B, L, V) from raw logits (B, L, V) and inputs x_t (B, L).

    log p = log_softmax(logits with logit[mask_id] = -inf) at masked positions; at unmasked
    positions the distribution is a point mass on the input token (0 there, -inf elsewhere).
    """
    logits = logits.float().index_fill(-1, torch.tensor([mask_id], device=logits.device), -math.inf)
    log_p = logits.log_softmax(-1)
    keep = (x_t != mask_id)[..., None]  # (B, L, 1)
    copy = torch.full_like(log_p, -math.inf).scatter(-1, x_t[..., None], 0.0)
    return torch.where(keep, copy, log_p)


def _masked_nll(logits: torch.Tensor, x0: torch.Tensor, mask_id: int) -> torch.Tensor:
    """-log p(x0_i) under softmax with the [MASK] logit suppressed: (B, L). Edits logits."""
    logits[..., mask_id] = -math.inf  # in place: saves a (B, L, V) copy
    b, n, v = logits.shape
    return F.cross_entropy(logits.view(b * n, v), x0.reshape(-1), reduction="none").view(b, n)


def token_nelbo(
    logits: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t_tok: torch.Tensor, mask_id: int
) -> torch.Tensor:
    """Per-token NELBO (B, L): -log p_SUBS(x0_i | x_t) / t_i where x_t^i = [MASK], else 0.

    `logits` (B, L, V) are raw logits; they are modified in place (mask logit set to -inf).
    """
    nll = _masked_nll(logits.float(), x0, mask_id)
    return torch.where(x_t == mask_id, nll / t_tok, torch.zeros_like(nll))


@dataclass
class NelboOutput:
    """Result of one NELBO estimate."""

    loss: torch.Tensor
    """Scalar: mean of token_nelbo over positions 1..L-1 (BOS excluded)."""
    token_nelbo: torch.Tensor
    """(B, L) per-token loss; 0 at unmasked positions."""
    t: torch.Tensor
    """(B, n_blocks) noise level of each block."""
    masked: torch.Tensor
    """(B, L) bool, True where x_t holds [MASK]."""


def _block_levels(t: torch.Tensor, batch: int, length: int, block: int) -> torch.Tensor:
    """Accept t as (B, n_blocks) or per token (B, L) (one value per block); return (B, n_blocks)."""
    n_blocks = length // block
    if t.shape == (batch, n_blocks):
        return t
    if t.shape == (batch, length):
        return t[:, ::block]
    raise ValueError(f"t must have shape ({batch}, {n_blocks}) or ({batch}, {length})")


def block_nelbo(
    model: torch.nn.Module,
    x0: torch.Tensor,
    block_size: int,
    *,
    generator: torch.Generator | None = None,
    eps_min: float = 1e-3,
    eps_max: float = 1.0,
    t: torch.Tensor | None = None,
    resample: bool = False,
    x_t: torch.Tensor | None = None,
) -> NelboOutput:
    """One antithetic Monte-Carlo estimate of the block NELBO of clean rows x0 (B, L).

    block_size >= L is one global block (MDLM). `t` fixes the block levels ((B, n_blocks) or
    per token (B, L)); `x_t` (with `t`) fixes the noisy input (the mask is x_t == [MASK]).
    `resample` redraws blocks whose masked fraction falls outside [eps_min, eps_max].
    """
    batch, length = x0.shape
    block = min(block_size, length)
    if block < 1 or length % block:
        raise UserError(f"block size {block_size} must divide the sequence length {length}")
    mask_id = model.config.mask_id
    if x_t is not None and t is None:
        raise ValueError("a fixed x_t needs its block levels t")
    if t is None:
        t = sample_t(batch, length // block, generator=generator, eps_min=eps_min,
                     eps_max=eps_max, device=x0.device)  # fmt: skip
    t = _block_levels(t.to(x0.device, torch.float32), batch, length, block)
    t_tok = t.repeat_interleave(block, dim=1)  # (B, L)
    if x_t is None:
        masked = sample_masks(LogLinearSchedule().mask_prob(t_tok), generator)
        if resample:
            masked = resample_masks(masked, t_tok, block, eps_min, eps_max, generator)
        x_t = torch.where(masked, torch.full_like(x0, mask_id), x0)
    masked = x_t == mask_id
    sigma = LogLinearSchedule().sigma(t[:, 0]) if model.config.time_conditioning else None
    logits = model.train_logits(x_t, x0, block, sigma=sigma)  # (B, L, V)
    per_token = token_nelbo(logits, x0, x_t, t_tok, mask_id)
    return NelboOutput(per_token[:, 1:].mean(), per_token, t, masked)


# --------------------------------------------------------------------------- clip search
def clip_intervals(
    block_size: int,
    widths: Sequence[float] = DEFAULT_WIDTHS,
    delta: float = 0.05,
    eps: float = 1e-3,
) -> list[tuple[float, float]]:
    """Candidate intervals: (eps, 1) and, per width w, (max(k delta, eps), k delta + w) for
    k = 0 .. (1 - w) / delta. Block size 1 compares only (eps, 1) with (1, 1) (exact NLL)."""
    if block_size == 1:
        return [(eps, 1.0), (1.0, 1.0)]
    out = [(eps, 1.0)]
    for w in widths:
        for k in range(round((1.0 - w) / delta) + 1):
            lo = round(k * delta, 6)
            pair = (max(lo, eps), round(min(lo + w, 1.0), 6))
            if pair not in out:
                out.append(pair)
    return out


@dataclass
class ClipSearch:
    """Outcome of `clip_search`: the best interval and the variance of every candidate."""

    eps_min: float
    eps_max: float
    variances: dict[tuple[float, float], float] = field(default_factory=dict)


@torch.no_grad()
def clip_search(
    model: torch.nn.Module,
    val_batches: Iterable[torch.Tensor],
    block_size: int,
    widths: Sequence[float] = DEFAULT_WIDTHS,
    *,
    delta: float = 0.05,
    eps: float = 1e-3,
    generator: torch.Generator | None = None,
    resample: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ClipSearch:
    """Variance-minimising clipped schedule (BD3-LM var_min search).

    For each candidate [a, b] (see `clip_intervals`) and validation batch, the per-block mean
    token loss (B, n_blocks) is computed with t ~ U[a, b]; the interval whose summed
    per-batch variance is smallest wins. `progress(1)` is called after each batch.
    """
    candidates = clip_intervals(block_size, widths, delta, eps)
    totals = dict.fromkeys(candidates, 0.0)
    was_training = model.training
    model.eval()
    try:
        for x0 in val_batches:
            block = min(block_size, x0.shape[1])
            for lo, hi in candidates:
                out = block_nelbo(model, x0, block, generator=generator, eps_min=lo,
                                  eps_max=hi, resample=resample)  # fmt: skip
                per_block = out.token_nelbo.view(x0.shape[0], -1, block).mean(-1)
                totals[(lo, hi)] += float(per_block.var(correction=int(per_block.numel() > 1)))
            if progress is not None:
                progress(1)
    finally:
        model.train(was_training)
    best = min(candidates, key=lambda pair: totals[pair])
    return ClipSearch(best[0], best[1], totals)

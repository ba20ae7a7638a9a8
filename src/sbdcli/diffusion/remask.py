"""Which tokens to regenerate: per-position scores and the bottom-gamma selection.

Scores (lower = less trusted, selected first), one float64 per position:
- `snapshot`: the confidence recorded when the token was committed (no network call);
- `random`: uniform draws from the record's generator (no call);
- `posthoc`: p(x_i) from one bidirectional pass over the finished sequence (1 call);
- `masked`: k passes, pass j masking every eligible position i with i mod k = j and scoring
  p(x_i) there with its neighbours visible (k calls; beyond the paper).
Model probabilities use SUBS ([MASK] logit suppressed) and float64 softmax of raw logits.

Selection: eligible positions are i >= max(prompt_len, 1) (never BOS, never prompt). Per
sequence, exactly floor(gamma * n_eligible) positions, lowest score first, ties broken by a
uniform key drawn from the record's generator (deterministic in the seed); or every eligible
position with score < threshold; or (scope "batch") floor(gamma * total eligible) positions
pooled over a batch of sequences.

Not here: record formats (pipeline/) and the regeneration itself (sampler.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from sbdcli.config import REMASK_STRATEGIES
from sbdcli.diffusion.precision import for_calls, network
from sbdcli.errors import UserError

__all__ = [
    "STRATEGIES",
    "eligible_mask",
    "masked_scores",
    "posthoc_scores",
    "select_batch",
    "select_lowest",
    "select_threshold",
    "token_probs",
]

STRATEGIES = REMASK_STRATEGIES


def eligible_mask(length: int, prompt_len: int) -> torch.Tensor:
    """Positions that may be remasked: i >= max(prompt_len, 1); bool (length,)."""
    return torch.arange(length) >= max(prompt_len, 1)


def token_probs(logits: torch.Tensor, tokens: torch.Tensor, mask_id: int) -> torch.Tensor:
    """p(x_i), float64 softmax with [MASK] suppressed: logits (n, T, V), tokens (n, T) -> (n, T)."""
    z = logits.to(torch.float64)
    z[..., mask_id] = -math.inf
    return torch.log_softmax(z, dim=-1).gather(-1, tokens[..., None]).squeeze(-1).exp()


def _check_length(model: Any, length: int, strategy: str) -> None:
    if length > model.config.seq_len:
        raise UserError(
            f"{strategy} scoring runs one bidirectional block over the whole sequence: "
            f"length {length} exceeds the model's trained length {model.config.seq_len}"
        )


@torch.inference_mode()
def posthoc_scores(model: Any, tokens: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """Post-hoc confidence: p(x_i | x) from one bidirectional pass (block = L); (n, T) float64.

    The model sees the token itself and a context written to agree with it. `precision`:
    the network call's arithmetic (diffusion/precision.py); the probabilities are float64.
    """
    length = tokens.shape[1]
    _check_length(model, length, "post-hoc")
    positions = torch.arange(length, device=tokens.device)
    with network(precision, tokens.device):
        logits = for_calls(model, precision, tokens.device)(tokens, positions, None)  # (n, T, V)
    return token_probs(logits, tokens, model.config.mask_id).cpu()


@torch.inference_mode()
def masked_scores(
    model: Any, tokens: torch.Tensor, eligible: torch.Tensor, passes: int, precision: str = "fp32"
) -> tuple[torch.Tensor, torch.Tensor]:
    """k-pass masked confidence: pass j masks eligible i with i mod k = j, scores p(x_i) there.

    tokens (n, T), eligible (n, T) bool -> (scores (n, T) float64, 1.0 where not eligible;
    calls (n,) long = passes that masked at least one position of that sequence).
    """
    if passes < 1:
        raise UserError(f"`passes` must be >= 1, got {passes}")
    n, length = tokens.shape
    _check_length(model, length, "masked")
    mask_id = model.config.mask_id
    idx = torch.arange(length, device=tokens.device)
    eligible = eligible.to(tokens.device)
    scores = torch.ones(n, length, dtype=torch.float64)
    calls = torch.zeros(n, dtype=torch.long)
    net = for_calls(model, precision, tokens.device)
    for j in range(passes):
        sel = eligible & (idx % passes == j)[None, :]  # (n, T)
        if not bool(sel.any()):
            continue
        x = tokens.masked_fill(sel, mask_id)
        with network(precision, tokens.device):
            logits = net(x, idx, None)
        probs = token_probs(logits, tokens, mask_id).cpu()  # (n, T)
        sel = sel.cpu()
        scores[sel] = probs[sel]
        calls += sel.any(dim=1).long()
    return scores, calls


def _order(scores: torch.Tensor, tiebreak: torch.Tensor) -> torch.Tensor:
    """Indices sorted by (score, tiebreak) ascending: lexicographic via two stable sorts."""
    first = torch.argsort(tiebreak, stable=True)
    return first[torch.argsort(scores[first], stable=True)]


def select_lowest(
    scores: torch.Tensor, eligible: torch.Tensor, gamma: float, tiebreak: torch.Tensor
) -> list[int]:
    """floor(gamma * n_eligible) eligible positions with the lowest scores, ascending positions.

    scores, tiebreak (T,) float64; eligible (T,) bool. Ties in score go to the smaller key.
    """
    count = math.floor(gamma * int(eligible.sum()))
    if count == 0:
        return []
    keyed = scores.masked_fill(~eligible, math.inf)
    return sorted(_order(keyed, tiebreak)[:count].tolist())


def select_threshold(scores: torch.Tensor, eligible: torch.Tensor, threshold: float) -> list[int]:
    """Every eligible position whose score is strictly below `threshold`, ascending."""
    return (eligible & (scores < threshold)).nonzero().squeeze(1).tolist()


def select_batch(
    scores: Sequence[torch.Tensor],
    eligible: Sequence[torch.Tensor],
    gamma: float,
    tiebreak: Sequence[torch.Tensor],
) -> list[list[int]]:
    """Batch scope: floor(gamma * total eligible) positions with the lowest scores pooled
    over all sequences (ties by key, then sequence order); one ascending list per sequence."""
    total = sum(int(e.sum()) for e in eligible)
    count = math.floor(gamma * total)
    owner = torch.cat([torch.full((len(s),), i) for i, s in enumerate(scores)])
    pos = torch.cat([torch.arange(len(s)) for s in scores])
    keyed = torch.cat([s.masked_fill(~e, math.inf) for s, e in zip(scores, eligible, strict=True)])
    keys = torch.cat(list(tiebreak))
    chosen = _order(keyed, keys)[:count]
    out: list[list[int]] = [[] for _ in scores]
    for c in chosen.tolist():
        out[int(owner[c])].append(int(pos[c]))
    return [sorted(p) for p in out]

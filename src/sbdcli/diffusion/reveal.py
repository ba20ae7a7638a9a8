"""How many masked positions one sampler call reveals, per sample: the per-call count rules.

- first hitting: one position per call;
- threshold: every masked position is a candidate (the threshold, applied to the draws by
  sampler.py, decides; at least one is committed);
- fixed schedule (default): with S calls per block, a sample with r masked positions left
  after s of its calls reveals ceil(r / max(S - s, 1));
- reference schedule: BD3-LM's semi-AR DDPM law (`reference_reveal_probs`): at step i of
  S every masked position is revealed independently with probability p_i; a step that
  reveals nothing changes nothing, so it costs no network call (the reference reuses its
  cached probabilities there and does not count it as an NFE) and the sample walks on to
  the next step. The last step reveals everything left (the reference's own last step
  divides by zero, docs/sampling.md).

Counts only: which positions are revealed and the token draws are in sampler.py. Every
random number comes from the sample's own generator, in an amount that depends on that
sample alone (batch invariance). Imports only torch and config.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from sbdcli.config import SamplerConfig

__all__ = ["reference_count", "reference_reveal_probs", "tokens_per_call"]

REFERENCE_CHUNK = 4096
"""Uniforms drawn at once per sample while the reference schedule walks to its next step."""


def reference_reveal_probs(steps: int) -> torch.Tensor:
    """BD3-LM's probability that a masked position is revealed at each of S steps: (S,) float64.

    Its semi-AR DDPM update at step i of S uses t_i = linspace(1, 0, S)[i], s = t_i - 1/S
    and, the schedule being log-linear (mask chance = t), keeps a masked position masked
    with probability s / t_i: it is revealed with probability (1/S) / t_i. At the last step
    t = 0 (where the reference divides by zero): probability 1.
    """
    t = torch.linspace(1.0, 0.0, steps, dtype=torch.float64)
    probs = (1.0 / steps) / t
    probs[-1] = 1.0
    return probs


def reference_count(remaining: int, step: int, probs: torch.Tensor, gen: Any) -> tuple[int, int]:
    """(positions revealed, schedule steps used so far) of one sample from step `step` on.

    `remaining` >= 1 masked positions, `probs` = `reference_reveal_probs(S)`. Step j draws
    one uniform per masked position and reveals those with u < p_j; steps revealing none
    are skipped. Rows of uniforms are drawn in chunks whose size depends only on this
    sample's state.
    """
    total = len(probs)
    device = getattr(gen, "device", torch.device("cpu"))
    while True:
        if step >= total:  # cannot happen: the last step reveals with probability 1
            raise RuntimeError(f"reference schedule past its last step ({step} of {total})")
        rows = min(total - step, max(1, REFERENCE_CHUNK // remaining))
        u = torch.rand((rows, remaining), generator=gen, dtype=torch.float64, device=device)
        hits = (u < probs[step : step + rows, None].to(device)).sum(dim=1).cpu()
        found = hits.nonzero()
        if len(found):
            first = int(found[0, 0])
            return int(hits[first]), step + first + 1
        step += rows


def tokens_per_call(
    remaining: torch.Tensor,
    calls: torch.Tensor,
    steps: torch.Tensor,
    block: int,
    cfg: SamplerConfig,
    gens: Sequence[Any],
) -> torch.Tensor:
    """Tokens k_i that sample i reveals in this call; 0 where r_i = 0 (the sample waits).

    remaining r (n,), calls s (n,) and reference-schedule `steps` (n,; advanced in place)
    spent on the current block, all long on the CPU. first hitting: 1; threshold: r_i (an
    upper bound: the threshold decides); fixed: ceil(r_i / max(S - s_i, 1)); reference:
    drawn by `reference_count`.
    """
    total = cfg.steps_per_block or block
    if cfg.first_hitting:
        k = torch.ones_like(remaining)
    elif cfg.threshold is not None:
        k = remaining.clone()
    elif cfg.schedule == "reference":
        k = torch.zeros_like(remaining)
        probs = reference_reveal_probs(total)
        for i in (remaining > 0).nonzero()[:, 0].tolist():
            k[i], steps[i] = reference_count(int(remaining[i]), int(steps[i]), probs, gens[i])
    else:
        left = (total - calls).clamp_min(1)
        k = (remaining + left - 1) // left
    return torch.where(remaining > 0, k, 0)

"""The reveal policies at work: how many masked positions one sampler call reveals, which
ones, and the noise level of the call.

config.py holds the policies as values (`FixedSteps`, `ReferenceSchedule`, `Threshold`,
`FirstHitting`: what a user writes); `rule_for(policy)` gives the object that runs one:
- `count(remaining, clock, block, gens)`: tokens k_i that sample i reveals in this call
  (0 where it has nothing left: it waits and draws nothing);
- `random_order`: the k_i positions are a uniform random subset (sampler.py draws keys);
  otherwise every masked position is drawn and `keep(conf, rank, k)` picks among the draws;
- `level(t, remaining, clock, block, gens)`: the mask rate t of the call for a
  time-conditioned network (it receives sigma(t)), and `settle(t, steps, active, block)`:
  the rate a finished block is cached at.

The rules, per policy:
- fixed steps S (default: the block size): a sample with r masked positions left after s
  of its calls reveals ceil(r / max(S - s, 1)); t = linspace(1, 0, S)[s];
- reference schedule: BD3-LM's semi-AR DDPM law (`reference_reveal_probs`): at step i of S
  every masked position is revealed independently with probability p_i; a step that
  reveals nothing changes nothing, so it costs no network call (the reference reuses its
  cached probabilities there and does not count it as an NFE) and the sample walks on to
  the next step. The last step reveals everything left (the reference's own last step
  divides by zero, docs/sampling.md); t = linspace(1, 0, S)[step], and a block is cached
  at the level of the step that revealed;
- threshold TAU: every masked position is drawn; the draws with probability >= TAU are
  committed, and always the most confident one (ties: leftmost); t = r / block;
- first hitting: one position per call; t is multiplied by u^(1 / r), u ~ U(0, 1).
The levels follow the reference's `_semi_ar_sampler` (kuleshov-group/bd3lms, commit
1c3e8f43d88dfbcee5ff2aa6932a9e74b31ae1d7); threshold decoding has no reference counterpart.

Every random number comes from the sample's own generator, in an amount that depends on
that sample alone (batch invariance). Not here: the token draws and the network calls
(sampler.py). Imports only torch and config.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from sbdcli.config import FirstHitting, FixedSteps, ReferenceSchedule, RevealPolicy, Threshold

__all__ = ["FixedStepsRule", "reference_count", "reference_reveal_probs", "rule_for"]

REFERENCE_CHUNK = 4096
"""Uniforms drawn at once per sample while the reference schedule walks to its next step."""

Clock = tuple[torch.Tensor, torch.Tensor]
"""(calls, steps) (n,) long on the CPU: each sample's calls and reference-schedule steps
spent on the current block (`steps` is advanced in place by the reference schedule)."""


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


def _grid(total: int, step: int) -> float:
    """linspace(1, 0, S)[step] on BD3-LM's float32 grid (the last point for a later step)."""
    return float(torch.linspace(1.0, 0.0, total)[min(step, total - 1)])


class FixedStepsRule:
    """Fixed steps: S calls per block, ceil(r / max(S - s, 1)) tokens at call s."""

    settles = False
    """Whether a block is cached at another level than its last call's (`settle`)."""

    def __init__(self, policy: RevealPolicy) -> None:
        self.policy = policy
        self.random_order = not getattr(policy, "confident", False)

    def total(self, block: int) -> int:
        """S, the calls per block (the block size when the policy leaves it unset)."""
        return getattr(self.policy, "steps", None) or block

    def count(self, remaining: torch.Tensor, clock: Clock, block: int, gens: Any) -> torch.Tensor:
        left = (self.total(block) - clock[0]).clamp_min(1)
        return torch.where(remaining > 0, (remaining + left - 1) // left, 0)

    def keep(self, conf: torch.Tensor, rank: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Which of the drawn candidates (every masked position) are committed: the k of their
        sample with the highest probability (rank 0 = most confident, ties leftmost)."""
        return rank < k

    def _step(self, clock: Clock, i: int) -> int:
        return int(clock[0][i])

    def level(
        self, t: torch.Tensor, remaining: torch.Tensor, clock: Clock, block: int, gens: Any
    ) -> torch.Tensor:
        """Mask rate (n,) float64 of this call; `t` holds each sample's previous rate in the
        block (1 before its first call); waiting samples keep theirs."""
        t = t.clone()
        for i in (remaining > 0).nonzero()[:, 0].tolist():
            t[i] = _grid(self.total(block), self._step(clock, i))
        return t

    def settle(
        self, t: torch.Tensor, steps: torch.Tensor, active: torch.Tensor, block: int
    ) -> torch.Tensor:
        """The rate (n,) a block is cached at after a call: the call's own (most rules)."""
        return t


class ReferenceRule(FixedStepsRule):
    """BD3-LM's reference schedule: a random count per step, empty steps cost no call."""

    settles = True

    def count(self, remaining: torch.Tensor, clock: Clock, block: int, gens: Any) -> torch.Tensor:
        k = torch.zeros_like(remaining)
        probs, steps = reference_reveal_probs(self.total(block)), clock[1]
        for i in (remaining > 0).nonzero()[:, 0].tolist():
            k[i], steps[i] = reference_count(int(remaining[i]), int(steps[i]), probs, gens[i])
        return k

    def _step(self, clock: Clock, i: int) -> int:
        return int(clock[1][i])

    def settle(
        self, t: torch.Tensor, steps: torch.Tensor, active: torch.Tensor, block: int
    ) -> torch.Tensor:
        """The reference calls the network at the step after a change and reuses those
        probabilities until a step reveals something; it writes a finished block's KV cache
        at the level of that revealing step, linspace(1, 0, S)[steps - 1]."""
        total = self.total(block)
        grid = torch.linspace(1.0, 0.0, total).double()
        t = t.clone()
        for i in active.nonzero()[:, 0].tolist():
            t[i] = grid[min(max(int(steps[i]) - 1, 0), total - 1)]
        return t


class ThresholdRule(FixedStepsRule):
    """Threshold TAU: every masked position is a candidate; the draws decide."""

    def __init__(self, policy: RevealPolicy) -> None:
        super().__init__(policy)
        self.random_order, self.tau = False, float(getattr(policy, "tau", 1.0))

    def count(self, remaining: torch.Tensor, clock: Clock, block: int, gens: Any) -> torch.Tensor:
        return remaining.clone()  # an upper bound: `keep` decides

    def keep(self, conf: torch.Tensor, rank: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return (conf >= self.tau) | (rank == 0)

    def level(
        self, t: torch.Tensor, remaining: torch.Tensor, clock: Clock, block: int, gens: Any
    ) -> torch.Tensor:
        t = t.clone()
        for i in (remaining > 0).nonzero()[:, 0].tolist():
            t[i] = int(remaining[i]) / block  # the masked fraction
        return t


class FirstHittingRule(FixedStepsRule):
    """First hitting: one position per call; the level falls by u^(1 / r) per call."""

    def count(self, remaining: torch.Tensor, clock: Clock, block: int, gens: Any) -> torch.Tensor:
        return torch.where(remaining > 0, 1, 0).to(remaining.dtype)

    def level(
        self, t: torch.Tensor, remaining: torch.Tensor, clock: Clock, block: int, gens: Any
    ) -> torch.Tensor:
        t = t.clone()
        for i in (remaining > 0).nonzero()[:, 0].tolist():
            device = getattr(gens[i], "device", torch.device("cpu"))
            u = float(torch.rand((), generator=gens[i], dtype=torch.float64, device=device))
            t[i] = t[i] * u ** (1.0 / int(remaining[i]))
        return t


def rule_for(policy: RevealPolicy) -> FixedStepsRule:
    """The object that runs a reveal policy of config.py."""
    kinds: dict[type, type[FixedStepsRule]] = {
        FixedSteps: FixedStepsRule,
        ReferenceSchedule: ReferenceRule,
        Threshold: ThresholdRule,
        FirstHitting: FirstHittingRule,
    }
    return kinds[type(policy)](policy)


def tokens_per_call(
    remaining: torch.Tensor, clock: Clock, block: int, policy: RevealPolicy, gens: Sequence[Any]
) -> torch.Tensor:
    """Tokens k_i (n,) that sample i reveals in this call under `policy` (0: it waits)."""
    return rule_for(policy).count(remaining, clock, block, gens)

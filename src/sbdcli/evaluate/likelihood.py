"""log p(continuation | context) bounds under a block-diffusion denoiser (lm-eval requests).

A block-diffusion LM has no exact likelihood for B > 1: the score of a continuation y
after a context c is the negative block NELBO (diffusion/loss.py) restricted to y,
    -log p(y | c) <= E_t [ sum_b sum_{i in y ∩ b, x_t^i = [MASK]}
                               -log p(x_0^i | x_t^b, x_0^{<b}) / t_b ],
with the context clean (never masked), every block b that holds continuation tokens noised
at its own level t_b ~ U[eps, 1], and the positions after the continuation (up to the end
of its last block) always masked: they are the unknown rest of that block, so the bound is
on the marginal of y. `continuation_scores` estimates it with K Monte Carlo draws per
sequence, in one of two forms of the same expectation:
- `count` (default; LLaDA's lower-variance form): in each block with n continuation
  tokens, draw l uniformly from 1..n, mask l of the n tokens uniformly at random and weight
  each masked token's -log p by n / l. Summing the t-integral over the binomial number of
  masked tokens gives sum_l f(l) / l with f(l) the expected masked loss at l masked
  tokens, which is exactly E_l[(n / l) f(l)]: the same bound (RADD, Ou et al. 2024), with
  weights at most n instead of 1 / t up to 1 / eps. It needs a network that does not see
  t, so time-conditioned models use `time`;
- `time`: the training loss's form: t_b ~ U[eps, 1], each token masked with probability
  t_b, weight 1 / t_b.
**Common random numbers** across the sequences of one group (the choices of a
multiple-choice question): draw k uses the same block levels (t_{k,b}, or the uniform
behind l) and the same per-position uniforms u_{k,i} for every choice (`time`: token i
masked iff u_{k,i} < t_{k,b(i)}; `count`: the l tokens with the smallest u), so the
comparison between choices is not drowned in noise. The K levels of one block are
stratified (one in each [k/K, (k+1)/K)). Block size 1 is exact: every continuation token
is masked at t = 1 (weight 1), which is the autoregressive log-likelihood, and K is moot.

`greedy` is the denoiser's argmax rule: every continuation token is the argmax of the
SUBS distribution when its whole block is masked and the blocks before it are clean (the
one-call-per-block prediction; for B = 1 this is greedy autoregressive decoding).

Not here: lm-eval's request plumbing and text handling (sbdcli.harness), sampling.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sbdcli.diffusion.loss import token_nelbo
from sbdcli.diffusion.schedule import LogLinearSchedule
from sbdcli.errors import UserError

__all__ = ["ESTIMATORS", "ContinuationScore", "continuation_scores"]

ESTIMATORS = ("count", "time")
"""The two Monte Carlo forms of the same bound (module docstring)."""


@dataclass
class ContinuationScore:
    """The NELBO estimate of one continuation (nats, summed over its tokens)."""

    nelbo: float
    """Mean over the K draws: an upper bound on -log p(continuation | context)."""
    stderr: float
    """Standard error of the mean (std over draws / sqrt(K)); 0 when exact."""
    draws: list[float]
    greedy: bool
    exact: bool
    tokens: int
    estimator: str = "exact"
    """`count` (masked-count draws), `time` (noise-level draws) or `exact` (B = 1)."""

    @property
    def loglik(self) -> float:
        """The lower bound on log p(continuation | context) that lm-eval receives."""
        return -self.nelbo


def _levels(mc: int, n_blocks: int, gen: torch.Generator, eps: float) -> torch.Tensor:
    """(K, n_blocks) block levels, stratified over the K draws of each block."""
    v = torch.rand(n_blocks, generator=gen, dtype=torch.float64)  # (n_blocks,)
    k = torch.arange(mc, dtype=torch.float64)[:, None]  # (K, 1)
    u = ((v[None, :] + k) / mc) % 1.0  # (K, n_blocks): one draw per stratum
    return (eps + u * (1.0 - eps)).float()


def _padded(seqs: Sequence[Sequence[int]], length: int, mask_id: int) -> torch.Tensor:
    rows = torch.full((len(seqs), length), mask_id, dtype=torch.long)
    for r, s in enumerate(seqs):
        rows[r, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
    return rows  # (S, Lp)


def _scored(lengths: Sequence[int], n_context: Sequence[int], width: int) -> torch.Tensor:
    """(S, Lp) bool: the continuation positions of each sequence."""
    pos = torch.arange(width)[None, :]
    lo = torch.as_tensor(list(n_context))[:, None]
    hi = torch.as_tensor(list(lengths))[:, None]
    return (pos >= lo) & (pos < hi)


def _check(model: torch.nn.Module, seqs: Sequence[Sequence[int]], n_context: Sequence[int]) -> None:
    cfg = model.config  # type: ignore[attr-defined]
    for s, n in zip(seqs, n_context, strict=True):
        if not 1 <= n < len(s):
            raise UserError("a request needs a non-empty context (BOS counts) and continuation")
        if len(s) > cfg.seq_len:
            raise UserError(f"a request of {len(s)} tokens exceeds the model's {cfg.seq_len}")


def _forward(
    model: torch.nn.Module,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    block: int,
    t_tok: torch.Tensor,
    first_level: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token NELBO (R, Lp) and the argmax ids (R, Lp) of one batch of rows."""
    cfg = model.config  # type: ignore[attr-defined]
    sigma = LogLinearSchedule().sigma(first_level) if cfg.time_conditioning else None
    logits = model.train_logits(x_t, x0, block, sigma=sigma)  # type: ignore[operator]
    per_token = token_nelbo(logits, x0, x_t, t_tok, cfg.mask_id)  # sets the mask logit to -inf
    return per_token.double(), logits.argmax(-1)


@torch.inference_mode()
def continuation_scores(
    model: torch.nn.Module,
    seqs: Sequence[Sequence[int]],
    n_context: Sequence[int],
    block_size: int,
    *,
    mc: int = 16,
    generator: torch.Generator | None = None,
    eps: float = 1e-3,
    batch_size: int = 64,
    estimator: str = "count",
) -> list[ContinuationScore]:
    """NELBO estimates of the continuations of `seqs` (ids, BOS first) after `n_context` ids.

    The sequences form one common-random-number group (module docstring); `mc` = K draws;
    `estimator` "count" or "time" (module docstring; time-conditioned models use "time").
    """
    if estimator not in ESTIMATORS:
        raise UserError(f"unknown likelihood estimator {estimator!r} (one of count, time)")
    _check(model, seqs, n_context)
    device = next(model.parameters()).device
    mask_id = model.config.mask_id  # type: ignore[attr-defined]
    block = max(1, block_size)
    lengths = [len(s) for s in seqs]
    width = math.ceil(max(lengths) / block) * block
    x0 = _padded(seqs, width, mask_id)  # (S, Lp)
    scored = _scored(lengths, n_context, width)  # (S, Lp)
    n_blocks = width // block
    greedy_nll, greedy = _greedy(model, x0, scored, block, batch_size, device)
    exact = block == 1
    if exact:
        return [_score([float(v)], g, True, int(m.sum())) for v, g, m in
                zip(greedy_nll, greedy, scored, strict=True)]  # fmt: skip
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    counts = estimator == "count" and not model.config.time_conditioning  # type: ignore[attr-defined]
    t = _levels(mc, n_blocks, gen, eps)  # (K, n_blocks), shared by the group
    u = torch.rand(mc, width, generator=gen, dtype=torch.float64)  # (K, Lp), shared
    if counts:
        level = (t - eps) / (1.0 - eps)  # the stratified uniforms in [0, 1)
        masked, t_eff = _count_masks(level, u, scored, block)  # (S, K, Lp) each
    else:
        t_tok = t.repeat_interleave(block, dim=1)  # (K, Lp)
        masked = scored[:, None, :] & (u.float() < t_tok)[None, :, :]  # (S, K, Lp)
        t_eff = t_tok[None].expand(len(seqs), -1, -1)
    rows_x0 = x0[:, None, :].expand(-1, mc, -1).reshape(-1, width)  # (S K, Lp)
    rows_t = t_eff.reshape(-1, width)
    after = ~scored & (torch.arange(width)[None, :] >= torch.as_tensor(n_context)[:, None])
    hide = masked | after[:, None, :]  # the rest of the last block stays masked
    rows_xt = torch.where(hide.reshape(-1, width), mask_id, rows_x0)
    first = _first_scored_level(t, scored, block).reshape(-1)  # (S K,)
    totals = torch.zeros(rows_x0.shape[0], dtype=torch.float64)
    for lo in range(0, rows_x0.shape[0], batch_size):
        sl = slice(lo, lo + batch_size)
        nelbo, _ = _forward(model, rows_x0[sl].to(device), rows_xt[sl].to(device), block,
                            rows_t[sl].to(device), first[sl].to(device))  # fmt: skip
        keep = masked.reshape(-1, width)[sl].to(device)
        totals[sl] = torch.where(keep, nelbo, 0.0).sum(-1).cpu()
    per_draw = totals.view(len(seqs), mc)
    name = "count" if counts else "time"
    return [_score(per_draw[i].tolist(), bool(greedy[i]), False, int(scored[i].sum()), name)
            for i in range(len(seqs))]  # fmt: skip


def _count_masks(
    v: torch.Tensor, u: torch.Tensor, scored: torch.Tensor, block: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks of the masked-count estimator: (S, K, Lp) masked, (S, K, Lp) l / n.

    Block b of sequence s holds n scored tokens; draw k masks exactly l = floor(v_{k,b} n)
    + 1 of them (v in [0, 1) stratified over K and shared by the group, so l is uniform
    on 1..n), the l with the smallest shared
    uniforms u_{k,i}, so choices with the same n get the same masks. Each masked token
    is weighted n / l (token_nelbo divides by the returned l / n).
    """
    s_count, (k, width) = scored.shape[0], u.shape
    n_blocks = width // block
    keys = torch.where(scored[:, None, :], u[None, :, :], math.inf)  # (S, K, Lp)
    keys = keys.view(s_count, k, n_blocks, block)
    rank = keys.argsort(-1).argsort(-1)  # (S, K, n_blocks, B): order among the block
    n = scored.view(s_count, 1, n_blocks, block).sum(-1)  # (S, 1, n_blocks)
    l_count = torch.minimum(torch.floor(v[None] * n) + 1, n.clamp(min=1))  # (S, K, n_blocks)
    masked = rank < l_count[..., None]  # (S, K, n_blocks, B)
    frac = (l_count / n.clamp(min=1)).float()[..., None].expand(-1, -1, -1, block)
    masked = masked.reshape(s_count, k, width) & scored[:, None, :]
    return masked, frac.reshape(s_count, k, width).contiguous()


def _first_scored_level(t: torch.Tensor, scored: torch.Tensor, block: int) -> torch.Tensor:
    """(S, K) level of each sequence's first continuation block (time-conditioned models)."""
    first_block = scored.float().argmax(-1) // block  # (S,)
    return t[:, first_block].T.contiguous()


def _greedy(
    model: torch.nn.Module,
    x0: torch.Tensor,
    scored: torch.Tensor,
    block: int,
    batch_size: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass with every continuation token masked (t = 1): NLL sum (S,) and greedy (S,)."""
    mask_id = model.config.mask_id  # type: ignore[attr-defined]
    n_ctx = scored.float().argmax(-1)
    hide = torch.arange(x0.shape[1])[None, :] >= n_ctx[:, None]
    x_t = torch.where(hide, mask_id, x0)
    ones = torch.ones(x0.shape, dtype=torch.float32)
    nll = torch.zeros(x0.shape[0], dtype=torch.float64)
    greedy = torch.zeros(x0.shape[0], dtype=torch.bool)
    for lo in range(0, x0.shape[0], batch_size):
        sl = slice(lo, lo + batch_size)
        per, top = _forward(model, x0[sl].to(device), x_t[sl].to(device), block,
                            ones[sl].to(device), ones[sl, 0].to(device))  # fmt: skip
        keep = scored[sl].to(device)
        nll[sl] = torch.where(keep, per, 0.0).sum(-1).cpu()
        greedy[sl] = ((top == x0[sl].to(device)) | ~keep).all(-1).cpu()
    return nll, greedy


def _score(
    draws: list[float], greedy: bool, exact: bool, tokens: int, estimator: str = "exact"
) -> ContinuationScore:
    k = len(draws)
    mean = sum(draws) / k
    var = sum((d - mean) ** 2 for d in draws) / (k - 1) if k > 1 else 0.0
    return ContinuationScore(mean, math.sqrt(var / k), draws, greedy, exact, tokens, estimator)

"""Tests for evaluate/likelihood.py: the continuation NELBO of lm-eval requests."""

from __future__ import annotations

import pytest
import torch

from evaluate_helpers import stepwise_causal_logprobs, tiny_denoiser
from sbdcli.errors import UserError
from sbdcli.evaluate.likelihood import continuation_scores


def _seq(model, n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    body = torch.randint(0, model.config.vocab_size - 2, (n,), generator=g).tolist()
    return [model.config.bos_id, *body]


def test_block_one_is_the_exact_autoregressive_likelihood():
    model = tiny_denoiser()
    seqs, ctx = [_seq(model, 11, 0), _seq(model, 8, 1)], [5, 3]
    scores = continuation_scores(model, seqs, ctx, 1, mc=3)
    for s, n, score in zip(seqs, ctx, scores, strict=True):
        logp = stepwise_causal_logprobs(model, torch.tensor([s]))[0]  # log p(x_i | x_<i), i >= 1
        assert score.exact and score.stderr == 0 and score.tokens == len(s) - n
        assert score.loglik == pytest.approx(float(logp[n - 1 :].sum()), abs=1e-4)


def test_greedy_is_the_argmax_of_the_masked_block():
    model = tiny_denoiser()
    seq = _seq(model, 6, 2)
    with torch.no_grad():
        x_t = torch.tensor([seq[:4] + [model.config.mask_id] * 3])
        logits = model.train_logits(x_t, torch.tensor([seq]), 1)[0]
    logits[:, model.config.mask_id] = -float("inf")
    best = int(logits[4].argmax())  # position 4 with positions 4.. masked, B = 1
    (hit,) = continuation_scores(model, [[*seq[:4], best]], [4], 1)
    (miss,) = continuation_scores(model, [[*seq[:4], (best + 1) % 10]], [4], 1)
    assert hit.greedy and not miss.greedy


def test_the_same_request_gets_the_same_draws_whatever_its_group():
    model = tiny_denoiser()
    a, b = _seq(model, 12, 3), _seq(model, 12, 4)
    b[:6] = a[:6]
    alone = continuation_scores(
        model, [a], [6], 4, mc=8, generator=torch.Generator().manual_seed(5)
    )
    pair = continuation_scores(model, [a, b, a], [6, 6, 6], 4, mc=8,
                               generator=torch.Generator().manual_seed(5))  # fmt: skip
    assert pair[0].draws == pytest.approx(alone[0].draws, abs=1e-5)
    assert pair[2].draws == pytest.approx(pair[0].draws, abs=1e-5)
    assert len(alone[0].draws) == 8 and alone[0].stderr > 0 and not alone[0].exact


def test_common_random_numbers_shrink_the_variance_of_a_comparison():
    """Two continuations differing in their last token: under shared draws the difference of
    their estimates varies far less than under independent draws."""
    model = tiny_denoiser()
    a = _seq(model, 15, 6)
    b = [*a[:-1], (a[-1] + 1) % 10]
    shared = continuation_scores(model, [a, b], [4, 4], 4, mc=64,
                                 generator=torch.Generator().manual_seed(0))  # fmt: skip
    (ia,) = continuation_scores(
        model, [a], [4], 4, mc=64, generator=torch.Generator().manual_seed(1)
    )
    (ib,) = continuation_scores(
        model, [b], [4], 4, mc=64, generator=torch.Generator().manual_seed(2)
    )
    crn = torch.tensor(shared[0].draws) - torch.tensor(shared[1].draws)
    indep = torch.tensor(ia.draws) - torch.tensor(ib.draws)
    assert float(crn.var()) < 0.25 * float(indep.var())


def test_the_estimate_is_unbiased_for_the_block_nelbo():
    """A one-token continuation in one block of 8: each draw is NLL / t when the token is
    masked (probability t) and 0 otherwise, so the mean of many draws is the NLL."""
    model = tiny_denoiser()
    seq = _seq(model, 7, 7)
    x0 = torch.tensor([seq])
    x_t = x0.clone()
    x_t[0, 7] = model.config.mask_id
    with torch.no_grad():
        logits = model.train_logits(x_t, x0, 8)[0, 7]
    logits[model.config.mask_id] = -float("inf")
    nll = -float(logits.log_softmax(-1)[seq[7]])
    (mc,) = continuation_scores(model, [seq], [7], 8, mc=4096)
    assert mc.nelbo == pytest.approx(nll, rel=0.05)


def test_requests_that_do_not_fit_are_refused():
    model = tiny_denoiser(length=16)
    with pytest.raises(UserError, match="exceeds"):
        continuation_scores(model, [list(range(17))], [3], 4)
    with pytest.raises(UserError, match="continuation"):
        continuation_scores(model, [[8, 1, 2]], [3], 4)


def _exact_block_bound(model, seq: list[int], n_ctx: int, block: int) -> float:
    """The bound of a continuation inside one block, by enumeration: sum_l f(l) / l, f(l)
    the mean over the l-subsets M of the continuation of sum_{i in M} -log p(x_i | rest)."""
    from itertools import combinations

    cont = range(n_ctx, len(seq))
    x0 = torch.tensor([seq])
    total = 0.0
    for size in range(1, len(cont) + 1):
        losses = []
        for subset in combinations(cont, size):
            x_t = x0.clone()
            x_t[0, list(subset)] = model.config.mask_id
            with torch.no_grad():
                logits = model.train_logits(x_t, x0, block)[0].double()
            logits[:, model.config.mask_id] = -float("inf")
            logp = logits.log_softmax(-1)
            losses.append(-sum(float(logp[i, seq[i]]) for i in subset))
        total += sum(losses) / len(losses) / size
    return total


def test_both_estimators_are_the_same_bound_and_count_has_less_variance():
    """Three continuation tokens in one block of 8 (after 5 context tokens): the mean of
    many draws of either form is the enumerated bound; the count form varies less."""
    model = tiny_denoiser()
    seq = _seq(model, 7, 8)  # BOS + 7: positions 0..7, one block of 8
    want = _exact_block_bound(model, seq, 5, 8)
    gen = torch.Generator().manual_seed
    (count,) = continuation_scores(model, [seq], [5], 8, mc=3000, generator=gen(0))
    (time,) = continuation_scores(model, [seq], [5], 8, mc=3000, generator=gen(1),
                                  estimator="time")  # fmt: skip
    assert count.estimator == "count" and time.estimator == "time"
    assert count.nelbo == pytest.approx(want, rel=0.02)
    assert time.nelbo == pytest.approx(want, rel=0.05)
    assert count.stderr < 0.5 * time.stderr


def test_a_time_conditioned_model_uses_the_time_form():
    from sbdcli.config import ModelConfig
    from sbdcli.model import Denoiser

    cfg = ModelConfig(vocab_size=12, mask_id=11, seq_len=16, n_layers=1, d_model=32,
                      n_heads=2, cond_dim=16, dropout=0.0, bos_id=10, eos_id=10,
                      time_conditioning=True)  # fmt: skip
    torch.manual_seed(0)
    model = Denoiser(cfg).eval()
    (score,) = continuation_scores(model, [_seq(model, 10, 9)], [4], 4, mc=4)
    assert score.estimator == "time"
    with pytest.raises(UserError, match="estimator"):
        continuation_scores(model, [_seq(model, 10, 9)], [4], 4, estimator="nope")

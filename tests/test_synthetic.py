"""Tests for the topic-markov language: construction, exact likelihood, sampling, files."""

from __future__ import annotations

import functools
import itertools
import math

import pytest
import torch

from sbdcli.data.synthetic import (
    Oracle,
    TopicMarkovSpec,
    build_oracle,
    load_oracle,
    sparse_rows,
    unigram_entropy,
)
from sbdcli.errors import UserError

SMALL = TopicMarkovSpec(vocab=5, topics=3, fanout=2, alpha=0.3, eps=0.05)


def brute_force_log_likelihood(oracle: Oracle, row: list[int]) -> float:
    """log sum_z p(z) p_z(x_1) prod_i p_z(x_i | x_{i-1}), with plain Python floats."""
    prior, init, trans = _tables(oracle)
    x = row[1:]
    total = 0.0
    for z in range(len(prior)):
        p = prior[z] * init[z][x[0]]
        for a, b in itertools.pairwise(x):
            p *= trans[z][a][b]
        total += p
    return math.log(total)


@functools.cache
def _tables(oracle: Oracle) -> tuple[list, list, list]:
    return (
        oracle.log_prior.exp().tolist(),
        oracle.log_init.exp().tolist(),
        oracle.log_trans.exp().tolist(),
    )


def test_same_seed_same_language_other_seed_differs():
    a, b = build_oracle(TopicMarkovSpec(), 7), build_oracle(TopicMarkovSpec(), 7)
    c = build_oracle(TopicMarkovSpec(), 8)
    assert torch.equal(a.log_trans, b.log_trans) and torch.equal(a.log_init, b.log_init)
    assert not torch.equal(a.log_trans, c.log_trans)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(a.sample(16, 20, g1), b.sample(16, 20, g2))


def test_default_shapes_and_special_ids():
    oracle = build_oracle(TopicMarkovSpec(), 0)
    assert oracle.log_prior.shape == (8,) and oracle.log_init.shape == (8, 64)
    assert oracle.log_trans.shape == (8, 64, 64)
    assert oracle.log_trans.dtype == torch.float64
    assert (oracle.bos_id, oracle.mask_id, oracle.vocab_size) == (64, 65, 66)


def test_distributions_are_normalised_and_sparse():
    spec = TopicMarkovSpec()
    oracle = build_oracle(spec, 3)
    assert math.isclose(oracle.log_prior.exp().sum().item(), 1.0, abs_tol=1e-12)
    rows = torch.cat([oracle.log_init, oracle.log_trans.flatten(0, 1)]).exp()  # (K + K*V, V)
    assert torch.allclose(rows.sum(dim=1), torch.ones(len(rows), dtype=torch.float64))
    floor = spec.eps / spec.vocab
    # exactly `fanout` successors carry Dirichlet weight; the rest have the smoothing mass
    assert ((rows > floor * (1 + 1e-9)).sum(dim=1) == spec.fanout).all()
    assert torch.allclose(rows.min(dim=1).values, torch.full((len(rows),), floor).double())


def test_sparse_rows_mean_follows_dirichlet():
    spec = TopicMarkovSpec(vocab=4, fanout=4, alpha=0.3, eps=0.0)
    rows = sparse_rows(20000, spec, torch.Generator().manual_seed(0))
    # symmetric Dirichlet over all 4 tokens: mean 1/4 each, var = (1/4)(3/4)/(4*0.3+1)
    assert torch.allclose(rows.mean(0), torch.full((4,), 0.25).double(), atol=0.01)
    assert math.isclose(rows[:, 0].var().item(), 0.1875 / 2.2, rel_tol=0.05)


def test_log_likelihood_equals_brute_force_over_topics():
    oracle = build_oracle(TopicMarkovSpec(), 11)
    rows = oracle.sample(6, 12, torch.Generator().manual_seed(2))
    rows[0, 1:] = torch.arange(11) % 64  # an arbitrary (unlikely) row too
    got = oracle.log_likelihood(rows)
    assert got.dtype == torch.float64 and got.shape == (6,)
    for r in range(6):
        assert math.isclose(got[r].item(), brute_force_log_likelihood(oracle, rows[r].tolist()))


def test_likelihood_sums_to_one_over_all_sequences():
    oracle = build_oracle(SMALL, 0)
    seqs = torch.tensor(list(itertools.product(range(5), repeat=3)))  # (125, 3)
    rows = torch.cat([torch.full((125, 1), oracle.bos_id), seqs], dim=1)
    assert math.isclose(oracle.log_likelihood(rows).exp().sum().item(), 1.0, rel_tol=1e-12)


def test_samples_follow_the_exact_distribution():
    oracle = build_oracle(SMALL, 1)
    n = 40000
    rows = oracle.sample(n, 3, torch.Generator().manual_seed(5))  # (n, 3): BOS, x1, x2
    assert (rows[:, 0] == oracle.bos_id).all() and rows[:, 1:].max() < 5
    counts = torch.bincount(rows[:, 1] * 5 + rows[:, 2], minlength=25).double() / n
    grid = torch.tensor(list(itertools.product(range(5), repeat=2)))
    p = oracle.log_likelihood(torch.cat([torch.full((25, 1), 5), grid], 1)).exp()
    tolerance = 5 * (p * (1 - p) / n).sqrt() + 1e-4
    assert ((counts - p).abs() <= tolerance).all()


def test_token_log_probs_sum_to_log_likelihood():
    oracle = build_oracle(TopicMarkovSpec(), 4)
    rows = oracle.sample(8, 30, torch.Generator().manual_seed(0))
    per_token = oracle.token_log_probs(rows)
    assert per_token.shape == (8, 30) and (per_token[:, 0] == 0).all()
    assert torch.allclose(per_token.sum(1), oracle.log_likelihood(rows), atol=1e-9)
    # first content token: log sum_z p(z) p_z(x_1)
    first = torch.logsumexp(oracle.log_prior[:, None] + oracle.log_init, 0)[rows[:, 1]]
    assert torch.allclose(per_token[:, 1], first)


def test_out_of_vocabulary_tokens_have_zero_probability():
    oracle = build_oracle(SMALL, 0)
    rows = torch.tensor([[5, 1, 2, 3], [5, 1, 6, 3]])  # 6 = MASK
    ll = oracle.log_likelihood(rows)
    assert math.isfinite(ll[0].item()) and ll[1].item() == -math.inf
    assert oracle.token_log_probs(rows)[1, 2].item() == -math.inf


def test_rows_must_start_with_bos():
    oracle = build_oracle(SMALL, 0)
    with pytest.raises(UserError, match="row 1 does not start with BOS"):
        oracle.log_likelihood(torch.tensor([[5, 1, 2], [1, 2, 3]]))


def test_length_one_rows_have_probability_one():
    oracle = build_oracle(SMALL, 0)
    assert oracle.log_likelihood(torch.full((3, 1), 5)).abs().max() == 0


def test_reference_numbers_match_an_independent_estimate():
    oracle = build_oracle(TopicMarkovSpec(), 0)
    ref = oracle.reference_numbers(256, 33, torch.Generator().manual_seed(9))
    rows = oracle.sample(256, 33, torch.Generator().manual_seed(9))
    nll = [-brute_force_log_likelihood(oracle, r) / 32 for r in rows.tolist()]
    per_row = torch.tensor(nll, dtype=torch.float64)
    assert math.isclose(ref["nll_per_token"], per_row.mean().item())
    assert math.isclose(ref["nll_per_token_stderr"], per_row.std().item() / 16)
    assert ref["samples"] == 256 and ref["seq_len"] == 33
    assert 0.5 < ref["nll_per_token"] < math.log(64)  # far below uniform
    entropies = [-sum(c / 32 * math.log(c / 32) for c in _counts(r[1:])) for r in rows.tolist()]
    assert math.isclose(ref["unigram_entropy"], sum(entropies) / 256)


def _counts(tokens: list[int]) -> list[int]:
    return [tokens.count(t) for t in set(tokens)]


def test_unigram_entropy_of_histograms():
    tokens = torch.tensor([[0, 0, 0, 0], [0, 1, 2, 3], [0, 0, 1, 1]])
    got = unigram_entropy(tokens, 4)
    assert torch.allclose(got, torch.tensor([0.0, math.log(4), math.log(2)]).double())


def test_save_and_load_round_trip(tmp_path):
    oracle = build_oracle(SMALL, 2)
    oracle.save(tmp_path / "oracle.safetensors")
    for where in (tmp_path / "oracle.safetensors", tmp_path):
        back = load_oracle(where)
        assert torch.equal(back.log_trans, oracle.log_trans)
        assert back.spec == SMALL.to_dict() and back.seed == 2


def test_load_rejects_unnormalised_tables(tmp_path):
    oracle = build_oracle(SMALL, 2)
    Oracle(oracle.log_prior, oracle.log_init + 0.1, oracle.log_trans).save(tmp_path / "o.st")
    with pytest.raises(UserError, match="not normalised"):
        load_oracle(tmp_path / "o.st")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no oracle.safetensors"):
        load_oracle(tmp_path / "empty")


@pytest.mark.parametrize(
    "bad", [{"vocab": 1}, {"topics": 0}, {"fanout": 65}, {"alpha": 0.0}, {"eps": 1.5}]
)
def test_invalid_spec_is_a_user_error(bad):
    with pytest.raises(UserError, match="invalid topic-markov"):
        TopicMarkovSpec(**bad)

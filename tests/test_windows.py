"""Tests for diffusion/windows.py: the centred windows cover a long sequence with cores that
partition it and keep L/4 of context on each side, scores and revises up to L are exactly
the unwindowed ones, and beyond L a revise changes only the masked positions."""

from __future__ import annotations

import itertools

import pytest
import torch

from fake_model import one_thread, tiny_denoiser  # noqa: F401 (autouse fixture)
from sbdcli.config import SamplerConfig
from sbdcli.diffusion import remask as rm
from sbdcli.diffusion import sampler as sp
from sbdcli.diffusion.windows import plan, revise, scores


@pytest.mark.parametrize("length", [1, 31, 32, 33, 47, 48, 100, 512])
def test_cores_partition_the_sequence_with_a_quarter_of_context(length):
    size = 32
    windows = plan(length, size)
    assert windows[0].core_lo == 0 and windows[-1].core_hi == length
    for a, b in itertools.pairwise(windows):
        assert a.core_hi == b.core_lo  # contiguous, disjoint cores
    for w in windows:
        assert w.start >= 0 and w.start + w.size <= max(length, size)
        assert w.start <= w.core_lo < w.core_hi <= w.start + w.size
        if length > size:
            assert w.size == size
            left = w.core_lo - w.start if w.core_lo > 0 else size // 4
            right = w.start + w.size - w.core_hi if w.core_hi < length else size // 4
            assert left >= size // 4 and right >= size // 4
    if length <= size:
        assert len(windows) == 1 and windows[0].size == length


def _model():
    return tiny_denoiser(seq_len=32, vocab_size=14)


def test_scores_up_to_l_are_the_unwindowed_scores():
    model = _model()
    tokens = torch.randint(0, 12, (2, 32), generator=torch.Generator().manual_seed(0))
    tokens[:, 0] = 12
    elig = torch.stack([rm.eligible_mask(32, 1)] * 2)
    got, calls = scores(model, tokens, elig, "masked", 4)
    want, want_calls = rm.masked_scores(model, tokens, elig, 4)
    assert torch.equal(got, want) and torch.equal(calls, want_calls)
    got, _ = scores(model, tokens, elig, "posthoc", 1)
    assert torch.equal(got, rm.posthoc_scores(model, tokens))


def test_long_scores_come_from_each_positions_core_window():
    model = _model()
    tokens = torch.randint(0, 12, (1, 80), generator=torch.Generator().manual_seed(1))
    got, calls = scores(model, tokens, torch.ones(1, 80, dtype=torch.bool), "posthoc", 1)
    assert int(calls[0]) == len(plan(80, 32))  # one network call per window
    for w in plan(80, 32):
        alone = rm.posthoc_scores(model, tokens[:, w.start : w.start + w.size])
        lo, hi = w.core_lo - w.start, w.core_hi - w.start
        assert torch.equal(got[:, w.core_lo : w.core_hi], alone[:, lo:hi])


def test_revise_beyond_l_changes_exactly_the_masked_positions():
    model = _model()
    tokens = torch.randint(0, 12, (2, 90), generator=torch.Generator().manual_seed(2))
    masked = torch.zeros(2, 90, dtype=torch.bool)
    masked[0, [5, 40, 41, 89]] = True
    masked[1, [60]] = True
    x = tokens.masked_fill(masked, 13)
    gens = [sp.make_generator(0, "revise", 1, f"r{i}") for i in range(2)]
    res = revise(model, x, masked, SamplerConfig(block_size=0), gens, step_offset=torch.zeros(2))
    assert torch.equal(res.tokens[~masked], tokens[~masked])
    assert not bool((res.tokens[masked] == 13).any())
    assert res.nfe.tolist() == [4, 1]  # one token per call, windows without work cost nothing
    assert torch.equal(res.committed, masked)

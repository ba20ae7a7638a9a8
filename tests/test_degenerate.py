"""Tests for diffusion/degenerate.py: BD3-LM's degenerate-sample rule (bd3lms diffusion.py
`_compute_entropy` and `_check_stop_conds`, commit 1c3e8f43d88dfbcee5ff2aa6932a9e74b31ae1d7:
unigram entropy in nats of the last 256 tokens, checked after each block once the sequence
is longer than 256 tokens)."""

from __future__ import annotations

import math

import pytest
import torch

from sbdcli.diffusion.degenerate import block_ends, is_degenerate, tail_entropy, window_entropy


def test_window_entropy_is_the_entropy_of_the_token_counts():
    assert window_entropy([4, 4, 4, 4]) == 0.0
    assert window_entropy([1, 2, 3, 4]) == pytest.approx(math.log(4))
    p = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    assert window_entropy(torch.tensor([7, 7, 8, 9])) == pytest.approx(float(-(p * p.log()).sum()))
    # the reference's formula: torch.special.entr of counts / total, summed
    ref = torch.special.entr(torch.tensor([2.0, 1.0, 1.0]) / 4).sum()
    assert window_entropy([7, 7, 8, 9]) == pytest.approx(float(ref), rel=1e-6)
    assert math.isnan(window_entropy([]))


def test_only_sequences_longer_than_the_window_are_checked():
    assert tail_entropy([1] * 8, 8) is None
    assert tail_entropy([9] + [1] * 8, 8) == 0.0
    assert tail_entropy([1, 1, 2, 3, 4, 5], 4) == pytest.approx(math.log(4))


def test_block_ends():
    assert block_ends(12, 4) == [4, 8, 12]
    assert block_ends(10, 4) == [4, 8, 10]
    assert block_ends(10, 0) == [10] and block_ends(0, 4) == []


def test_a_degenerate_window_at_an_earlier_block_end_counts():
    """The reference checks after every block: a repetitive middle makes a sample
    degenerate even when its final window is diverse."""
    diverse = [1, 2, 3, 4, 5, 6, 7, 8]
    sample = [0, *diverse, 9, 9, 9, 9, 9, 9, 9, 9, *diverse]  # length 25, blocks of 4
    assert tail_entropy(sample, 8) == pytest.approx(math.log(8))
    assert is_degenerate(sample, threshold=1.0, window=8, block=4)  # end 16: seven 9s and an 8
    assert not is_degenerate(sample, threshold=1.0, window=8, block=25)  # one block: only the end
    assert not is_degenerate([0, *diverse, *diverse], threshold=1.0, window=8, block=4)

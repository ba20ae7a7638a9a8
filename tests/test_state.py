"""Tests for train/state.py: mix-scale block sizes and draws, LR schedule, EMA, data order,
the noise interval per block size."""

from __future__ import annotations

import math

import pytest
import torch

from sbdcli.errors import UserError
from sbdcli.train.state import (
    EMA,
    BlockSizeSampler,
    DataOrder,
    lr_at,
    resolve_block_sizes,
)


def test_block_sizes_clamp_to_length_and_must_divide():
    assert resolve_block_sizes(4, 1024, 128) == (4, 128, ["block size 1024 >= L = 128: "
                                                          "using one global block"])  # fmt: skip
    assert resolve_block_sizes(4, 128, 128) == (4, 128, [])
    with pytest.raises(UserError, match="does not divide"):
        resolve_block_sizes(3, 128, 128)


def test_mix_scale_draw_frequencies_match_lambda():
    draws = 20_000
    for lam in (0.1, 0.3):
        sampler = BlockSizeSampler(4, 128, lam, seed=7)
        sizes = [sampler.draw() for _ in range(draws)]
        assert set(sizes) == {4, 128}
        freq = sizes.count(128) / draws
        assert abs(freq - lam) < 5 * math.sqrt(lam * (1 - lam) / draws)
    assert {BlockSizeSampler(4, 128, 0.0, 1).draw() for _ in range(200)} == {4}
    assert {BlockSizeSampler(4, 128, 1.0, 1).draw() for _ in range(200)} == {128}


def test_block_sampler_is_seeded_and_resumes_from_its_state():
    a, b = BlockSizeSampler(4, 32, 0.5, 3), BlockSizeSampler(4, 32, 0.5, 3)
    first = [a.draw() for _ in range(50)]
    assert first == [b.draw() for _ in range(50)]
    state = a.state()
    rest = [a.draw() for _ in range(50)]
    c = BlockSizeSampler(4, 32, 0.5, 999)
    c.load_state(state)
    assert [c.draw() for _ in range(50)] == rest
    assert first != [BlockSizeSampler(4, 32, 0.5, 4).draw() for _ in range(50)]


def test_lr_schedule_warmup_constant_and_cosine():
    assert lr_at(0, 1.0, 4, 20, "constant", 0.1) == pytest.approx(0.25)
    assert lr_at(3, 1.0, 4, 20, "constant", 0.1) == pytest.approx(1.0)
    assert lr_at(15, 1.0, 4, 20, "constant", 0.1) == 1.0
    assert lr_at(4, 1.0, 4, 20, "cosine", 0.1) == pytest.approx(1.0)
    mid = 4 + 8  # halfway through the decay: r + (1 - r) / 2
    assert lr_at(mid, 1.0, 4, 20, "cosine", 0.1) == pytest.approx(0.55)
    assert lr_at(20, 1.0, 4, 20, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_at(0, 2.0, 0, 10, "constant", 0.0) == 2.0


def test_ema_matches_explicit_recurrence_and_swaps_back():
    p = torch.nn.Parameter(torch.zeros(3))
    ema = EMA({"w": p}, decay=0.9, warmup=True)
    expected = torch.zeros(3)
    for n, value in enumerate([1.0, 2.0, 3.0, 4.0]):
        with torch.no_grad():
            p.fill_(value)
        d = min(0.9, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * value
        ema.update({"w": p})
    assert torch.allclose(ema.shadow["w"], expected)
    with ema.swapped_into({"w": p}):
        assert torch.allclose(p, expected)
    assert torch.equal(p.detach(), torch.full((3,), 4.0))
    plain = EMA({"w": p}, decay=0.5, warmup=False)
    assert plain.current_decay() == 0.5


def test_data_order_is_a_permutation_per_epoch_and_position_based():
    order = DataOrder(10, seed=2)
    epoch0, epoch1 = order.rows(0, 10), order.rows(10, 10)
    assert sorted(epoch0.tolist()) == list(range(10)) == sorted(epoch1.tolist())
    assert not torch.equal(epoch0, epoch1)
    span = DataOrder(10, seed=2).rows(7, 6)  # crosses the epoch boundary
    assert torch.equal(span, torch.cat([epoch0[7:], epoch1[:3]]))

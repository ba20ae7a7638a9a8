"""Tests for schedule.py: log-linear schedule, antithetic t, forward masking, resampling."""

from __future__ import annotations

import math

import torch

from sbdcli.diffusion.schedule import LogLinearSchedule, resample_masks, sample_masks, sample_t


def test_log_linear_schedule_formulas():
    sched = LogLinearSchedule(eps=1e-3)
    t = torch.tensor([0.001, 0.25, 0.5, 1.0], dtype=torch.float64)
    assert torch.equal(sched.mask_prob(t), t)
    assert torch.allclose(sched.loss_weight(t), 1.0 / t)
    # alpha_t = 1 - t; weight = -alpha'_t / (1 - alpha_t) = 1 / t
    assert math.isfinite(float(sched.sigma(torch.tensor(1.0))))


def test_sigma_is_the_reference_conditioning_formula():
    # bd3lms (commit 1c3e8f43d88dfbcee5ff2aa6932a9e74b31ae1d7) diffusion.py `_sigma_from_p`:
    # min(-log(1 - p), sigma_max) with sigma_max = LogLinearNoise.total_noise(1) = -log eps
    sched = LogLinearSchedule(eps=1e-3)
    t = torch.tensor([0.0, 0.001, 0.25, 0.5, 0.999, 1.0], dtype=torch.float64)
    expected = torch.tensor([0.0, -math.log(0.999), math.log(4 / 3), math.log(2), -math.log(1e-3)])
    assert torch.allclose(sched.sigma(t)[:5], expected.double(), atol=1e-9)
    assert sched.sigma_max == sched.sigma(1.0) == sched.sigma(0.9999)  # capped at t = 1
    assert abs(sched.sigma_max + math.log(1e-3)) < 1e-4  # float32, as the reference
    # the former mapping -log(1 - (1 - eps) t) differs at every t > 0
    assert not torch.allclose(sched.sigma(t[1:5]), -torch.log1p(-(1 - 1e-3) * t[1:5]))
    assert sched.sigma(torch.tensor([0.5])).dtype == torch.float32
    assert sched.sigma(torch.tensor([0.5], dtype=torch.float64)).dtype == torch.float64


def test_antithetic_t_has_one_draw_per_stratum():
    batch, blocks = 4, 8
    u = sample_t(batch, blocks, generator=torch.Generator().manual_seed(0), eps_min=0, eps_max=1)
    assert u.shape == (batch, blocks)
    k = batch * blocks
    strata = (u.flatten() * k).floor().long()
    assert torch.equal(strata, torch.arange(k))  # cell k lands in [k/K, (k+1)/K)


def test_antithetic_t_range_and_mean():
    t = sample_t(16, 16, generator=torch.Generator().manual_seed(1), eps_min=0.2, eps_max=0.7)
    assert float(t.min()) >= 0.2 and float(t.max()) < 0.7
    # stratified: the mean is within one stratum width of the interval's midpoint
    assert abs(float(t.mean()) - 0.45) < 0.5 / 256


def test_plain_t_is_not_stratified_but_reproducible():
    a = sample_t(2, 4, generator=torch.Generator().manual_seed(2), antithetic=False)
    b = sample_t(2, 4, generator=torch.Generator().manual_seed(2), antithetic=False)
    assert torch.equal(a, b)
    assert float(a.min()) >= 1e-3 and float(a.max()) <= 1.0


def test_t_is_one_at_the_nll_interval():
    t = sample_t(3, 5, generator=torch.Generator().manual_seed(3), eps_min=1.0, eps_max=1.0)
    assert torch.equal(t, torch.ones(3, 5))


def test_masks_follow_t_and_protect_bos():
    g = torch.Generator().manual_seed(4)
    levels = torch.tensor([0.1, 0.5, 0.9]).repeat_interleave(2000)[None].repeat(4, 1)
    t_tok = torch.cat((torch.ones(4, 1), levels), dim=1)  # position 0 would always mask
    masked = sample_masks(t_tok, g)
    assert not masked[:, 0].any()
    rates = masked[:, 1:].float().view(4, 3, -1).mean(dim=(0, 2))
    assert torch.allclose(rates, torch.tensor([0.1, 0.5, 0.9]), atol=0.02)
    assert sample_masks(torch.ones(2, 5), g, protect_first=False).all()


def test_resample_masks_into_interval():
    g = torch.Generator().manual_seed(5)
    t_tok = torch.full((16, 16), 0.6)
    masked = sample_masks(t_tok, g)
    fixed = resample_masks(masked, t_tok, 4, 0.5, 0.75, g)
    counts = fixed.view(16, 4, 4).sum(-1).float()
    counts[:, 0] = counts[:, 0] / 3 * 4  # block 0: 3 eligible tokens
    frac = counts / 4
    assert ((frac >= 0.5) & (frac <= 0.75)).all()
    assert not fixed[:, 0].any()
    # blocks already inside the interval are untouched
    before = masked.view(16, 4, 4).float().mean(-1)
    ok = (before >= 0.5) & (before <= 0.75)
    ok[:, 0] = False
    keep = ok.repeat_interleave(4, dim=1)
    assert torch.equal(fixed[keep], masked[keep])


def test_resample_default_bounds_change_nothing():
    g = torch.Generator().manual_seed(6)
    masked = sample_masks(torch.full((4, 8), 0.3), g)
    assert torch.equal(resample_masks(masked, torch.full((4, 8), 0.3), 4, 1e-3, 1.0, g), masked)

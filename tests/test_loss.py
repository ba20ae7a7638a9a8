"""Tests for loss.py: SUBS and NELBO parity, the vectorised pass against a per-block loop,
B = 1 as the exact causal likelihood, mask resampling and the clip search."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from sbdcli.config import ModelConfig
from sbdcli.diffusion.loss import (
    block_nelbo,
    clip_intervals,
    clip_search,
    subs_log_probs,
    token_nelbo,
)
from sbdcli.errors import UserError
from sbdcli.model import Denoiser

V, MASK, L = 32, 31, 16


def random_model(seed: int = 0) -> Denoiser:
    """A tiny Denoiser with every weight random (the zero-init would make logits constant)."""
    config = ModelConfig(vocab_size=V, mask_id=MASK, seq_len=L, n_layers=2, d_model=32,
                         n_heads=2, cond_dim=16, dropout=0.0)  # fmt: skip
    model = Denoiser(config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


def clean_rows(n: int, seed: int) -> torch.Tensor:
    x0 = torch.randint(0, MASK - 1, (n, L), generator=torch.Generator().manual_seed(seed))
    x0[:, 0] = MASK - 1  # BOS
    return x0


def log_p_without_mask(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """log softmax over the real vocabulary (ids < MASK, the last id), at target: (B, N)."""
    return logits[..., :MASK].log_softmax(-1).gather(-1, target[..., None])[..., 0]


# --------------------------------------------------------------------------- fixture parity
def fixture_parts(fixture_dir):
    from sbdcli.model.checkpoint import load_model

    inputs = load_file(str(fixture_dir / "inputs.safetensors"))
    outputs = load_file(str(fixture_dir / "outputs.safetensors"))
    return load_model(fixture_dir), inputs, outputs


@torch.no_grad()
def test_subs_logprobs_parity(fixture_dir):
    model, inputs, outputs = fixture_parts(fixture_dir)
    mask_id = model.config.mask_id
    logits = model.train_logits(inputs["xt"], inputs["x0"], 4)
    log_p = subs_log_probs(logits, inputs["xt"], mask_id)
    at_x0 = log_p.gather(-1, inputs["x0"][..., None])[..., 0]
    assert float((at_x0 - outputs["train_subs_logprobs_at_x0"]).abs().max()) < 1e-4
    assert torch.isneginf(log_p[..., mask_id]).all()  # [MASK] is never predicted
    assert torch.allclose(log_p.exp().sum(-1), torch.ones(at_x0.shape), atol=1e-5)


@torch.no_grad()
def test_token_nelbo_parity(fixture_dir):
    model, inputs, outputs = fixture_parts(fixture_dir)
    out = block_nelbo(model, inputs["x0"], 4, t=inputs["t"], x_t=inputs["xt"])
    assert float((out.token_nelbo - outputs["train_token_nelbo"]).abs().max()) < 1e-4
    assert torch.equal(out.masked, inputs["xt"] == model.config.mask_id)
    assert torch.allclose(out.t, inputs["t"][:, ::4])
    assert torch.isclose(out.loss, outputs["train_token_nelbo"][:, 1:].mean(), atol=1e-5)
    logits = model.train_logits(inputs["xt"], inputs["x0"], 4)
    direct = token_nelbo(logits, inputs["x0"], inputs["xt"], inputs["t"], model.config.mask_id)
    assert torch.allclose(direct, out.token_nelbo)


# --------------------------------------------------------------------------- brute force
def per_block_loop_nelbo(model, x0, x_t, t_tok, block):
    """Score each block separately: clean prefix (block-causal) + the noisy block."""
    out = torch.zeros(x0.shape)
    for start in range(0, L, block):
        tokens = torch.cat((x0[:, :start], x_t[:, start : start + block]), dim=1)
        n = tokens.shape[1]
        mask = torch.zeros(n, n, dtype=torch.bool)
        for q in range(n):
            for k in range(n):
                if q < start:  # clean query: clean keys of the same or earlier blocks
                    mask[q, k] = k < start and k // block <= q // block
                else:  # noisy query: the whole clean prefix and its own block
                    mask[q, k] = True
        logits = model(tokens, torch.arange(n), mask)[:, start:]
        log_p = log_p_without_mask(logits, x0[:, start : start + block])
        noisy = x_t[:, start : start + block] == MASK
        out[:, start : start + block] = torch.where(noisy, -log_p / t_tok[:, start:][:, :block], 0)
    return out


@pytest.mark.parametrize("block", [1, 2, 4, L])
@torch.no_grad()
def test_vectorised_nelbo_equals_per_block_loop(block):
    model = random_model(1)
    x0 = clean_rows(3, seed=2)
    g = torch.Generator().manual_seed(3)
    out = block_nelbo(model, x0, block, generator=g)
    assert out.t.shape == (3, L // block)
    assert not out.masked[:, 0].any() and out.masked.any()
    x_t = torch.where(out.masked, MASK, x0)
    t_tok = out.t.repeat_interleave(block, dim=1)
    ref = per_block_loop_nelbo(model, x0, x_t, t_tok, block)
    assert float((out.token_nelbo - ref).abs().max()) < 1e-4
    assert torch.isclose(out.loss, ref[:, 1:].mean(), atol=1e-5)


@torch.no_grad()
def test_block_one_fully_masked_is_exact_causal_nll():
    model = random_model(4)
    x0 = clean_rows(2, seed=5)
    out = block_nelbo(model, x0, 1, eps_min=1.0, eps_max=1.0)
    assert out.masked[:, 1:].all() and torch.all(out.t == 1.0)
    nll = torch.zeros(2, L)
    for i in range(1, L):  # p(x_i | x_<i): causal attention over [x_0 .. x_{i-1}, MASK]
        tokens = torch.cat((x0[:, :i], torch.full((2, 1), MASK)), dim=1)
        causal = torch.ones(i + 1, i + 1, dtype=torch.bool).tril()
        logits = model(tokens, torch.arange(i + 1), causal)[:, -1:]
        nll[:, i] = -log_p_without_mask(logits, x0[:, i : i + 1])[:, 0]
    assert float((out.token_nelbo - nll).abs().max()) < 1e-4
    assert math.isclose(float(out.loss), float(nll[:, 1:].mean()), rel_tol=1e-5)


def test_loss_gradient_is_finite_and_mask_logit_untouched():
    model = random_model(6)
    model.train()
    out = block_nelbo(model, clean_rows(2, 7), 4, generator=torch.Generator().manual_seed(8))
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert float(model.output_layer.linear.bias.grad[MASK]) == 0.0


def test_same_generator_seed_reproduces():
    model = random_model(9)
    x0 = clean_rows(2, 10)
    a = block_nelbo(model, x0, 4, generator=torch.Generator().manual_seed(11))
    b = block_nelbo(model, x0, 4, generator=torch.Generator().manual_seed(11))
    assert torch.equal(a.token_nelbo, b.token_nelbo) and torch.equal(a.masked, b.masked)


def test_block_size_must_divide_length_and_fixed_x_t_needs_t():
    with pytest.raises(UserError):
        block_nelbo(random_model(), clean_rows(1, 0), 3)
    with pytest.raises(ValueError):
        block_nelbo(random_model(), clean_rows(1, 0), 4, x_t=clean_rows(1, 0))


def test_resample_keeps_block_fractions_inside_interval():
    model = random_model(12)
    x0 = clean_rows(8, 13)
    g = torch.Generator().manual_seed(14)
    out = block_nelbo(model, x0, 4, generator=g, eps_min=0.5, eps_max=0.75, resample=True)
    frac = out.masked.view(8, -1, 4).float().mean(-1)
    frac[:, 0] = out.masked[:, 1:4].float().sum(-1) / 3  # block 0 has 3 eligible tokens
    assert ((frac >= 0.5) & (frac <= 0.75)).all()


# --------------------------------------------------------------------------- clip search
def test_clip_intervals_follow_bd3lm_grid():
    cands = clip_intervals(4)
    assert cands[0] == (1e-3, 1.0)
    assert (1e-3, 0.5) in cands and (0.5, 1.0) in cands and (0.1, 1.0) in cands
    assert all(0 < lo < hi <= 1.0 for lo, hi in cands)
    assert len(cands) == len(set(cands)) == 1 + sum(range(3, 12))  # widths .5 .. .9
    assert clip_intervals(1) == [(1e-3, 1.0), (1.0, 1.0)]


def test_clip_search_picks_minimum_variance():
    model = random_model(15)
    batches = [clean_rows(4, 16), clean_rows(4, 17)]
    calls = []
    found = clip_search(
        model,
        batches,
        4,
        widths=[0.5, 0.9],
        generator=torch.Generator().manual_seed(18),
        progress=calls.append,
    )
    assert calls == [1, 1]
    assert set(found.variances) == set(clip_intervals(4, [0.5, 0.9]))
    best = min(found.variances.values())
    assert found.variances[(found.eps_min, found.eps_max)] == best
    assert found.variances[(1e-3, 1.0)] >= best
    assert not model.training


def test_nll_interval_wins_for_block_one():
    """t = 1 gives a zero-variance-in-t estimate (the exact NLL) vs. weights 1/t."""
    found = clip_search(random_model(19), [clean_rows(4, 20)], 1,
                        generator=torch.Generator().manual_seed(21))  # fmt: skip
    assert (found.eps_min, found.eps_max) == (1.0, 1.0)


def test_subs_copies_unmasked_tokens():
    logits = torch.randn(1, 3, V)
    x_t = torch.tensor([[5, MASK, 7]])
    log_p = subs_log_probs(logits, x_t, MASK)
    assert log_p[0, 0, 5] == 0 and torch.isneginf(log_p[0, 0, :5]).all()
    expected = F.log_softmax(logits[0, 1, :MASK], -1)
    assert torch.allclose(log_p[0, 1, :MASK], expected)


def test_time_conditioned_nelbo_feeds_each_rows_first_block_level():
    """BD3-LM's training pass conditions on sigma = min(-log(1 - t), -log eps) of the first
    block of each row (bd3lms commit 1c3e8f43d88dfbcee5ff2aa6932a9e74b31ae1d7,
    `_forward_pass_diffusion`: `_sigma_from_p(p[:, 0])`); without time conditioning none."""
    from sbdcli.diffusion.schedule import LogLinearSchedule

    seen = []

    class Recorder(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def train_logits(self, x_t, x0, block, sigma=None):
            seen.append(sigma)
            return self.inner.train_logits(x_t, x0, block, sigma=sigma)

    import dataclasses

    base = random_model(5)
    timed = Denoiser(dataclasses.replace(base.config, time_conditioning=True))
    timed.load_state_dict(base.state_dict())
    x0 = clean_rows(3, 1)
    t = torch.tensor([[1.0, 0.2, 0.5, 0.7], [0.3, 0.9, 0.9, 0.1], [0.05, 0.5, 0.5, 0.5]])
    with torch.no_grad():
        out = block_nelbo(Recorder(timed.eval()), x0, 4, t=t, generator=torch.Generator())
        plain = block_nelbo(Recorder(base), x0, 4, t=t, x_t=torch.where(out.masked, MASK, x0))
    torch.testing.assert_close(seen[0], LogLinearSchedule().sigma(t[:, 0]))
    assert float(seen[0][0]) == pytest.approx(-math.log(1e-3), abs=1e-4)  # t = 1 is capped
    assert seen[1] is None
    assert not torch.allclose(out.token_nelbo, plain.token_nelbo)  # the level changes the loss

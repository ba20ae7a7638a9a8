"""Parity with the reference on a time-conditioned BD3-LM (tests/fixtures/bd3lm-tiny-tc).

The fixture's outputs were recorded from kuleshov-group/bd3lms at commit
1c3e8f43d88dfbcee5ff2aa6932a9e74b31ae1d7 (its README.md says how): sbd's noise level, logits,
SUBS log-probabilities, per-token NELBO and KV-cache logits must match them within 1e-4.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sbdcli.diffusion.loss import block_nelbo, subs_log_probs
from sbdcli.diffusion.schedule import LogLinearSchedule
from sbdcli.model.checkpoint import load_model

FIXTURE = Path(__file__).parent / "fixtures" / "bd3lm-tiny-tc"
TOL = 1e-4


@pytest.fixture(scope="module")
def parts():
    inputs = load_file(str(FIXTURE / "inputs.safetensors"))
    outputs = load_file(str(FIXTURE / "outputs.safetensors"))
    return load_model(FIXTURE), inputs, outputs


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def test_fixture_loads_as_time_conditioned(parts):
    model, _, _ = parts
    cfg = model.config
    assert cfg.time_conditioning is True
    assert (cfg.vocab_size, cfg.mask_id, cfg.seq_len, cfg.d_model, cfg.n_heads) == (
        256, 255, 32, 32, 2
    )  # fmt: skip


def test_noise_levels_are_the_reference_ones(parts):
    _, inputs, _ = parts
    sched = LogLinearSchedule()
    assert max_diff(sched.sigma(inputs["t"][:, 0]), inputs["timesteps_sigma"]) < 1e-6
    assert max_diff(sched.sigma(inputs["sample_t"]), inputs["sample_sigma"]) < 1e-6
    assert max_diff(sched.sigma(inputs["kv_query_t"]), inputs["kv_query_sigma"]) < 1e-6
    assert max_diff(sched.sigma(inputs["kv_store_t"]), inputs["kv_store_sigma"]) < 1e-6


@torch.no_grad()
def test_train_logits_and_subs_match_the_reference(parts):
    model, inputs, outputs = parts
    sigma = LogLinearSchedule().sigma(inputs["t"][:, 0])
    logits = model.train_logits(inputs["xt"], inputs["x0"], 4, sigma=sigma)
    assert max_diff(logits, outputs["train_logits"]) < TOL
    log_p = subs_log_probs(logits, inputs["xt"], model.config.mask_id)
    at_x0 = log_p.gather(-1, inputs["x0"][..., None])[..., 0]
    assert max_diff(at_x0, outputs["train_subs_logprobs_at_x0"]) < TOL
    # the noise level matters: sbd's former mapping -log(1 - (1 - eps) t) is off by > 1e-3
    old = -torch.log1p(-(1 - 1e-3) * inputs["t"][:, 0])
    stale = model.train_logits(inputs["xt"], inputs["x0"], 4, sigma=old)
    assert max_diff(stale, outputs["train_logits"]) > 1e-3


@torch.no_grad()
def test_block_nelbo_matches_the_reference_loss(parts):
    model, inputs, outputs = parts
    out = block_nelbo(model, inputs["x0"], 4, t=inputs["t"], x_t=inputs["xt"])
    ref = outputs["train_token_nelbo"]
    assert max_diff(out.token_nelbo, ref) < TOL
    assert abs(float(out.loss) - float(ref[:, 1:].mean())) < TOL


@torch.no_grad()
def test_sample_logits_with_a_per_sample_level(parts):
    model, inputs, outputs = parts
    got = model.sample_logits(inputs["sample_input_ids"], 4, sigma=inputs["sample_sigma"])
    assert max_diff(got, outputs["sample_logits"]) < TOL


@torch.no_grad()
def test_kv_cache_logits_with_per_token_levels(parts):
    """sbd writes block b - 1 into the cache inside block b's call: its tokens carry the
    level the reference's cache-writing call used, the noisy block its own level."""
    model, inputs, outputs = parts
    x, query, store = inputs["sample_input_ids"], inputs["kv_query_sigma"], inputs["kv_store_sigma"]
    cache = model.new_cache(2, 32)
    got = [model(x[:, :4], None, None, cache, 0, sigma=query[0])]
    for b in (1, 2):
        blk = torch.arange(8) // 4
        mask = torch.cat(
            (torch.ones(8, cache.length, dtype=torch.bool), blk[None] <= blk[:, None]), 1
        )
        sigma = torch.cat((store[b - 1][:, None].expand(2, 4), query[b][:, None].expand(2, 4)), 1)
        got.append(model(x[:, 4 * b - 4 : 4 * b + 4], None, mask, cache, 4, sigma=sigma)[:, 4:])
    assert max_diff(torch.cat(got, 1), outputs["kvcache_logits"]) < TOL

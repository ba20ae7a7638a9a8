"""Tests for model/denoiser.py: BD3-LM parity, KV-cache exactness, dropout, learning."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from sbdcli.config import ModelConfig
from sbdcli.diffusion.loss import block_nelbo
from sbdcli.model import Denoiser

TOL = 1e-4


def random_model(seed: int = 0, **overrides) -> Denoiser:
    """A tiny Denoiser with every weight random (the zero-init would make logits constant)."""
    values = dict(vocab_size=32, mask_id=31, seq_len=16, n_layers=2, d_model=32, n_heads=2)
    values.update(cond_dim=16, dropout=0.0)
    values.update(overrides)
    model = Denoiser(ModelConfig(**values))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith("norm1.weight"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


def fixture_model(fixture_dir) -> Denoiser:
    cfg = json.loads((fixture_dir / "config.json").read_text())
    config = ModelConfig(
        vocab_size=cfg["vocab_size"],
        mask_id=cfg["vocab_size"] - 1,
        seq_len=cfg["model_length"],
        n_layers=cfg["n_blocks"],
        d_model=cfg["hidden_dim"],
        n_heads=cfg["n_heads"],
        cond_dim=cfg["cond_dim"],
        dropout=cfg["dropout"],
    )
    model = Denoiser(config)
    state = load_file(str(fixture_dir / "model.safetensors"))
    backbone = {k.removeprefix("backbone."): v for k, v in state.items() if "backbone." in k}
    model.load_state_dict(backbone, strict=True)
    return model.eval()


@pytest.fixture
def fixture(fixture_dir):
    inputs = load_file(str(fixture_dir / "inputs.safetensors"))
    outputs = load_file(str(fixture_dir / "outputs.safetensors"))
    return fixture_model(fixture_dir), inputs, outputs


@pytest.fixture
def one_thread():
    """Tiny models run fastest single-threaded (2 threads on a busy 2-core box thrash)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


# --------------------------------------------------------------------------- parity
def test_parameter_names_are_bd3lm_minus_backbone(fixture_dir):
    state = load_file(str(fixture_dir / "model.safetensors"))
    ref = {k.removeprefix("backbone.") for k in state if k.startswith("backbone.")}
    assert set(fixture_model(fixture_dir).state_dict()) == ref


@torch.no_grad()
def test_train_logits_parity(fixture):
    model, inputs, outputs = fixture
    ids = inputs["train_input_ids"]
    assert torch.equal(ids, torch.cat((inputs["xt"], inputs["x0"]), dim=1))
    logits = model.train_logits(inputs["xt"], inputs["x0"], 4, sigma=inputs["timesteps_sigma"])
    assert logits.shape == outputs["train_logits"].shape
    assert max_diff(logits, outputs["train_logits"]) < TOL
    # the fixture's FlexAttention output is the same function; our SDPA path must match it
    assert max_diff(logits, outputs["flex_train_logits"]) < TOL


@torch.no_grad()
def test_sample_logits_parity(fixture):
    model, inputs, outputs = fixture
    logits = model.sample_logits(inputs["sample_input_ids"], 4)
    assert max_diff(logits, outputs["sample_logits"]) < TOL


@torch.no_grad()
def test_kvcache_parity_one_block_at_a_time(fixture):
    model, inputs, outputs = fixture
    ids = inputs["sample_input_ids"]
    cache = model.new_cache(ids.shape[0], 32)
    parts = [model(ids[:, b : b + 4], kv_cache=cache, cache_commit=4) for b in (0, 4, 8)]
    assert cache.length == 12
    assert max_diff(torch.cat(parts, dim=1), outputs["kvcache_logits"]) < TOL


def commit_pattern_mask(cached: int, block: int) -> torch.Tensor:
    """Rows: clean block b then noisy block b+1; columns: cache, clean b, noisy b+1."""
    mask = torch.ones(2 * block, cached + 2 * block, dtype=torch.bool)
    mask[:block, cached + block :] = False  # clean rows never see the noisy block
    return mask


def run_commit_pattern(model: Denoiser, ids: torch.Tensor, block: int) -> torch.Tensor:
    """Logits of every block via calls concat(clean block b, noisy block b+1), commit B."""
    cache = model.new_cache(ids.shape[0], ids.shape[1])
    outs = [model(ids[:, :block], kv_cache=cache, cache_commit=0)]
    for start in range(block, ids.shape[1], block):
        pair = ids[:, start - block : start + block]
        mask = commit_pattern_mask(cache.length, block)
        out = model(pair, attn_mask=mask, kv_cache=cache, cache_commit=block)
        outs.append(out[:, block:])
    assert cache.length == ids.shape[1] - block
    return torch.cat(outs, dim=1)


@torch.no_grad()
def test_kvcache_parity_commit_while_starting_next_block(fixture):
    model, inputs, outputs = fixture
    logits = run_commit_pattern(model, inputs["sample_input_ids"], 4)
    assert max_diff(logits, outputs["kvcache_logits"]) < TOL


@torch.no_grad()
def test_time_conditioning_off_ignores_sigma(fixture):
    model, inputs, _ = fixture
    a = model.sample_logits(inputs["sample_input_ids"], 4)
    b = model.sample_logits(inputs["sample_input_ids"], 4, sigma=torch.tensor([3.0, 0.5]))
    assert torch.equal(a, b)


# --------------------------------------------------------------------------- cache exactness
@pytest.mark.parametrize("block", [1, 2, 4, 8])
@torch.no_grad()
def test_kv_cache_equals_no_cache(block, one_thread):
    model = random_model(1)
    ids = torch.randint(0, 32, (2, 16), generator=torch.Generator().manual_seed(2))
    ref = model.sample_logits(ids, block)
    cache = model.new_cache(2)
    parts = [
        model(ids[:, s : s + block], kv_cache=cache, cache_commit=block)
        for s in range(0, 16, block)
    ]
    assert max_diff(torch.cat(parts, dim=1), ref) < 1e-4
    assert max_diff(run_commit_pattern(model, ids, block), ref) < 1e-4


@torch.no_grad()
def test_kv_cache_truncate_and_sliding_window():
    model = random_model(3)
    ids = torch.randint(0, 32, (1, 16), generator=torch.Generator().manual_seed(4))
    cache = model.new_cache(1)
    first = [model(ids[:, s : s + 4], kv_cache=cache, cache_commit=4) for s in (0, 4, 8)]
    cache.truncate(4)  # forget blocks 1 and 2, recompute block 1
    again = model(ids[:, 4:8], kv_cache=cache, cache_commit=4)
    assert max_diff(again, first[1]) < 1e-5 and cache.length == 8
    # slide the window past block 0: rebuild the cache from block 1 at absolute positions
    cache.truncate(0)
    model(ids[:, 4:12], torch.arange(4, 12), block_mask_for(8, 4), cache, cache_commit=8)
    slid = model(ids[:, 12:16], torch.arange(12, 16), kv_cache=cache)
    window = model.sample_logits(ids[:, 4:16], 4)[:, 8:]  # same tokens, positions 0..11
    assert max_diff(slid, window) < 1e-4  # rotary is relative: a shift changes nothing


def block_mask_for(length: int, block: int) -> torch.Tensor:
    blk = torch.arange(length) // block
    return blk[:, None] >= blk[None, :]


@torch.no_grad()
def test_global_block_is_bidirectional_on_x_t():
    model = random_model(5)
    g = torch.Generator().manual_seed(6)
    x0 = torch.randint(0, 31, (2, 16), generator=g)
    x_t = torch.where(torch.rand(2, 16, generator=g) < 0.5, 31, x0)
    ref = model(x_t, torch.arange(16), None)
    assert torch.equal(model.train_logits(x_t, x0, 16), ref)
    assert torch.equal(model.train_logits(x_t, x0, 64), ref)  # B >= L: one global block
    # B < L: the clean half matters; only the x_t half is returned
    assert model.train_logits(x_t, x0, 4).shape == (2, 16, 32)


@torch.no_grad()
def test_per_row_positions_and_forward_mask_defaults():
    model = random_model(7)
    ids = torch.randint(0, 32, (2, 8), generator=torch.Generator().manual_seed(8))
    shared = model(ids, torch.arange(8))
    per_row = model(ids, torch.arange(8).expand(2, 8))
    assert max_diff(shared, per_row) < 1e-6
    assert max_diff(model(ids), shared) < 1e-6  # default positions 0..N-1


def test_flex_backend_selection_on_cpu():
    model = random_model(9)
    x = torch.randint(0, 31, (1, 16))
    model.attn_backend = "flex"
    with pytest.raises(RuntimeError):
        model.train_logits(x, x, 4)
    model.attn_backend = "auto"
    assert model.train_logits(x, x, 4).shape == (1, 16, 32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention runs on CUDA only")
@torch.no_grad()
def test_flex_train_logits_match_sdpa_on_cuda():
    model = random_model(10).cuda()
    x = torch.randint(0, 31, (2, 16), device="cuda")
    model.attn_backend = "flex"
    flex = model.train_logits(x, x.flip(1), 4)
    model.attn_backend = "sdpa"
    assert max_diff(flex, model.train_logits(x, x.flip(1), 4)) < 1e-4


# --------------------------------------------------------------------------- training behaviour
def test_dropout_only_in_train_mode():
    model = random_model(11, dropout=0.3)
    ids = torch.randint(0, 32, (2, 8))
    with torch.no_grad():
        assert torch.equal(model(ids), model(ids))
        model.train()
        assert not torch.equal(model(ids), model(ids))


def test_time_conditioning_on_uses_sigma():
    model = random_model(12, time_conditioning=True)
    ids = torch.randint(0, 32, (2, 8))
    with torch.no_grad():
        a = model(ids, sigma=torch.tensor([0.1, 0.1]))
        b = model(ids, sigma=torch.tensor([2.0, 2.0]))
    assert max_diff(a, b) > 1e-3


def test_per_token_sigma_conditions_each_position():
    model = random_model(13, time_conditioning=True)
    ids = torch.randint(0, 32, (2, 8), generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.3, 1.7])
    with torch.no_grad():
        per_sample = model(ids, sigma=sigma)
        per_token = model(ids, sigma=sigma[:, None].expand(2, 8))
        torch.testing.assert_close(per_token, per_sample, rtol=0, atol=1e-5)
        mixed = sigma[:, None].expand(2, 8).clone()
        mixed[:, 6:] = 5.0  # the last two positions at another level
        out = model(ids, sigma=mixed)
        # bidirectional attention: every position changes, the last two the most
        assert max_diff(out[:, 6:], per_sample[:, 6:]) > 1e-3
        cache = model.new_cache(2, 8)  # per-token levels through a cache commit and a read-out
        mask = torch.ones(8, 8, dtype=torch.bool)
        first = model(ids, None, mask, cache, 4, sigma=mixed, n_out=4)
        torch.testing.assert_close(first, out[:, :4], rtol=0, atol=1e-5)
        assert cache.length == 4


def test_fresh_model_starts_uniform_and_overfits_tiny_batch(one_thread):
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=32, mask_id=31, seq_len=16, n_layers=2, d_model=64,
                         n_heads=4, cond_dim=32, dropout=0.0)  # fmt: skip
    model = Denoiser(config)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 30, (4, 16), generator=g)
    x0[:, 0] = 30  # BOS
    with torch.no_grad():
        assert float(model(x0).abs().max()) == 0.0  # adaLN-Zero output layer: uniform logits
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(120):
        out = block_nelbo(model, x0, 4, generator=g)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    start, end = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert start > 2.5  # ~ log(31) nats per masked token at first
    assert end < 0.35 * start, (start, end)


# --------------------------------------------------------------------------- read-out, constants
@pytest.mark.parametrize("timed", [False, True])
def test_readout_equals_the_full_logits_at_those_positions(timed):
    """`readout` (B, k): the last layer and the head run at k positions per row, with a
    mask, a cache commit and per-token levels; the values equal the full call's."""
    model = random_model(5, time_conditioning=timed)
    ids = torch.randint(0, 31, (3, 8), generator=torch.Generator().manual_seed(1))
    pick = torch.tensor([[5, 7], [4, 4], [6, 0]])  # any order, repeats allowed
    mask = torch.ones(8, 8, dtype=torch.bool).tril()  # causal: each row its own keys
    sigma = torch.linspace(0.2, 2.0, 24).view(3, 8)
    with torch.no_grad():
        full = model(ids, None, mask, model.new_cache(3, 8), 4, sigma=sigma)
        cache = model.new_cache(3, 8)
        part = model(ids, None, mask, cache, 4, sigma=sigma, readout=pick)
    want = full.gather(1, pick[..., None].expand(-1, -1, full.shape[-1]))
    assert part.shape == (3, 2, 32)
    torch.testing.assert_close(part, want, rtol=0, atol=1e-5)
    assert cache.length == 4  # the commit still stores every layer's keys of 4 inputs
    with pytest.raises(ValueError, match="exclude each other"):
        model(ids, readout=pick, n_out=2)


def test_readout_computes_the_head_only_at_those_positions():
    model = random_model(6)
    rows = []
    hook = model.output_layer.linear.register_forward_hook(lambda m, i, o: rows.append(i[0].shape))
    ids = torch.randint(0, 31, (2, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        model(ids, readout=torch.tensor([[1], [3]]))
        model(ids)
    hook.remove()
    assert rows == [torch.Size([2, 1, 32]), torch.Size([2, 8, 32])]


def test_constant_modulations_are_reused_and_follow_weight_updates():
    model = random_model(7)
    ids = torch.randint(0, 31, (2, 8), generator=torch.Generator().manual_seed(3))
    calls = []
    hook = model.blocks[0].adaLN_modulation.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        first = model(ids)
        again = model(ids)
        assert len(calls) == 1  # made once, reused by the second call
        torch.testing.assert_close(again, first, rtol=0, atol=0)
        model.blocks[0].adaLN_modulation.bias.add_(0.5)  # an in-place update (optimizer step)
        moved = model(ids)
        assert len(calls) == 2 and max_diff(moved, first) > 1e-3
    with torch.enable_grad():
        model(ids)  # with gradients: computed per call (they must flow into the weights)
        model(ids)
    assert len(calls) == 4
    hook.remove()
    fresh = random_model(7)
    fresh.blocks[0].adaLN_modulation.bias.data.add_(0.5)
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids), moved, rtol=0, atol=1e-6)


def test_time_conditioned_models_compute_modulations_per_call():
    model = random_model(8, time_conditioning=True)
    ids = torch.randint(0, 31, (2, 8), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        a = model(ids, sigma=torch.tensor([0.1, 0.1]))
        b = model(ids, sigma=torch.tensor([3.0, 3.0]))
    assert max_diff(a, b) > 1e-3

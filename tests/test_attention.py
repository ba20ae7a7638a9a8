"""Tests for attention.py: training/sampling masks, the attention kernel, the KV cache."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from sbdcli.model.attention import (
    HalvesMask,
    KVCache,
    ScatterView,
    StackView,
    _block_diff_rule,
    attend,
    block_causal_mask,
    block_diff_mask,
    flex_available,
    flex_block_mask,
)


def loop_block_diff_mask(length: int, block: int) -> torch.Tensor:
    """Independent construction of the BD3-LM training mask, one entry at a time."""
    out = torch.zeros(2 * length, 2 * length, dtype=torch.bool)
    for q in range(2 * length):
        for k in range(2 * length):
            q_clean, k_clean = q >= length, k >= length
            bq, bk = (q % length) // block, (k % length) // block
            if not q_clean and not k_clean:
                out[q, k] = bq == bk  # noisy -> noisy: own block
            elif not q_clean and k_clean:
                out[q, k] = bk < bq  # noisy -> clean: earlier blocks
            elif q_clean and k_clean:
                out[q, k] = bk <= bq  # clean -> clean: block causal
    return out


def test_mask_equals_fixture(fixture_dir):
    ref = load_file(str(fixture_dir / "inputs.safetensors"))["block_diff_mask_2N"]
    assert torch.equal(block_diff_mask(32, 4), ref)


@pytest.mark.parametrize(("length", "block"), [(8, 1), (8, 2), (12, 3), (16, 4), (8, 8)])
def test_mask_equals_loop_construction(length, block):
    assert torch.equal(block_diff_mask(length, block), loop_block_diff_mask(length, block))


def test_mask_is_cached_and_checks_divisibility():
    assert block_diff_mask(16, 4) is block_diff_mask(16, 4)
    with pytest.raises(ValueError):
        block_diff_mask(10, 4)


@pytest.mark.parametrize(("length", "block"), [(8, 1), (12, 4), (16, 8)])
def test_clean_queries_never_see_noisy_keys(length, block):
    assert not bool(block_diff_mask(length, block)[length:, :length].any())


@pytest.mark.parametrize(("length", "block"), [(8, 2), (12, 4)])
def test_halves_mask_matches_the_dense_mask_values_and_gradients(length, block):
    gen = torch.Generator().manual_seed(0)
    shape = (2, 3, 2 * length, 8)
    q, k, v = (torch.randn(shape, generator=gen, requires_grad=True) for _ in range(3))
    halves = HalvesMask.of(length, block, "cpu")
    dense = attend(q, k, v, block_diff_mask(length, block))
    split = attend(q, k, v, halves)
    torch.testing.assert_close(split, dense, rtol=0, atol=1e-6)
    grads_dense = torch.autograd.grad(dense.square().sum(), (q, k, v))
    grads_split = torch.autograd.grad(split.square().sum(), (q, k, v))
    for a, b in zip(grads_split, grads_dense, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    noisy_only = attend(q[:, :, :length], k, v, halves)  # the last layer: x_t queries only
    torch.testing.assert_close(noisy_only, dense[:, :, :length], rtol=0, atol=1e-6)
    assert HalvesMask.of(length, block, "cpu") is halves


def test_block_causal_is_clean_quadrant():
    length, block = 12, 3
    assert torch.equal(
        block_causal_mask(length, block), block_diff_mask(length, block)[length:, length:]
    )
    causal = block_causal_mask(5, 1)
    assert torch.equal(causal, torch.ones(5, 5, dtype=torch.bool).tril())
    assert bool(block_causal_mask(6, 6).all())


def test_attend_matches_explicit_softmax():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=g) for _ in range(3))
    mask = block_causal_mask(5, 2)
    scores = q @ k.transpose(-1, -2) / 2.0  # sqrt(Dh) = 2
    ref = scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v
    assert torch.allclose(attend(q, k, v, mask), ref, atol=1e-6)
    assert torch.allclose(attend(q, k, v, None), scores.softmax(-1) @ v, atol=1e-6)
    with pytest.raises(TypeError):
        attend(q, k, v, torch.zeros(5, 5))


def test_kv_cache_append_truncate():
    cache = KVCache(n_layers=2, batch=1, n_heads=1, head_dim=2, max_len=6)
    for step in range(3):
        k = torch.full((1, 1, 2, 2), float(step))
        cache.append([k, k + 10], [-k, -k - 10])
    assert cache.length == 6 and len(cache) == 6
    assert cache.k[1, 0, 0, :, 0].tolist() == [10, 10, 11, 11, 12, 12]
    with pytest.raises(ValueError):
        cache.append([k, k], [k, k])  # full
    cache.truncate(4)
    assert cache.length == 4
    assert cache.k[0, 0, 0, :4, 0].tolist() == [0, 0, 1, 1]
    cache.append([k, k], [k, k])  # overwrites positions 4, 5
    assert cache.k[0, 0, 0, 4:6, 0].tolist() == [2, 2] and cache.length == 6
    cache.truncate(0)
    assert cache.length == 0
    with pytest.raises(ValueError):
        cache.truncate(3)


def test_kv_cache_keys_values_in_place_and_grad_paths():
    cache = KVCache(n_layers=1, batch=2, n_heads=1, head_dim=2, max_len=4)
    cache.append([torch.ones(2, 1, 1, 2)], [torch.ones(2, 1, 1, 2)])
    new = torch.full((2, 1, 2, 2), 3.0)
    with torch.no_grad():
        k_all, _ = cache.keys_values(0, new, new)
    assert k_all.shape == (2, 1, 3, 2) and cache.length == 1  # written, not yet valid
    k_grad, _ = cache.keys_values(0, new.requires_grad_(), new)
    assert k_grad.requires_grad and k_grad[:, :, 1:].eq(3).all()
    with pytest.raises(ValueError):
        cache.keys_values(0, torch.zeros(3, 1, 1, 2), torch.zeros(3, 1, 1, 2))


def test_kv_cache_put_and_advance():
    cache = KVCache(n_layers=2, batch=1, n_heads=1, head_dim=2, max_len=5)
    cache.put(1, torch.full((2, 1, 1, 3, 2), 7.0), torch.full((2, 1, 1, 3, 2), -7.0))
    assert cache.k[1, 0, 0, :, 0].tolist() == [0, 7, 7, 7, 0] and cache.length == 0
    cache.advance(4)
    assert len(cache) == 4
    with pytest.raises(ValueError):
        cache.advance(2)
    with pytest.raises(ValueError):
        cache.put(4, torch.zeros(2, 1, 1, 2, 2), torch.zeros(2, 1, 1, 2, 2))


def test_scatter_view_writes_its_slots_and_shows_the_visible_ones():
    """Inputs overwrite their own slots (padding -> the spare last slot, never visible);
    the other slots keep what they held."""
    cache = KVCache(n_layers=1, batch=2, n_heads=1, head_dim=1, max_len=5)
    cache.k[:] = torch.arange(5.0).view(5, 1)  # slot j holds j
    slots = torch.tensor([[1, 3], [2, 4]])  # sample 1's second input is padding
    new = torch.tensor([[10.0, 30.0], [20.0, 99.0]]).view(2, 1, 2, 1)
    view = cache.scattering(slots, 4)
    assert isinstance(view, ScatterView)
    k, v = view.keys_values(0, new, new)
    assert k.shape == v.shape == (2, 1, 4, 1)
    assert k[:, 0, :, 0].tolist() == [[0, 10, 2, 30], [0, 1, 20, 3]]
    assert cache.k[0, 0, 0, 4, 0] == 4.0 and cache.k[0, 1, 0, 4, 0] == 99.0  # the spare slot
    assert cache.length == 0
    with pytest.raises(ValueError):
        cache.scattering(slots, 5)  # no spare slot left


def test_stack_view_reads_the_whole_slab_and_writes_nothing():
    k = torch.arange(6.0).view(1, 1, 1, 6, 1)
    view = StackView(k, -k)
    new = torch.full((1, 1, 2, 1), 9.0)
    k_all, v_all = view.keys_values(0, new, -new)
    assert k_all[0, 0, :, 0].tolist() == [0, 1, 2, 3, 4, 5, 9, 9] and v_all[0, 0, -1, 0] == -9
    assert k.flatten().tolist() == [0, 1, 2, 3, 4, 5]
    assert len(view.new_k) == 1 and torch.equal(view.new_k[0], new)


def test_flex_unavailable_on_cpu():
    assert not flex_available("cpu")


def test_flex_block_mask_encodes_the_same_rule():
    length, block = 16, 4
    block_mask = flex_block_mask(length, block, "cpu")
    assert block_mask is flex_block_mask(length, block, "cpu")  # cached
    idx = torch.arange(2 * length)
    dense = block_mask.mask_mod(0, 0, idx[:, None], idx[None, :])
    assert torch.equal(dense, block_diff_mask(length, block))
    rows = flex_block_mask(length, block, "cpu", q_len=length)
    assert rows.shape[-2:] == (length, 2 * length)


@pytest.mark.slow
def test_flex_block_mask_builds_inside_torch_compile():
    """Regression: the mask rule must trace through inductor (no == between booleans)."""
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q, k):
        return _block_diff_rule(q, k, 16, 4)

    def build(x):
        return x + 1, create_block_mask(mask_mod, None, None, 32, 32, device="cpu")

    _, compiled = torch.compile(build)(torch.zeros(1))
    assert compiled.shape[-2:] == (32, 32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention runs on CUDA only")
def test_flex_matches_sdpa_on_cuda():
    g = torch.Generator(device="cuda").manual_seed(0)
    length, block = 64, 4
    q, k, v = (torch.randn(2, 2, 2 * length, 16, generator=g, device="cuda") for _ in range(3))
    dense = attend(q, k, v, block_diff_mask(length, block, "cuda"))
    flex = attend(q, k, v, flex_block_mask(length, block, "cuda"))
    assert torch.allclose(dense, flex, atol=1e-4)

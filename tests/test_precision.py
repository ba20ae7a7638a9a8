"""Tests for diffusion/precision.py: --precision resolution, the per-call context (bf16 autocast,
TF32 on CUDA) and the session that keeps bf16 weight casts across calls; and the sampler,
remask and judges at bf16 (tiny models, CPU; the CUDA checks skip without a GPU)."""

from __future__ import annotations

import pytest
import torch

from fake_model import tiny_denoiser
from sbdcli.config import legacy_sampler
from sbdcli.diffusion import precision
from sbdcli.diffusion import remask as rm
from sbdcli.diffusion import sampler as sp
from sbdcli.errors import UserError

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_auto_is_bf16_on_cuda_and_fp32_elsewhere():
    assert precision.resolve("auto", "cpu") == "fp32"
    assert precision.resolve("auto", "cuda") == "bf16"
    assert precision.resolve("auto", torch.device("cuda", 0)) == "bf16"
    assert precision.resolve("bf16", "cpu") == "bf16"
    assert precision.resolve("fp32", "cuda") == "fp32"
    want = "bf16" if torch.cuda.is_available() else "fp32"
    assert precision.resolve("auto", "auto") == want  # --device auto, not yet resolved


def test_unknown_precision_is_a_user_error():
    with pytest.raises(UserError, match="--precision must be one of auto, fp32, bf16"):
        precision.resolve("fp16", "cpu")
    with pytest.raises(UserError, match="`precision` must be one of"):
        sp.SamplerConfig(block_size=4, precision="half")


def test_bf16_call_runs_matmuls_in_bf16_and_leaves_float64_alone():
    a = torch.randn(4, 8)
    d = torch.randn(4, 4, dtype=torch.float64)
    with precision.network("bf16", "cpu"):
        assert torch.is_autocast_enabled("cpu")
        assert (a @ a.T).dtype == torch.bfloat16
        assert (d @ d).dtype == torch.float64  # the draw's float64 path is never cast
    assert not torch.is_autocast_enabled("cpu")
    with precision.network("fp32", "cpu"):
        assert not torch.is_autocast_enabled("cpu")
        assert (a @ a.T).dtype == torch.float32


def test_bf16_copy_computes_what_autocast_computes_from_fp32_weights():
    """The bf16-weight copy: the same logits as autocast over the float32 weights, bit for
    bit; its non-Linear parameters are the model's own tensors (nothing else copied)."""
    net = tiny_denoiser()
    x = torch.randint(0, 30, (2, 32))
    with torch.inference_mode():
        shadow = precision.for_calls(net, "bf16", "cpu")
        with precision.network("bf16", "cpu"):
            want, got = net(x, torch.arange(32), None), shadow(x, torch.arange(32), None)
    assert torch.equal(want, got) and got.dtype == torch.float32
    pairs = list(zip(net.parameters(), shadow.parameters(), strict=True))
    assert any(b.dtype == torch.bfloat16 for _, b in pairs)
    assert all(a is b for a, b in pairs if b.dtype == torch.float32)
    assert shadow.output_layer.linear.weight.dtype == torch.bfloat16
    assert shadow.vocab_embed.embedding.dtype == torch.float32  # a lookup, not a matmul


def test_bf16_copy_is_made_once_and_remade_when_the_weights_change():
    net = tiny_denoiser()
    assert precision.for_calls(net, "fp32", "cpu") is net
    assert precision.for_calls(net, "auto", "cpu") is net  # auto on CPU: fp32
    first = precision.for_calls(net, "bf16", "cpu")
    assert precision.for_calls(net, "bf16", "cpu") is first
    with torch.no_grad():
        net.output_layer.linear.weight.add_(1.0)  # an in-place update (a training step)
    second = precision.for_calls(net, "bf16", "cpu")
    assert second is not first
    want = net.output_layer.linear.weight.bfloat16()
    assert torch.equal(second.output_layer.linear.weight, want)


def test_a_weight_tied_to_an_embedding_stays_fp32():
    class Tied(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(10, 8)
            self.head = torch.nn.Linear(8, 10, bias=False)
            self.head.weight = self.emb.weight
            self.proj = torch.nn.Linear(8, 8)

    shadow = precision.bf16_copy(Tied())
    assert shadow.emb.weight.dtype == shadow.head.weight.dtype == torch.float32
    assert shadow.proj.weight.dtype == torch.bfloat16


# --------------------------------------------------------------------------- sampling at bf16
@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return tiny_denoiser()


def draft(model, n: int = 3, **kw) -> sp.FillResult:
    cfg = legacy_sampler(4, **kw)
    gens = [sp.make_generator(0, "draft", 0, f"r{i}") for i in range(n)]
    return sp.draft(model, [[model.config.bos_id]] * n, 32, cfg, gens)


@pytest.mark.parametrize("kw", [{}, {"threshold": 0.3}, {"unmask": "confident"}])
def test_bf16_draft_keeps_float64_confidences_close_to_fp32(model, kw):
    fp32 = draft(model, **kw, precision="fp32")
    bf16 = draft(model, **kw, precision="bf16")
    assert bf16.confidence.dtype == torch.float64
    assert not (bf16.tokens == model.config.mask_id).any()
    assert ((bf16.confidence > 0) & (bf16.confidence <= 1)).all()
    # bf16 logits: the draws may differ somewhere, but most tokens agree (same uniforms)
    agree = (bf16.tokens == fp32.tokens).double().mean()
    assert agree > 0.5, float(agree)
    same = bf16.tokens == fp32.tokens
    gap = (bf16.confidence[same] - fp32.confidence[same]).abs().max()
    assert 0 < gap < 0.05, float(gap)  # not bit-identical (bf16 did run), but close


def test_bf16_engine_calls_the_bf16_copy_and_caches_bf16_keys(model):
    """A bf16 fill runs the bf16-weight copy and keeps bf16 keys/values (what its calls
    make: no cast of the cache per call); an fp32 fill runs the model and float32 keys."""
    prompts = [[model.config.bos_id]]
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        cfg = sp.SamplerConfig(block_size=4, precision=name)
        engine = sp.draft_engine(model, prompts, 32, cfg, [sp.make_generator(0, "d", 0, "r")])
        assert engine.window.cache.k.dtype == dtype
        assert (engine.window.model is model) == (name == "fp32")
        out = engine.run()
        assert engine.window.cache.length > 0 and not (out.tokens == model.config.mask_id).any()


def test_bf16_remask_scores_close_to_fp32(model):
    gens = [sp.make_generator(0, "draft", 0, f"r{i}") for i in range(2)]
    cfg = sp.SamplerConfig(block_size=4)
    toks = sp.draft(model, [[model.config.bos_id]] * 2, 32, cfg, gens).tokens
    a = rm.posthoc_scores(model, toks, "fp32")
    b = rm.posthoc_scores(model, toks, "bf16")
    assert a.dtype == b.dtype == torch.float64
    assert 0 < float((a - b).abs().max()) < 0.05
    elig = torch.ones_like(toks, dtype=torch.bool)
    sa, _ = rm.masked_scores(model, toks, elig, 4, "fp32")
    sb, _ = rm.masked_scores(model, toks, elig, 4, "bf16")
    assert 0 < float((sa - sb).abs().max()) < 0.05


@cuda
def test_fp32_on_cuda_uses_tf32_inside_the_call_only():
    before = torch.get_float32_matmul_precision()
    with precision.network("fp32", "cuda"):
        assert torch.get_float32_matmul_precision() == "high"
    assert torch.get_float32_matmul_precision() == before


@cuda
@pytest.mark.parametrize("name", ["auto", "fp32"])
def test_cuda_draft_at_each_precision(name):
    net = tiny_denoiser().cuda()
    cfg = sp.SamplerConfig(block_size=4, precision=name)
    gens = [sp.make_generator(0, "draft", 0, f"r{i}", "cuda") for i in range(2)]
    out = sp.draft(net, [[net.config.bos_id]] * 2, 32, cfg, gens)
    assert not (out.tokens == net.config.mask_id).any()
    assert out.confidence.dtype == torch.float64

"""Tests for sampler.py: exact KV cache, float64 Gumbel draws, nucleus rule, snapshot confidence,
tokens per call, batch invariance, revise semantics, sliding windows, stop at EOS.

Most tests use `FakeDenoiser` (integer arithmetic: cached and uncached runs agree bit for bit
and every logit depends on the visible keys); the real `Denoiser` is checked for cache
exactness and against the BD3-LM fixture's `kvcache_logits`.
"""

from __future__ import annotations

import math

import pytest
import torch

from fake_model import CopyRightDenoiser, FakeDenoiser, one_thread, tiny_denoiser  # noqa: F401 (autouse fixture)
from sbdcli.diffusion import sampler as sp
from sbdcli.errors import UserError


@pytest.fixture(scope="module")
def tiny_denoiser_model() -> torch.nn.Module:
    return tiny_denoiser()


def gens(n: int, seed: int = 0, stage: str = "draft") -> list[torch.Generator]:
    return [sp.make_generator(seed, stage, 0, f"r{i}") for i in range(n)]


def run_draft(model, prompts, length, **kw) -> sp.FillResult:
    cfg = sp.SamplerConfig(**{"block_size": 4, **kw})
    return sp.draft(model, prompts, length, cfg, gens(len(prompts)))


def same(a: sp.FillResult, b: sp.FillResult) -> None:
    for name in ("tokens", "confidence", "confidence_nucleus", "step", "nfe", "stop"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


# --------------------------------------------------------------------------- KV cache
@pytest.mark.parametrize("steps", [None, 2])
@pytest.mark.parametrize("length", [32, 30, 61])  # exact, partial last block, sliding window
def test_kv_cache_is_bit_identical_to_recomputation(steps, length):
    model = FakeDenoiser(seq_len=32)
    bos = model.config.bos_id
    prompts = [[bos], [bos, 3, 4], [bos, 1, 2, 3, 4, 5, 6]]
    cached = run_draft(model, prompts, length, steps_per_block=steps)
    model.calls.clear()
    plain = run_draft(model, prompts, length, steps_per_block=steps, kv_cache=False)
    same(cached, plain)
    assert all(c["cache"] == 0 for c in model.calls)  # the reference path never caches
    assert not (cached.tokens == model.config.mask_id).any()


def test_cache_is_written_inside_denoising_calls():
    """No separate cache-write pass: every call denoises, and commits only clean inputs."""
    model = FakeDenoiser(seq_len=32)
    out = run_draft(model, [[model.config.bos_id]], 32)
    assert len(model.calls) == int(out.nfe[0]) == 31  # one token per call by default
    commits = [c for c in model.calls if c["commit"] > 0]
    assert len(commits) == 32 // 4 - 1  # each finished block is committed once...
    assert all(c["n"] == c["commit"] + 4 for c in commits)  # ...with the next noisy block


def test_real_denoiser_cache_matches_recomputation(tiny_denoiser_model):
    model = tiny_denoiser_model
    bos = model.config.bos_id
    for length in (32, 44):  # 44 > trained 32: sliding window
        cached = run_draft(model, [[bos], [bos, 5, 6]], length, steps_per_block=2)
        plain = run_draft(model, [[bos], [bos, 5, 6]], length, steps_per_block=2, kv_cache=False)
        assert torch.equal(cached.tokens, plain.tokens)
        assert torch.equal(cached.step, plain.step)
        torch.testing.assert_close(cached.confidence, plain.confidence, rtol=0, atol=1e-6)


def test_cache_scheme_reproduces_fixture_kvcache_logits(fixture_dir):
    """The window's concat(clean pending, noisy block) calls give the reference cached logits."""
    from safetensors.torch import load_file

    from sbdcli import load_model

    model = load_model(str(fixture_dir))
    x = load_file(str(fixture_dir / "inputs.safetensors"))["sample_input_ids"].long()
    ref = load_file(str(fixture_dir / "outputs.safetensors"))
    window = sp._Window(model, x.shape[0], x.shape[1], 4, use_cache=True)
    with torch.inference_mode():
        got = torch.cat([window.logits(x, lo, lo + 4) for lo in range(0, x.shape[1], 4)], 1)
    torch.testing.assert_close(got, ref["kvcache_logits"], rtol=0, atol=1e-4)
    torch.testing.assert_close(got, ref["sample_logits"], rtol=0, atol=1e-4)


# --------------------------------------------------------------------------- draws
def nucleus_reference(probs: list[float], p: float) -> set[int]:
    """Tokens kept by the BD3-LM rule, by a plain loop."""
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    kept, total = {order[0]}, 0.0
    for i in order:
        total += probs[i]
        if total <= p:
            kept.add(i)
    return kept


def test_nucleus_excludes_the_token_that_crosses_p():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]], dtype=torch.float64)
    keep = sp.nucleus_keep(probs, 0.9)
    assert keep.tolist() == [[False, True, False, True]]
    assert {i for i, k in enumerate(keep[0].tolist()) if k} == nucleus_reference(
        probs[0].tolist(), 0.9
    )
    assert sp.nucleus_keep(probs, 0.4).tolist() == [[False, True, False, False]]  # top kept
    assert sp.nucleus_keep(probs, 1.0).all()


def test_sample_categorical_nucleus_frequencies_and_confidences():
    probs = torch.tensor([0.05, 0.5, 0.15, 0.3, 0.0], dtype=torch.float64)
    logits = probs.clamp_min(1e-300).log().float().expand(4000, 5).clone()
    cfg = sp.SamplerConfig(block_size=4, top_p=0.9)
    tok, conf, conf_n = sp.sample_categorical(logits, torch.Generator().manual_seed(1), cfg, 4)
    assert set(tok.tolist()) == {1, 3}
    freq = (tok == 1).double().mean().item()
    assert abs(freq - 0.5 / 0.8) < 0.03
    torch.testing.assert_close(conf, probs[tok], rtol=1e-6, atol=0)  # raw, before nucleus
    torch.testing.assert_close(conf_n, probs[tok] / 0.8, rtol=1e-6, atol=0)
    assert conf.dtype == torch.float64


def test_draw_is_float64_gumbel_max_from_the_generator():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    cfg = sp.SamplerConfig(block_size=4, top_p=1.0, temperature=0.7)
    g = torch.Generator().manual_seed(5)
    tok, conf, _ = sp.sample_categorical(logits, g, cfg, mask_id=49)
    u = torch.rand(3, 50, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    z = logits.double()
    z[:, 49] = -math.inf
    expected = torch.argmax(torch.log_softmax(z / 0.7, -1) - torch.log(-torch.log(u)), -1)
    assert torch.equal(tok, expected)
    assert (tok != 49).all()
    torch.testing.assert_close(conf, torch.softmax(z, -1).gather(1, tok[:, None])[:, 0])
    cfg32 = sp.SamplerConfig(block_size=4, top_p=1.0, dtype="float32")
    _, c32, _ = sp.sample_categorical(logits, torch.Generator().manual_seed(5), cfg32, 49)
    assert c32.dtype == torch.float64  # recorded as float64 even in the float32 ablation


def test_mask_token_is_never_sampled():
    logits = torch.zeros(200, 6)
    logits[:, 5] = 50.0  # [MASK] would win without SUBS
    cfg = sp.SamplerConfig(block_size=4)
    tok, conf, _ = sp.sample_categorical(logits, torch.Generator().manual_seed(0), cfg, 5)
    assert (tok != 5).all()
    torch.testing.assert_close(conf, torch.full((200,), 0.2, dtype=torch.float64))


@pytest.mark.parametrize("eos_is_bos", [False, True])
def test_bos_is_never_sampled_unless_it_doubles_as_eos(eos_is_bos):
    from dataclasses import replace

    model = tiny_denoiser(seed=3)
    bos = model.config.vocab_size - 2
    model.config = replace(model.config, bos_id=bos, eos_id=bos if eos_is_bos else None)
    with torch.no_grad():
        model.output_layer.linear.bias[bos] = 30.0  # BOS would win every draw
    out = run_draft(model, [[bos]] * 3, 16)
    generated = out.tokens[:, 1:]
    assert (generated == bos).all() if eos_is_bos else not (generated == bos).any()


# --------------------------------------------------------------------------- confidence
def probs_at_commit(model, tokens, step, pos, block):
    """Rebuild the sequence as the model saw it when `pos` was committed; score it."""
    s = int(step[pos])
    hi = (pos // block + 1) * block
    seen = tokens.clone()
    seen[(step >= s)] = model.config.mask_id
    visible = torch.arange(len(tokens)) < hi
    return model.probs_at(seen, visible, pos, sampler=True)


def test_snapshot_confidence_is_model_probability_at_commit_time():
    model = FakeDenoiser(seq_len=32, seed=3)
    bos = model.config.bos_id
    out = run_draft(model, [[bos], [bos, 2, 7, 1]], 32, steps_per_block=2, top_p=0.8)
    for i in range(2):
        tokens, step = out.tokens[i], out.step[i]
        for pos in range(32):
            if step[pos] == 0:
                assert out.confidence[i, pos] == 1.0
                continue
            probs = probs_at_commit(model, tokens, step, pos, 4)
            tok = int(tokens[pos])
            assert out.confidence[i, pos].item() == pytest.approx(probs[tok].item(), rel=1e-12)
            kept = nucleus_reference(probs.tolist(), 0.8)
            assert tok in kept
            mass = sum(probs[k].item() for k in kept)
            assert out.confidence_nucleus[i, pos].item() == pytest.approx(probs[tok] / mass)


# --------------------------------------------------------------------------- tokens per call
def test_first_hitting_reveals_one_token_per_call():
    model = FakeDenoiser(seq_len=32)
    bos = model.config.bos_id
    out = run_draft(model, [[bos], [bos, 1, 2]], 32, first_hitting=True, steps_per_block=1)
    for i, plen in enumerate((1, 3)):
        steps = out.step[i, plen:].tolist()
        assert sorted(steps) == list(range(1, 32 - plen + 1))  # one commit per call
        assert int(out.nfe[i]) == 32 - plen


def test_steps_per_block_reveals_ceil_of_remaining():
    model = FakeDenoiser(seq_len=32)
    bos = model.config.bos_id
    out = run_draft(model, [[bos], [bos, 1, 2]], 32, steps_per_block=2)
    # sample 0: block 0 has 3 masked -> 2 + 1, then 7 blocks of 2 + 2: 16 calls
    assert out.nfe.tolist() == [16, 15]
    counts = torch.bincount(out.step[0], minlength=17)[1:].tolist()
    assert counts == [2, 1] + [2, 2] * 7
    # sample 1: block 0 has 1 masked position -> 1 call; then 14 calls
    assert torch.bincount(out.step[1])[1:].tolist() == [1] + [2, 2] * 7


def test_block_order_is_left_to_right():
    model = FakeDenoiser(seq_len=32)
    out = run_draft(model, [[model.config.bos_id]], 32)
    block_of_step = {}
    for pos, s in enumerate(out.step[0].tolist()):
        if s:
            block_of_step[s] = pos // 4
    blocks = [block_of_step[s] for s in sorted(block_of_step)]
    assert blocks == sorted(blocks)


def test_confident_unmask_commits_the_most_probable_position_first():
    """With a greedy nucleus every draw is the argmax, so 'confident' must commit, at every
    call, the masked position of the block whose top probability is highest."""
    model = FakeDenoiser(seq_len=16, seed=4)
    out = run_draft(model, [[model.config.bos_id]], 16, unmask="confident", top_p=1e-9)
    tokens, step = out.tokens[0], out.step[0]
    for s in range(1, int(out.nfe[0]) + 1):
        (pos,) = (step == s).nonzero()[0].tolist()
        lo = pos // 4 * 4
        pending = [q for q in range(lo, lo + 4) if step[q] >= s]
        best = {}
        for q in pending:
            seen = tokens.clone()
            seen[step >= s] = model.config.mask_id
            probs = model.probs_at(seen, torch.arange(16) < lo + 4, q, sampler=True)
            best[q] = probs.max().item()
        assert best[pos] == max(best.values())
        assert tokens[pos] == int(probs_at_commit(model, tokens, step, pos, 4).argmax())
    plain = run_draft(model, [[model.config.bos_id]], 16, top_p=1e-9)
    assert not torch.equal(plain.step, out.step)


# --------------------------------------------------------------------------- batches
def test_batch_of_n_equals_n_batches_of_one():
    model = FakeDenoiser(seq_len=32, seed=1)
    bos = model.config.bos_id
    prompts = [[bos], [bos, 4], [bos, 1, 2, 3, 4, 5]]
    cfg = sp.SamplerConfig(block_size=4, steps_per_block=3)
    batch = sp.draft(model, prompts, 32, cfg, gens(3))
    for i, p in enumerate(prompts):
        one = sp.draft(model, [p], 32, cfg, [gens(3)[i]])
        assert torch.equal(one.tokens[0], batch.tokens[i])
        assert torch.equal(one.confidence[0], batch.confidence[i])
        assert torch.equal(one.step[0], batch.step[i])
        assert int(one.nfe[0]) == int(batch.nfe[i])


def test_real_denoiser_batch_equals_single(tiny_denoiser_model):
    bos = tiny_denoiser_model.config.bos_id
    cfg = sp.SamplerConfig(block_size=4, steps_per_block=2)
    prompts = [[bos], [bos, 9, 3]]
    batch = sp.draft(tiny_denoiser_model, prompts, 32, cfg, gens(2))
    for i, p in enumerate(prompts):
        one = sp.draft(tiny_denoiser_model, [p], 32, cfg, [gens(2)[i]])
        assert torch.equal(one.tokens[0], batch.tokens[i])
        torch.testing.assert_close(one.confidence[0], batch.confidence[i], rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- revise
def test_revise_changes_only_masked_positions_and_fills_them():
    model = FakeDenoiser(seq_len=32, seed=2)
    draft = run_draft(model, [[model.config.bos_id]] * 2, 32)
    masked = torch.zeros(2, 32, dtype=torch.bool)
    masked[0, [3, 4, 17, 30]] = True
    masked[1, [1, 31]] = True
    for block in (0, 4, 8):
        cfg = sp.SamplerConfig(block_size=block)
        out = sp.revise(model, draft.tokens, masked, cfg, gens(2, stage="revise"))
        assert torch.equal(out.tokens[~masked], draft.tokens[~masked])
        assert not (out.tokens == model.config.mask_id).any()
        assert torch.equal(out.committed, masked)
        assert out.nfe.tolist() == [4, 2]  # one token per call by default


def test_revise_with_nothing_masked_costs_no_call():
    model = FakeDenoiser(seq_len=32)
    draft = run_draft(model, [[model.config.bos_id]], 32)
    model.calls.clear()
    out = sp.revise(
        model,
        draft.tokens,
        torch.zeros(1, 32, dtype=torch.bool),
        sp.SamplerConfig(block_size=0),
        gens(1),
    )
    assert model.calls == [] and int(out.nfe[0]) == 0
    assert torch.equal(out.tokens, draft.tokens)


def test_revise_blocks_without_masks_cost_no_call():
    model = FakeDenoiser(seq_len=32)
    tokens = run_draft(model, [[model.config.bos_id]], 32).tokens
    masked = torch.zeros(1, 32, dtype=torch.bool)
    masked[0, [9, 10, 25]] = True  # blocks 2 and 6 of 8
    model.calls.clear()
    out = sp.revise(model, tokens, masked, sp.SamplerConfig(block_size=4), gens(1))
    assert len(model.calls) == 3 == int(out.nfe[0])
    assert [c["commit"] for c in model.calls] == [8, 0, 16]  # pending prefixes, in-call


def test_full_block_revise_sees_right_context():
    model = CopyRightDenoiser(vocab_size=12, seq_len=32)
    tokens = torch.randint(0, 10, (1, 32), generator=torch.Generator().manual_seed(0))
    masked = torch.zeros(1, 32, dtype=torch.bool)
    masked[0, [3, 7, 12, 20]] = True  # each followed by a kept token; 3, 7 end a 4-block
    full = sp.revise(model, tokens, masked, sp.SamplerConfig(block_size=0), gens(1))
    for p in (3, 7, 12, 20):
        assert full.tokens[0, p] == tokens[0, p + 1]
        assert full.confidence[0, p] > 0.99
    semi = sp.revise(model, tokens, masked, sp.SamplerConfig(block_size=4), gens(1))
    for p in (3, 7):  # the right neighbour sits in the next block: invisible
        assert semi.confidence[0, p] < 0.5
    for p in (12, 20):
        assert semi.confidence[0, p] > 0.99


def test_step_continues_the_records_call_count():
    model = FakeDenoiser(seq_len=32)
    tokens = run_draft(model, [[model.config.bos_id]], 32).tokens
    masked = torch.zeros(1, 32, dtype=torch.bool)
    masked[0, [5, 6]] = True
    out = sp.revise(
        model,
        tokens,
        masked,
        sp.SamplerConfig(block_size=0),
        gens(1),
        step_offset=torch.tensor([31]),
    )
    assert sorted(out.step[0][masked[0]].tolist()) == [32, 33]


# --------------------------------------------------------------------------- limits
def test_sliding_window_keeps_positions_inside_the_trained_length():
    model = FakeDenoiser(seq_len=16)
    out = run_draft(model, [[model.config.bos_id]], 40)  # FakeDenoiser asserts positions < 16
    assert not (out.tokens == model.config.mask_id).any()
    assert all(c["n"] <= 16 for c in model.calls)


def test_block_larger_than_model_with_long_sequence_is_a_user_error():
    model = FakeDenoiser(seq_len=16)
    with pytest.raises(UserError, match="trained length"):
        run_draft(model, [[model.config.bos_id]], 40, block_size=0)


def test_stop_at_eos_stops_the_sample_after_its_block():
    model = FakeDenoiser(seq_len=32, eos_id=3)
    bos = model.config.bos_id
    free = run_draft(model, [[bos], [bos]], 32)
    cfg = sp.SamplerConfig(block_size=4)
    out = sp.draft(model, [[bos], [bos]], 32, cfg, gens(2), eos_id=3)
    for i in range(2):
        hits = (free.tokens[i, 1:] == 3).nonzero()
        if len(hits) == 0:
            assert out.stop[i] == -1
            continue
        first = int(hits[0, 0]) + 1
        assert int(out.stop[i]) == first
        end = (first // 4 + 1) * 4
        assert torch.equal(out.tokens[i, :end], free.tokens[i, :end])  # same draws up to there
        assert (out.tokens[i, end:] == model.config.mask_id).all()
        assert int(out.nfe[i]) == end - 1


@pytest.mark.parametrize(
    "kw",
    [
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"temperature": 0.0},
        {"dtype": "float16"},
        {"steps_per_block": 0},
        {"unmask": "left"},
    ],
)
def test_bad_sampler_config_is_a_user_error(kw):
    with pytest.raises(UserError):
        sp.SamplerConfig(block_size=4, **kw)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_cache_matches_recomputation_and_generators_stay_on_device():
    model = tiny_denoiser().cuda()
    bos = model.config.bos_id
    out = {}
    for kv in (True, False):
        cfg = sp.SamplerConfig(block_size=4, steps_per_block=2, kv_cache=kv)
        g = [sp.make_generator(0, "draft", 0, f"r{i}", "cuda") for i in range(3)]
        out[kv] = sp.draft(model, [[bos], [bos, 5], [bos, 1, 2]], 44, cfg, g)
    assert out[True].tokens.is_cuda
    assert torch.equal(out[True].tokens, out[False].tokens)
    torch.testing.assert_close(out[True].confidence, out[False].confidence, rtol=0, atol=1e-5)

"""Tests for sampler.py (and the per-call counts of reveal.py): exact KV cache, float64 Gumbel
draws, nucleus rule, snapshot confidence, tokens per call (fixed, threshold, BD3-LM's reference
schedule), batch invariance, revise semantics, sliding windows, stop at EOS.

Most tests use `FakeDenoiser` (integer arithmetic: cached and uncached runs agree bit for bit
and every logit depends on the visible keys); the real `Denoiser` is checked for cache
exactness and against the BD3-LM fixture's `kvcache_logits`.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from fake_model import CopyRightDenoiser, FakeDenoiser, one_thread, tiny_denoiser  # noqa: F401 (autouse fixture)
from sbdcli.config import legacy_sampler
from sbdcli.diffusion import calls, reveal
from sbdcli.diffusion import sampler as sp
from sbdcli.errors import UserError


@pytest.fixture(scope="module")
def tiny_denoiser_model() -> torch.nn.Module:
    return tiny_denoiser()


def cfg_of(block_size: int, **fields) -> sp.SamplerConfig:
    """A sampler config from the 0.2 field names (each names a policy and a cache)."""
    return legacy_sampler(block_size, **fields)


def gens(n: int, seed: int = 0, stage: str = "draft") -> list[torch.Generator]:
    return [sp.make_generator(seed, stage, 0, f"r{i}") for i in range(n)]


def run_draft(model, prompts, length, **kw) -> sp.FillResult:
    cfg = cfg_of(**{"block_size": 4, **kw})
    return sp.draft(model, prompts, length, cfg, gens(len(prompts)))


def same(a: sp.FillResult, b: sp.FillResult) -> None:
    for name in ("tokens", "confidence", "confidence_nucleus", "step", "nfe", "stop"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


# --------------------------------------------------------------------------- KV cache
CALL_RULES = [
    {},
    {"steps_per_block": 2},
    {"threshold": 0.5},
    {"steps_per_block": 3, "schedule": "reference"},
]
"""Per-call rules: one token per call, fixed S, threshold, BD3-LM's reference schedule."""


@pytest.mark.parametrize("kw", CALL_RULES, ids=["one", "S2", "tau0.5", "ref-S3"])
@pytest.mark.parametrize("length", [32, 30, 61])  # exact, partial last block, sliding window
def test_kv_cache_is_bit_identical_to_recomputation(kw, length):
    model = FakeDenoiser(seq_len=32)
    bos = model.config.bos_id
    prompts = [[bos], [bos, 3, 4], [bos, 1, 2, 3, 4, 5, 6]]
    cached = run_draft(model, prompts, length, **kw)
    model.calls.clear()
    plain = run_draft(model, prompts, length, **kw, kv_cache=False)
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
    window = calls.ExactWindow(model, x.shape[0], x.shape[1], 4)
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
    cfg = cfg_of(block_size=4, top_p=0.9)
    tok, conf, conf_n = sp.sample_categorical(logits, torch.Generator().manual_seed(1), cfg, 4)
    assert set(tok.tolist()) == {1, 3}
    freq = (tok == 1).double().mean().item()
    assert abs(freq - 0.5 / 0.8) < 0.03
    torch.testing.assert_close(conf, probs[tok], rtol=1e-6, atol=0)  # raw, before nucleus
    torch.testing.assert_close(conf_n, probs[tok] / 0.8, rtol=1e-6, atol=0)
    assert conf.dtype == torch.float64


def test_draw_is_float64_gumbel_max_from_the_generator():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    cfg = cfg_of(block_size=4, top_p=1.0, temperature=0.7)
    g = torch.Generator().manual_seed(5)
    tok, conf, _ = sp.sample_categorical(logits, g, cfg, mask_id=49)
    u = torch.rand(3, 50, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    z = logits.double()
    z[:, 49] = -math.inf
    expected = torch.argmax(torch.log_softmax(z / 0.7, -1) - torch.log(-torch.log(u)), -1)
    assert torch.equal(tok, expected)
    assert (tok != 49).all()
    torch.testing.assert_close(conf, torch.softmax(z, -1).gather(1, tok[:, None])[:, 0])
    cfg32 = cfg_of(block_size=4, top_p=1.0, dtype="float32")
    _, c32, _ = sp.sample_categorical(logits, torch.Generator().manual_seed(5), cfg32, 49)
    assert c32.dtype == torch.float64  # recorded as float64 even in the float32 ablation


def test_mask_token_is_never_sampled():
    logits = torch.zeros(200, 6)
    logits[:, 5] = 50.0  # [MASK] would win without SUBS
    cfg = cfg_of(block_size=4)
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


@pytest.mark.parametrize("kw", CALL_RULES[1:], ids=["S2", "tau0.5", "ref-S3"])
def test_snapshot_confidence_is_model_probability_at_commit_time(kw):
    """Also at the reference schedule's last step: a real draw, never a fixed token."""
    model = FakeDenoiser(seq_len=32, seed=3)
    bos = model.config.bos_id
    out = run_draft(model, [[bos], [bos, 2, 7, 1]], 32, **kw, top_p=0.8)
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


# --------------------------------------------------------------------------- threshold
def test_threshold_one_is_confident_unmasking_one_token_per_call():
    """No drawn token has probability >= 1 here, so TAU = 1 commits only the most confident
    position of each call: `unmask="confident"` at one token per call, draw for draw."""
    model = FakeDenoiser(seq_len=32, seed=5)
    bos = model.config.bos_id
    prompts = [[bos], [bos, 1, 2], [bos, 4, 4, 4, 4, 4]]
    tau = run_draft(model, prompts, 32, threshold=1.0)
    assert (tau.confidence[tau.step > 0] < 1.0).all()
    same(tau, run_draft(model, prompts, 32, unmask="confident"))
    assert tau.nfe.tolist() == [31, 29, 26]


def test_threshold_one_commits_every_certain_position_at_once():
    """A saturated softmax gives probability exactly 1.0 in float64: TAU = 1 commits all such
    positions in one call (plus the most confident one when none is certain)."""
    model = FakeDenoiser(seq_len=32, seed=5, scale=0.01)  # logit gaps >= 100
    out = run_draft(model, [[model.config.bos_id]], 32, threshold=1.0)
    certain = out.confidence[0] == 1.0
    assert int(certain[1:].sum()) > 8  # the test model does saturate
    nfe = int(out.nfe[0])
    assert nfe < 31
    for s in range(1, nfe + 1):
        at = out.step[0] == s
        unsure = at & ~certain
        assert int(unsure.sum()) <= 1 and (int(unsure.sum()) == 0 or int(at.sum()) == 1)


def test_very_low_threshold_commits_a_whole_block_per_call():
    model = FakeDenoiser(seq_len=32)
    bos = model.config.bos_id
    out = run_draft(model, [[bos], [bos, 1, 2, 3, 4]], 32, threshold=1e-6)
    assert out.nfe.tolist() == [8, 7]  # the second prompt fills block 0
    assert out.step[0].tolist() == [0] + [1] * 3 + [s for s in range(2, 9) for _ in range(4)]
    assert out.step[1, 5:].tolist() == [s for s in range(1, 8) for _ in range(4)][1:]
    masked = torch.zeros(1, 32, dtype=torch.bool)
    masked[0, [3, 5, 6, 7, 21, 30, 31]] = True  # blocks 0, 1, 5, 7
    model.calls.clear()
    cfg = cfg_of(block_size=4, threshold=1e-6)
    rev = sp.revise(model, out.tokens[:1], masked, cfg, gens(1, stage="revise"))
    assert int(rev.nfe[0]) == 4 == len(model.calls)


def test_threshold_commits_the_confident_draws_and_the_most_confident():
    """`_choose` against a hand computation: Gumbel draws for every masked position from the
    sample's own stream, kept where p >= TAU or where p is the block's highest."""
    vocab, mask = 9, 8
    logits = torch.randn(2, 4, vocab, generator=torch.Generator().manual_seed(3))
    logits *= torch.tensor([3.0, 0.3])[:, None, None]  # sample 1: flat, nothing passes
    todo = torch.tensor([[True, True, False, True], [False, True, False, False]])
    cfg = cfg_of(block_size=4, threshold=0.6, top_p=1.0)
    k = torch.tensor([3, 1])
    rule = reveal.rule_for(cfg.reveal)
    rows, cols, tok, conf, _ = sp._choose(todo, sp._Plan(k), logits, cfg, rule, gens(2), mask)
    got = {
        (int(r), int(c)): (int(t), float(p))
        for r, c, t, p in zip(rows, cols, tok, conf, strict=True)
    }
    want = {}
    for i, g in enumerate(gens(2)):
        pos = todo[i].nonzero()[:, 0]
        u = torch.rand((len(pos), vocab), generator=g, dtype=torch.float64)
        t, p, _ = sp.gumbel_max(logits[i, pos], u, cfg, mask)
        best = int(p.argmax())
        for j, q in enumerate(pos.tolist()):
            if p[j] >= 0.6 or j == best:
                want[(i, q)] = (int(t[j]), float(p[j]))
    assert got == want
    assert 2 <= len(got) < int(todo.sum())  # some draws are not committed
    assert [c < 0.6 for (i, _), (_, c) in sorted(got.items()) if i == 1] == [True]  # the best


@pytest.mark.parametrize("kw", CALL_RULES[2:], ids=["tau0.5", "ref-S3"])
def test_nfe_counts_the_calls_a_record_used(kw):
    model = FakeDenoiser(seq_len=32, seed=2)
    bos = model.config.bos_id
    out = run_draft(model, [[bos], [bos, 5, 5]], 32, **kw)
    for i in range(2):
        steps = out.step[i][out.step[i] > 0].unique().tolist()
        assert steps == list(range(1, int(out.nfe[i]) + 1))  # every call committed something
    model.calls.clear()
    one = sp.draft(model, [[bos]], 32, cfg_of(block_size=4, **kw), gens(1))
    assert len(model.calls) == int(one.nfe[0])


@pytest.mark.parametrize("kw", CALL_RULES[2:], ids=["tau0.5", "ref-S3"])
def test_batches_of_one_three_and_all_give_the_same_samples(kw):
    """Samples that finish a block early wait without drawing: batch composition is invisible."""
    model = FakeDenoiser(seq_len=32, seed=1)
    bos = model.config.bos_id
    prompts = [[bos], [bos, 4], [bos, 1, 2, 3, 4, 5], [bos], [bos, 9, 9, 9], [bos, 2]]
    cfg = cfg_of(block_size=4, **kw)
    g = gens(len(prompts))
    ref = sp.draft(model, prompts, 32, cfg, g)
    for size in (1, 3):
        for lo in range(0, len(prompts), size):
            part = sp.draft(model, prompts[lo : lo + size], 32, cfg, gens(len(prompts))[lo:])
            for j in range(len(part.nfe)):
                for name in ("tokens", "confidence", "confidence_nucleus", "step", "nfe"):
                    assert torch.equal(getattr(part, name)[j], getattr(ref, name)[lo + j]), name


# --------------------------------------------------------------------------- reference schedule
REFERENCE_COMMIT = "1c3e8f43d88dfbcee5ff2aa6932a9e74b31ae1d7"
"""kuleshov-group/bd3lms, diffusion.py: `_semi_ar_sampler` (dt = 1 / num_steps, t_i =
linspace(1, 0, num_steps)[i]) and `_ddpm_caching_update` (log-linear noise: move chance = t;
a masked position stays masked with probability (t - dt) / t)."""
REFERENCE_PROBS = {
    1: [1.0],
    2: [0.5, None],
    4: [0.25, 0.375, 0.75, None],
    5: [0.2, 4 / 15, 0.4, 0.8, None],
    8: [1 / 8, 7 / 48, 7 / 40, 7 / 32, 7 / 24, 7 / 16, 7 / 8, None],
}
"""Reveal probability per step, evaluated with the reference's float32 arithmetic at
REFERENCE_COMMIT; None: its last step divides by zero (mask chance -inf: every masked
position gets token 0, or with top_p < 1 the lowest id outside the nucleus)."""


@pytest.mark.parametrize("steps", sorted(REFERENCE_PROBS))
def test_reference_reveal_probs_match_the_reference(steps):
    got = reveal.reference_reveal_probs(steps)
    want = [1.0 if p is None else p for p in REFERENCE_PROBS[steps]]  # the bug: not copied
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-6)


def reference_law(r: int, steps: int) -> tuple[dict[int, float], dict[int, float]]:
    """Exact laws of (tokens revealed by the first call, calls to fill the block) for r masked
    positions: independent reveals with p_j, steps that reveal nothing skipped."""
    probs = [*REFERENCE_PROBS[steps][:-1], 1.0]

    def binom(n: int, k: int, p: float) -> float:
        return math.comb(n, k) * p**k * (1 - p) ** (n - k)

    first: dict[int, float] = {}
    calls: dict[int, float] = {}

    def walk(left: int, j: int, weight: float, made: int) -> None:
        if left == 0:
            calls[made] = calls.get(made, 0.0) + weight
            return
        if j == steps:
            raise AssertionError("the last step reveals everything")
        for k in range(left + 1):
            w = weight * binom(left, k, probs[j])
            if w == 0.0:
                continue
            if made == 0 and k > 0:
                first[k] = first.get(k, 0.0) + w
            walk(left - k, j + 1, w, made + (k > 0))

    walk(r, 0, 1.0, 0)
    return first, calls


def test_reference_counts_follow_the_reference_law():
    r, steps, n = 4, 4, 4000
    cfg = cfg_of(block_size=4, schedule="reference")
    g = [sp.make_generator(0, "law", 0, f"s{i}") for i in range(n)]
    remaining = torch.full((n,), r, dtype=torch.long)
    done = torch.zeros(n, dtype=torch.long)
    steps_used = torch.zeros(n, dtype=torch.long)
    calls = torch.zeros(n, dtype=torch.long)
    first = None
    while bool((remaining > 0).any()):
        k = reveal.tokens_per_call(remaining, (done, steps_used), 4, cfg.reveal, g)
        assert ((k >= 1) | (remaining == 0)).all() and (steps_used <= steps).all()
        first = k.clone() if first is None else first
        calls += (k > 0).long()
        remaining -= k
    law_first, law_calls = reference_law(r, steps)
    for k, p in law_first.items():
        assert abs(float((first == k).double().mean()) - p) < 0.03, (k, p)
    for c, p in law_calls.items():
        assert abs(float((calls == c).double().mean()) - p) < 0.03, (c, p)
    assert int(calls.max()) <= steps


def test_reference_schedule_draft_fills_every_block_within_s_calls():
    model = FakeDenoiser(seq_len=32, seed=6)
    bos = model.config.bos_id
    out = run_draft(model, [[bos]] * 8, 32, steps_per_block=3, schedule="reference")
    assert not (out.tokens == model.config.mask_id).any()
    for i in range(8):
        calls_per_block = [len(out.step[i, b : b + 4].unique()) for b in range(0, 32, 4)]
        assert max(calls_per_block) <= 3
    assert len(set(out.nfe.tolist())) > 1  # the count per call is random
    one = run_draft(model, [[bos]], 32, steps_per_block=1, schedule="reference")
    assert int(one.nfe[0]) == 8  # S = 1: the single step reveals the block


# --------------------------------------------------------------------------- batches
def test_batch_of_n_equals_n_batches_of_one():
    model = FakeDenoiser(seq_len=32, seed=1)
    bos = model.config.bos_id
    prompts = [[bos], [bos, 4], [bos, 1, 2, 3, 4, 5]]
    cfg = cfg_of(block_size=4, steps_per_block=3)
    batch = sp.draft(model, prompts, 32, cfg, gens(3))
    for i, p in enumerate(prompts):
        one = sp.draft(model, [p], 32, cfg, [gens(3)[i]])
        assert torch.equal(one.tokens[0], batch.tokens[i])
        assert torch.equal(one.confidence[0], batch.confidence[i])
        assert torch.equal(one.step[0], batch.step[i])
        assert int(one.nfe[0]) == int(batch.nfe[i])


def test_real_denoiser_batch_equals_single(tiny_denoiser_model):
    bos = tiny_denoiser_model.config.bos_id
    cfg = cfg_of(block_size=4, steps_per_block=2)
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
        cfg = cfg_of(block_size=block)
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
        cfg_of(block_size=0),
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
    out = sp.revise(model, tokens, masked, cfg_of(block_size=4), gens(1))
    assert len(model.calls) == 3 == int(out.nfe[0])
    assert [c["commit"] for c in model.calls] == [8, 0, 16]  # pending prefixes, in-call


def test_full_block_revise_sees_right_context():
    model = CopyRightDenoiser(vocab_size=12, seq_len=32)
    tokens = torch.randint(0, 10, (1, 32), generator=torch.Generator().manual_seed(0))
    masked = torch.zeros(1, 32, dtype=torch.bool)
    masked[0, [3, 7, 12, 20]] = True  # each followed by a kept token; 3, 7 end a 4-block
    full = sp.revise(model, tokens, masked, cfg_of(block_size=0), gens(1))
    for p in (3, 7, 12, 20):
        assert full.tokens[0, p] == tokens[0, p + 1]
        assert full.confidence[0, p] > 0.99
    semi = sp.revise(model, tokens, masked, cfg_of(block_size=4), gens(1))
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
        cfg_of(block_size=0),
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
    cfg = cfg_of(block_size=4)
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
        {"threshold": 0.0},
        {"threshold": 1.5},
        {"threshold": -0.2},
        {"threshold": float("nan")},
        {"schedule": "cosine"},
        {"cache": "fuzzy"},
        {"cache": "approx", "refresh": 0},
    ],
)
def test_bad_sampler_config_is_a_user_error(kw):
    with pytest.raises(UserError):
        cfg_of(block_size=4, **kw)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_cache_matches_recomputation_and_generators_stay_on_device():
    model = tiny_denoiser().cuda()
    bos = model.config.bos_id
    out = {}
    for kv in (True, False):
        cfg = cfg_of(block_size=4, steps_per_block=2, kv_cache=kv)
        g = [sp.make_generator(0, "draft", 0, f"r{i}", "cuda") for i in range(3)]
        out[kv] = sp.draft(model, [[bos], [bos, 5], [bos, 1, 2]], 44, cfg, g)
    assert out[True].tokens.is_cuda
    assert torch.equal(out[True].tokens, out[False].tokens)
    torch.testing.assert_close(out[True].confidence, out[False].confidence, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- time conditioning
def timed_denoiser() -> torch.nn.Module:
    """`tiny_denoiser` with time conditioning on (the same random weights)."""
    import dataclasses

    from sbdcli.model import Denoiser

    base = tiny_denoiser()
    model = Denoiser(dataclasses.replace(base.config, time_conditioning=True))
    model.load_state_dict(base.state_dict())
    return model.eval()


class SigmaRecorder(torch.nn.Module):
    """Wraps a Denoiser and records the `sigma` each call receives."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.config, self.sigmas = inner, inner.config, []

    def new_cache(self, *args):
        return self.inner.new_cache(*args)

    def forward(self, *args, sigma=None, **kw):
        self.sigmas.append(None if sigma is None else sigma.clone())
        return self.inner(*args, sigma=sigma, **kw)


def sigma_of(t) -> torch.Tensor:
    from sbdcli.diffusion.schedule import LogLinearSchedule

    return LogLinearSchedule().sigma(torch.as_tensor(t, dtype=torch.float32))


@pytest.mark.parametrize("kw", [{}, {"first_hitting": True}, {"threshold": 0.3}])
def test_time_conditioned_model_samples_with_and_without_cache(kw):
    rec = SigmaRecorder(timed_denoiser())
    bos = rec.config.bos_id
    for kv in (True, False):
        rec.sigmas.clear()
        out = run_draft(rec, [[bos], [bos, 5, 6]], 16, kv_cache=kv, **kw)
        assert not (out.tokens == rec.config.mask_id).any()
        assert len(rec.sigmas) >= int(out.nfe.max()) > 0
        assert all(s is not None and torch.isfinite(s).all() for s in rec.sigmas)
        dims = {s.dim() for s in rec.sigmas}
        assert dims == ({2} if kv else {1})  # cached calls carry one level per token


def test_fixed_steps_call_levels_follow_the_reference_grid():
    """Step i of S is called at t = linspace(1, 0, S)[i] (bd3lms `_semi_ar_sampler`)."""
    rec = SigmaRecorder(timed_denoiser())
    run_draft(rec, [[rec.config.bos_id]], 8, steps_per_block=4, kv_cache=False)
    grid = torch.linspace(1.0, 0.0, 4)
    expected = torch.cat([sigma_of(grid[:3]), sigma_of(grid)])  # block 0 holds 3 masked
    got = torch.stack([s[0] for s in rec.sigmas])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert float(got[0]) == pytest.approx(-math.log(1e-3), abs=1e-4)  # t = 1: -log eps


def test_cached_call_encodes_the_previous_block_at_its_last_level():
    rec = SigmaRecorder(timed_denoiser())
    run_draft(rec, [[rec.config.bos_id]], 8, steps_per_block=4)
    first_of_block1 = rec.sigmas[3]  # block 0 took 3 calls
    assert first_of_block1.shape == (1, 8)  # pending block 0 + noisy block 1
    last_of_block0 = float(rec.sigmas[2].reshape(-1)[-1])
    torch.testing.assert_close(first_of_block1[0, :4], torch.full((4,), last_of_block0))
    torch.testing.assert_close(first_of_block1[0, 4:], sigma_of([1.0] * 4))


def test_first_hitting_levels_fall_within_a_block_and_restart_at_the_next():
    rec = SigmaRecorder(timed_denoiser())
    run_draft(rec, [[rec.config.bos_id]], 8, first_hitting=True, kv_cache=False)
    t = [1 - math.exp(-float(s[0])) for s in rec.sigmas]  # invert sigma = -log(1 - t)
    assert len(t) == 7
    assert t[0] > t[1] > t[2]  # block 0: 3 calls
    assert t[3] > t[4] > t[5] > t[6]  # block 1: 4 calls
    assert t[3] > t[2]  # a new block starts again from t = 1 (times u^(1/4))


def test_time_conditioned_batch_equals_single():
    model = timed_denoiser()
    bos = model.config.bos_id
    prompts = [[bos], [bos, 5, 6], [bos, 1]]
    for kw in ({"first_hitting": True}, {"steps_per_block": 2}):
        cfg = cfg_of(block_size=4, **kw)
        whole = sp.draft(model, prompts, 12, cfg, gens(3))
        for i, prompt in enumerate(prompts):
            one = sp.draft(model, [prompt], 12, cfg, [gens(3)[i]])
            assert torch.equal(one.tokens[0], whole.tokens[i])


def test_window_reproduces_timecond_fixture_kvcache_logits():
    """The cached window, with block b - 1 last called at the reference's cache-writing level,
    gives the reference's time-conditioned KV-cache logits (tests/fixtures/bd3lm-tiny-tc)."""
    from pathlib import Path

    from safetensors.torch import load_file

    from sbdcli import load_model

    fixture = Path(__file__).parent / "fixtures" / "bd3lm-tiny-tc"
    model = load_model(str(fixture))
    inputs = load_file(str(fixture / "inputs.safetensors"))
    ref = load_file(str(fixture / "outputs.safetensors"))["kvcache_logits"]
    x, query, store = inputs["sample_input_ids"], inputs["kv_query_sigma"], inputs["kv_store_sigma"]
    window = calls.ExactWindow(model, 2, 12, 4)
    got = []
    with torch.inference_mode():
        for b in range(3):
            got.append(window.logits(x, 4 * b, 4 * b + 4, query[b]))
            window.levels[:, 4 * b : 4 * b + 4] = store[b][:, None]  # its last call's level
    torch.testing.assert_close(torch.cat(got, 1), ref, rtol=0, atol=1e-4)


# --------------------------------------------------------------------------- approximate cache
def revise_inputs(model, n: int = 3, length: int = 32, seed: int = 1):
    """Drafts of the real tiny model and about half their positions to revise."""
    drafted = run_draft(model, [[model.config.bos_id]] * n, length)
    masked = torch.rand(n, length, generator=torch.Generator().manual_seed(seed)) < 0.5
    masked[:, 0] = False
    return drafted.tokens, masked


def run_revise(model, tokens, masked, **kw) -> sp.FillResult:
    cfg = cfg_of(**{"block_size": 0, **kw})
    return sp.revise(model, tokens, masked, cfg, gens(len(tokens), stage="revise"))


@pytest.mark.parametrize("kw", [{}, {"threshold": 0.3}, {"steps_per_block": 4}])
@pytest.mark.parametrize("block", [0, 8])  # one global block; semi-AR blocks of 8
def test_approx_cache_refreshing_every_call_equals_exact(tiny_denoiser_model, kw, block):
    tokens, masked = revise_inputs(tiny_denoiser_model)
    exact = run_revise(tiny_denoiser_model, tokens, masked, block_size=block, **kw)
    approx = run_revise(
        tiny_denoiser_model, tokens, masked, block_size=block, cache="approx", refresh=1, **kw
    )
    same(exact, approx)  # bit for bit: R = 1 recomputes every position at every call
    bos = [[tiny_denoiser_model.config.bos_id]] * 2
    drafted = run_draft(tiny_denoiser_model, bos, 40, block_size=block or 4, **kw)
    again = run_draft(tiny_denoiser_model, bos, 40, block_size=block or 4, cache="approx", **kw)
    assert not (again.tokens == tiny_denoiser_model.config.mask_id).any()  # refresh 4 drafts
    one = run_draft(
        tiny_denoiser_model, bos, 40, block_size=block or 4, cache="approx", refresh=1, **kw
    )
    same(drafted, one)


class WidthRecorder(torch.nn.Module):
    """Wraps a Denoiser and records the number of inputs of each call."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.config, self.widths = inner, inner.config, []

    def new_cache(self, *args):
        return self.inner.new_cache(*args)

    def forward(self, tokens, *args, **kw):
        self.widths.append(tokens.shape[1])
        return self.inner(tokens, *args, **kw)


def test_approx_call_runs_only_the_positions_masked_at_the_previous_call(tiny_denoiser_model):
    """One sample, one token per call, refresh 3: full, m, m - 1, full, m - 3, m - 4, full..."""
    rec = WidthRecorder(tiny_denoiser_model)
    tokens, masked = revise_inputs(tiny_denoiser_model, n=1)
    m = int(masked.sum())
    out = run_revise(rec, tokens, masked, cache="approx", refresh=3)
    want = [32 if i % 3 == 0 else m - i + 1 for i in range(m)]
    assert rec.widths == want and int(out.nfe[0]) == m


@torch.inference_mode()  # as in `fill_masked`: the cache is written in place
def test_approx_cache_refreshes_changed_positions_and_keeps_the_others(tiny_denoiser_model):
    """After a full call, commit two positions: the next call recomputes the keys/values of
    the positions masked at the full call (layer 0 then equals an exact recomputation) and
    keeps every other position's stored keys/values untouched at every layer."""
    model, n, length = tiny_denoiser_model, 2, 32
    tokens, masked = revise_inputs(model, n=n)
    x = tokens.clone()
    x[masked] = model.config.mask_id
    window = calls.ApproxWindow(model, n, length, length, refresh=100)
    window.logits(x, 0, length)
    before = window.cache.k[:, :, :, :length].clone()
    queried = masked.clone()
    for i in range(n):  # commit the first two masked positions of every sample
        x[i, masked[i].nonzero()[:2, 0]] = 3
    window.logits(x, 0, length)
    after = window.cache.k[:, :, :, :length]
    kept = ~queried  # (n, T): positions not run again
    for layer in range(model.config.n_layers):
        for i in range(n):
            assert torch.equal(after[layer, i][:, kept[i]], before[layer, i][:, kept[i]])
    fresh = calls.ApproxWindow(model, n, length, length, refresh=1)
    fresh.logits(x, 0, length)
    for i in range(n):
        cols = queried[i]
        torch.testing.assert_close(after[0, i][:, cols], fresh.cache.k[0, i, :, :length][:, cols])
        changed = (x[i] == 3) & cols
        assert not torch.allclose(after[0, i][:, changed], before[0, i][:, changed])


def test_approx_cache_is_batch_invariant_and_close_to_exact(tiny_denoiser_model):
    tokens, masked = revise_inputs(tiny_denoiser_model, n=4)
    kw = {"cache": "approx", "refresh": 4, "threshold": 0.3}
    together = run_revise(tiny_denoiser_model, tokens, masked, **kw)
    for i in range(4):
        cfg = cfg_of(block_size=0, **kw)
        g = [sp.make_generator(0, "revise", 0, f"r{i}")]
        alone = sp.revise(tiny_denoiser_model, tokens[i : i + 1], masked[i : i + 1], cfg, g)
        assert torch.equal(alone.tokens[0], together.tokens[i])
        assert torch.equal(alone.nfe[0], together.nfe[i])
        torch.testing.assert_close(alone.confidence[0], together.confidence[i], rtol=0, atol=1e-6)
    exact = run_revise(tiny_denoiser_model, tokens, masked, threshold=0.3)
    assert (together.confidence - exact.confidence).abs().max() < 0.05  # an approximation


# --------------------------------------------------------------------------- captured call
def test_compile_is_refused_off_cuda():
    cfg = cfg_of(block_size=4, compile=True)
    for device in ("cpu", torch.device("cpu")):
        with pytest.raises(UserError, match="`cache` captured needs a CUDA device"):
            sp.check_compile(cfg, device)
    sp.check_compile(cfg_of(block_size=4), "cpu")  # off: nothing to refuse


def test_fixed_shape_call_samples_the_tokens_of_the_exact_cache(tiny_denoiser_model, monkeypatch):
    """The call `--compile` captures, run eagerly: the whole slab with its invalid slots
    masked gives the exact cache's tokens (confidences to float rounding), sliding window
    and partial last block included; the cache-free global revise call likewise."""
    model = tiny_denoiser_model
    monkeypatch.setattr(calls, "_captured", lambda m: (m.fixed_step, m.forward))
    monkeypatch.setattr(sp, "check_compile", lambda cfg, device: None)
    bos = model.config.bos_id
    for length in (32, 30, 61):
        eager = run_draft(model, [[bos], [bos, 5]], length, steps_per_block=2)
        fixed = run_draft(model, [[bos], [bos, 5]], length, steps_per_block=2, compile=True)
        assert torch.equal(eager.tokens, fixed.tokens) and torch.equal(eager.nfe, fixed.nfe)
        torch.testing.assert_close(eager.confidence, fixed.confidence, rtol=0, atol=1e-5)
    tokens, masked = revise_inputs(model)
    eager, fixed = (
        run_revise(model, tokens, masked),
        run_revise(model, tokens, masked, compile=True),
    )
    assert torch.equal(eager.tokens, fixed.tokens) and torch.equal(eager.nfe, fixed.nfe)
    torch.testing.assert_close(eager.confidence, fixed.confidence, rtol=0, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compiled_cuda_draft_samples_the_eager_tokens():
    model = tiny_denoiser().cuda()
    bos = model.config.bos_id
    out = {}
    for captured in (False, True):
        cfg = cfg_of(block_size=4, steps_per_block=2, compile=captured)
        g = [sp.make_generator(0, "draft", 0, f"r{i}", "cuda") for i in range(3)]
        out[captured] = sp.draft(model, [[bos], [bos, 5], [bos, 1, 2]], 44, cfg, g)
    assert torch.equal(out[True].tokens, out[False].tokens)
    torch.testing.assert_close(out[True].confidence, out[False].confidence, rtol=0, atol=1e-4)


def test_reference_schedule_caches_a_block_at_its_revealing_step():
    """bd3lms writes a finished block's cache at the step that revealed its last token, which
    can come after the call whose probabilities it reused (`_ddpm_caching_update`)."""
    grid = torch.linspace(1.0, 0.0, 8)
    later = 0
    for seed in range(4):
        rec = SigmaRecorder(timed_denoiser())
        cfg = cfg_of(block_size=4, steps_per_block=8, schedule="reference")
        sp.draft(rec, [[rec.config.bos_id]], 8, cfg, gens(1, seed))
        first = next(i for i, s in enumerate(rec.sigmas) if s.shape == (1, 8))  # block 1 opens
        cached, called = rec.sigmas[first][0, :4], float(rec.sigmas[first - 1][0, -1])
        assert torch.equal(cached, cached[:1].expand(4))
        assert any(abs(float(cached[0]) - float(sigma_of(g))) < 1e-6 for g in grid)
        assert float(cached[0]) <= called + 1e-6  # revealed at the call's step or later
        later += float(cached[0]) < called - 1e-6
    assert later > 0  # with p_0 = 1/8 some block is finished at a later step than its call


# --------------------------------------------------------------------------- read-out
@pytest.mark.parametrize(
    ("kw", "width"),
    [
        ({}, {4}),
        ({"first_hitting": True}, {4}),
        ({"steps_per_block": 4}, {4, 8}),  # ceil(r / calls left): 4 (or 5 -> 8 with BOS)
        ({"steps_per_block": 8, "schedule": "reference"}, {4, 8, 12, None}),
        ({"steps_per_block": 2}, {8}),  # 8 (of 15 or 16) per call, then the rest
        ({"unmask": "confident"}, {None}),
        ({"threshold": 0.5}, {None}),
    ],
)
@pytest.mark.parametrize("kv_cache", [True, False])
def test_random_order_calls_read_out_only_the_committed_positions(kw, width, kv_cache):
    """Random order chooses positions before the call: the network reads out (last layer
    and head) only there, the most any row commits padded to a multiple of 4 (batch
    invariance of CPU matmuls), or every position where that is the whole block; confident
    order and threshold need every position's draw."""
    model = FakeDenoiser(seq_len=32)
    out = run_draft(model, [[model.config.bos_id]] * 2, 32, block_size=16, **kw, kv_cache=kv_cache)
    widths = [c["readout"] for c in model.calls]
    assert set(widths) <= width, set(widths)
    assert not (out.tokens == model.config.mask_id).any()


def test_block_4_drafts_compute_every_position_as_before():
    """At block 4 a padded read-out is the whole block: the call is the one of before."""
    model = FakeDenoiser(seq_len=32)
    run_draft(model, [[model.config.bos_id]] * 2, 32)
    assert {c["readout"] for c in model.calls} == {None}


def test_approx_revise_reads_out_among_the_queried_positions(tiny_denoiser_model):
    """The approximate call's read-out indexes its own (gathered) queries: the result equals
    the approximate call computed in full and read out afterwards."""
    tokens, masked = revise_inputs(tiny_denoiser_model)
    fast = run_revise(tiny_denoiser_model, tokens, masked, cache="approx", refresh=3)

    class FullThenTake(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def new_cache(self, *args):
            return self.inner.new_cache(*args)

        def forward(self, *args, readout=None, **kw):
            out = self.inner(*args, **kw)
            return out if readout is None else calls.take(out, readout)

    slow = run_revise(FullThenTake(tiny_denoiser_model), tokens, masked, cache="approx", refresh=3)
    assert torch.equal(fast.tokens, slow.tokens)
    torch.testing.assert_close(fast.confidence, slow.confidence, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- stepping engine
ENGINE_RULES = [{}, {"steps_per_block": 2, "unmask": "confident"}, *CALL_RULES[2:]]


def engine_for(model, prompts, length, **kw) -> sp.FillEngine:
    cfg = cfg_of(**{"block_size": 4, **kw})
    return sp.draft_engine(model, prompts, length, cfg, gens(len(prompts)))


@pytest.mark.parametrize("kw", ENGINE_RULES, ids=["one", "S2-confident", "tau0.5", "ref-S3"])
def test_engine_events_rebuild_the_result_of_fill_masked(kw):
    """One event per network call; its commits are exactly what the result holds."""
    model = FakeDenoiser(seq_len=32, seed=3)
    bos = model.config.bos_id
    prompts = [[bos], [bos, 4, 4], [bos, 1, 2, 3, 4, 5]]
    whole = run_draft(model, prompts, 30, **kw)
    model.calls.clear()
    engine = engine_for(model, prompts, 30, **kw)
    events = list(engine)
    assert len(events) == len(model.calls)  # one event per network call
    assert [e.call for e in events] == list(range(1, len(events) + 1))
    same(engine.result, whole)
    rebuilt = torch.full_like(whole.tokens, model.config.mask_id)
    rebuilt[:, 0] = bos
    for i, p in enumerate(prompts):
        rebuilt[i, : len(p)] = torch.tensor(p)
    per_row = [0] * len(prompts)
    for e in events:
        assert list(e.rows) == sorted(set(e.rows)) and e.hi - e.lo <= 4
        for row, pos, tok, conf in zip(e.rows, e.positions, e.tokens, e.confidences, strict=True):
            assert pos and all(e.lo <= p < e.hi for p in pos) and list(pos) == sorted(pos)
            rebuilt[row, list(pos)] = torch.tensor(tok)
            assert [float(whole.confidence[row, p]) for p in pos] == list(conf)
            assert all(int(whole.step[row, p]) == per_row[row] + 1 for p in pos)
            per_row[row] += 1
    assert torch.equal(rebuilt, whole.tokens)
    assert per_row == whole.nfe.tolist()  # a row takes part in exactly its nfe calls
    assert not bool(engine.result.cancelled.any())


@pytest.mark.parametrize("kw", ENGINE_RULES, ids=["one", "S2-confident", "tau0.5", "ref-S3"])
def test_cancel_takes_a_row_out_and_leaves_the_others_bit_identical(kw):
    model = FakeDenoiser(seq_len=32, seed=4)
    bos = model.config.bos_id
    prompts = [[bos], [bos, 7], [bos, 2, 2, 2]]
    whole = run_draft(model, prompts, 32, **kw)
    engine = engine_for(model, prompts, 32, **kw)
    seen_after = []
    for event in engine:
        if event.call == 5:
            engine.cancel(1)
        elif event.call > 5:
            seen_after.append(event.rows)
    out = engine.result
    assert seen_after and all(1 not in rows for rows in seen_after)
    assert out.cancelled.tolist() == [False, True, False]
    for name in ("tokens", "confidence", "confidence_nucleus", "step", "nfe", "stop"):
        for row in (0, 2):
            assert torch.equal(getattr(out, name)[row], getattr(whole, name)[row]), name
    left = out.tokens[1] == model.config.mask_id
    assert bool(left.any()) and int(out.nfe[1]) < int(whole.nfe[1])
    assert not bool(out.committed[1][left].any())


@pytest.mark.parametrize("cache", [{}, {"cache": "approx", "refresh": 3}, {"kv_cache": False}])
def test_cancel_on_the_real_denoiser_keeps_the_other_rows(tiny_denoiser_model, cache):
    """Real attention: the cancelled row's content no longer changes; the others sample the
    same tokens (approx: its query width is the batch's largest masked count, so its floats
    are as batch invariant as the approximate cache itself)."""
    tokens, masked = revise_inputs(tiny_denoiser_model, n=3)
    cfg = cfg_of(block_size=0, **cache)
    whole = sp.revise(tiny_denoiser_model, tokens, masked, cfg, gens(3, stage="revise"))
    engine = sp.revise_engine(tiny_denoiser_model, tokens, masked, cfg, gens(3, stage="revise"))
    for event in engine:
        if event.call == 2:
            engine.cancel(0)
    out = engine.result
    assert out.cancelled.tolist() == [True, False, False]
    for row in (1, 2):
        assert torch.equal(out.tokens[row], whole.tokens[row])
        assert torch.equal(out.nfe[row], whole.nfe[row])
        if "cache" in cache:
            conf, want = out.confidence[row], whole.confidence[row]
            torch.testing.assert_close(conf, want, atol=1e-6, rtol=0)
        else:
            assert torch.equal(out.confidence[row], whole.confidence[row])


def test_fill_masked_passes_every_event_to_its_consumer():
    model = FakeDenoiser(seq_len=32)
    bos = model.config.bos_id
    events: list[sp.CallEvent] = []
    cfg = cfg_of(block_size=4, steps_per_block=2)
    out = sp.draft(model, [[bos], [bos, 3]], 16, cfg, gens(2), progress=events.append)
    assert len(events) == len(model.calls) == int(out.nfe.max())
    with pytest.raises(dataclasses.FrozenInstanceError):
        events[0].call = 9  # type: ignore[misc]  # frozen: consumers cannot alter an event


def test_engine_errors_come_before_any_call():
    model = FakeDenoiser(seq_len=8)
    bos = model.config.bos_id
    with pytest.raises(UserError, match="exceeds the model's trained length"):
        sp.draft_engine(model, [[bos]], 32, cfg_of(block_size=16), gens(1))
    assert model.calls == []

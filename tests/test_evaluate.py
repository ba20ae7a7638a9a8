"""Tests for the evaluation protocol: judges against independent computations, entropy,
Gen PPL aggregation, grouping, held-out perplexity (B = 1 exact, parity fixture)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import shared_path
from sbdcli.errors import UserError
from sbdcli.evaluate import (
    GenPplOptions,
    SbdJudge,
    VocabInfo,
    costs,
    entropy_stats,
    evaluate_sets,
    gen_ppl,
    group_records,
    heldout_perplexity,
    markdown_table,
    plot_genppl,
    sampler_settings,
    scored_mask,
    stage_signature,
    unigram_entropy,
)
from sbdcli.evaluate.hf_judge import HFJudge, windows

# ----------------------------------------------------------------------------- helpers
EOT = "<|endoftext|>"


def make_record(tokens, prompt_len=1, stages=None, model="nowhere@000000000000", **extra):
    rec = {
        "id": extra.pop("id", "r"),
        "tokens": list(tokens),
        "confidence": [1.0] * len(tokens),
        "masked": [],
        "prompt_len": prompt_len,
        "nfe": extra.pop("nfe", 8),
        "stages": stages if stages is not None else [{"name": "draft", "block_size": 4}],
        "text": extra.pop("text", ""),
        "model": model,
    }
    rec.update(extra)
    return rec


def build_tiny_gpt2(out: Path, n_positions: int = 32) -> Path:
    """A random 2-layer GPT-2 with a byte-level BPE trained on a few strings, saved locally."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(["the cat sat on the mat", "a dog ran in the park"] * 5, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT)
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=len(fast),
        n_positions=n_positions,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=fast.eos_token_id,
        eos_token_id=fast.eos_token_id,
    )
    GPT2LMHeadModel(cfg).save_pretrained(out)
    fast.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> Path:
    return build_tiny_gpt2(tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="module")
def judge(gpt2_dir) -> HFJudge:
    return HFJudge(gpt2_dir, batch_size=3)


def guide_loop_nll(model, ids: list[int], context: int, stride: int) -> tuple[float, int]:
    """The Hugging Face perplexity guide's loop, written independently (labels, -100)."""
    x = torch.tensor(ids)[None]
    n, total, count, prev = x.shape[1], 0.0, 0, 0
    for begin in range(0, n, stride):
        end = min(begin + context, n)
        trg = end - prev
        inp = x[:, begin:end]
        labels = inp.clone()
        labels[:, :-trg] = -100
        with torch.no_grad():
            loss = model(inp, labels=labels).loss
        k = int((labels[:, 1:] != -100).sum())
        total, count, prev = total + float(loss) * k, count + k, end
        if end == n:
            break
    return total, count


def token_nll(model, ids: list[int]) -> torch.Tensor:
    """-log p(ids[i] | ids[<i]) for i >= 1 from one full forward: (n - 1,) float64."""
    with torch.no_grad():
        logits = model(torch.tensor(ids)[None]).logits[0, :-1].double()
    return -logits.log_softmax(-1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]


# ----------------------------------------------------------------------------- windows
@pytest.mark.parametrize("context,stride", [(8, 4), (8, 3), (32, 16), (5, 4)])
def test_windows_score_every_token_once_with_enough_context(context, stride):
    for n in range(0, 40):
        seen = []
        for begin, end, first in windows(n, context, stride):
            assert end - begin <= context and begin < first <= end
            seen += list(range(first, end))
            for p in range(first, end):  # left context inside the window
                assert p - begin >= min(p, context - stride)
        assert seen == list(range(1, n))


# ----------------------------------------------------------------------------- HF judge
def test_hf_judge_matches_guide_loop_including_long_samples(judge):
    rng = np.random.default_rng(0)
    seqs = [[0, *rng.integers(1, judge.vocab, size=n).tolist()] for n in (4, 31, 32, 45, 90)]
    flags = [[False] + [True] * (len(s) - 1) for s in seqs]
    nll, ntok = judge.score_ids(seqs, flags)
    assert judge.context == 32 and judge.stride == 16  # 512 > context: half the context
    for s, got, k in zip(seqs, nll, ntok, strict=True):
        want, count = guide_loop_nll(judge.model, s, judge.context, judge.stride)
        assert k == count == len(s) - 1
        assert got == pytest.approx(want, rel=1e-5, abs=1e-4)


def test_hf_judge_batched_equals_one_at_a_time(gpt2_dir, judge):
    rng = np.random.default_rng(1)
    seqs = [[0, *rng.integers(1, judge.vocab, size=n).tolist()] for n in (3, 12, 30, 70)]
    flags = [[j % 3 != 0 for j in range(len(s))] for s in seqs]
    one = HFJudge(gpt2_dir, batch_size=1)
    a, na = judge.score_ids(seqs, flags)
    b, nb = one.score_ids(seqs, flags)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
    assert (na == nb).all()


def test_hf_judge_text_eos_rules(judge):
    tok = judge.tokenizer
    eos = tok.eos_token_id
    a, b = tok("the cat sat")["input_ids"], tok("a dog ran")["input_ids"]
    rec = make_record([0], text=f"the cat sat{EOT}a dog ran")
    # skip: EOS stays in the input as context, never scored; BOS prepended, not scored
    judge.eos = "skip"
    ids, flags = judge.judge_sequence(rec)
    assert ids == [eos, *a, eos, *b]
    assert flags == [False, *[True] * len(a), False, *[True] * len(b)]
    full = token_nll(judge.model, ids).numpy()
    nll, ntok = judge.score_ids([ids], [flags])
    assert ntok[0] == len(a) + len(b)
    assert nll[0] == pytest.approx(full[np.asarray(flags[1:])].sum(), rel=1e-5)
    # cut: the sample ends before its first EOS
    judge.eos = "cut"
    ids_cut, flags_cut = judge.judge_sequence(rec)
    judge.eos = "skip"
    nll_cut, ntok_cut = judge.score_ids([ids_cut], [flags_cut])
    assert ntok_cut[0] == len(a)
    assert nll_cut[0] == pytest.approx(token_nll(judge.model, [eos, *a]).sum().item(), rel=1e-5)


def test_hf_judge_codec_path_splits_at_eos_and_skips_prompt(gpt2_dir):
    from sbdcli.data.codec import ByteCodec

    codec = ByteCodec()
    bos, eos = codec.bos_id, codec.eos_id
    j = HFJudge(gpt2_dir, codec=codec, special_ids=[bos, eos])
    tok = j.tokenizer
    enc = list
    prompt, first, second = "the ", "cat sat", "a dog"
    tokens = [bos, *enc(prompt.encode()), *enc(first.encode()), eos, *enc(second.encode())]
    rec = make_record(tokens, prompt_len=1 + len(prompt))
    ids, flags = j.judge_sequence(rec)
    p_ids = tok(prompt)["input_ids"]
    f_ids, s_ids = tok(first)["input_ids"], tok(second)["input_ids"]
    e = tok.eos_token_id
    assert ids == [e, *p_ids, *f_ids, e, *s_ids]
    assert flags == [False] * (1 + len(p_ids)) + [True] * len(f_ids) + [False] + [True] * len(s_ids)
    j.eos = "cut"
    ids, flags = j.judge_sequence(rec)
    assert ids == [e, *p_ids, *f_ids] and sum(flags) == len(f_ids)


def test_hf_judge_rejects_directories_without_a_causal_lm(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "vit"}')
    with pytest.raises(UserError, match="not a causal language model"):
        HFJudge(tmp_path)
    with pytest.raises(UserError, match="no config.json"):
        HFJudge(tmp_path / "missing")


# ----------------------------------------------------------------------------- oracle
@pytest.fixture(scope="module")
def synth_run(tmp_path_factory) -> Path:
    """A fake run directory whose data/ is a tiny prepared synthetic language."""
    from sbdcli.data import prepare_synthetic

    run = tmp_path_factory.mktemp("run")
    prepare_synthetic(run / "data", seq_len=16, num_train=8, num_val=8, floor_samples=256)
    return run


def independent_oracle_loglik(path: Path, row: list[int]) -> float:
    """log p(x_1..x_n) = logsumexp_z(prior_z + init_z(x_1) + sum trans_z(x_{i-1}, x_i))."""
    from safetensors.numpy import load_file

    t = load_file(str(path))
    prior, init, trans = t["log_prior"], t["log_init"], t["log_trans"]
    x = row[1:]
    if not x:
        return 0.0
    per_topic = []
    for z in range(prior.shape[0]):
        total = prior[z] + init[z, x[0]]
        for a, b in itertools.pairwise(x):
            total += trans[z, a, b]
        per_topic.append(total)
    m = max(per_topic)
    return m + math.log(sum(math.exp(v - m) for v in per_topic))


def test_oracle_nll_equals_independent_computation(synth_run):
    from sbdcli.data.synthetic import load_oracle

    oracle = load_oracle(synth_run / "data" / "oracle.safetensors")
    rows = oracle.sample(6, 16, torch.Generator().manual_seed(3)).tolist()
    rows[5][7] = (rows[5][6] + 1) % oracle.vocab  # an unlikely token
    model = f"{synth_run}@000000000000"
    recs = [make_record(r, prompt_len=1 + 2 * (i % 2), model=model, id=str(i)) for i, r in
            enumerate(rows)]  # fmt: skip
    (summary,) = evaluate_sets([("f", recs)], GenPplOptions())  # default evaluator: oracle
    path = synth_run / "data" / "oracle.safetensors"
    nll, ntok = [], []
    for rec in recs:
        p = rec["prompt_len"]
        full = independent_oracle_loglik(path, rec["tokens"])
        prefix = independent_oracle_loglik(path, rec["tokens"][:p])
        nll.append(prefix - full)
        ntok.append(16 - p)
    assert summary["evaluator"]["kind"] == "oracle"
    assert summary["tokens_scored"] == sum(ntok)
    assert summary["nll_per_token"] == pytest.approx(sum(nll) / sum(ntok), rel=1e-10)
    per_sample = np.mean([math.exp(a / b) for a, b in zip(nll, ntok, strict=True)])
    assert summary["gen_ppl_per_sample_mean"] == pytest.approx(per_sample, rel=1e-10)
    assert summary["oracle_floor_source"].startswith("data manifest")
    assert summary["oracle_floor_nll_per_token"] > 0


def test_oracle_floor_recomputed_at_another_length(synth_run):
    from sbdcli.evaluate import OracleJudge

    j = OracleJudge(synth_run / "data", {"oracle": {"nll_per_token": 9.0, "seq_len": 16}})
    other = j.floor(24, n=64, seed=1)
    assert other["oracle_floor_source"].startswith("64 fresh")
    true = j.oracle.sample(64, 24, torch.Generator().manual_seed(1))
    want = -j.oracle.log_likelihood(true).sum().item() / (64 * 23)
    assert other["oracle_floor_nll_per_token"] == pytest.approx(want)


def test_oracle_rejects_tokens_of_another_vocabulary(synth_run):
    recs = [make_record([64, 3, 70, 5], model=f"{synth_run}@x")]
    with pytest.raises(UserError, match="not a word of the synthetic language"):
        evaluate_sets([("f", recs)], GenPplOptions(evaluator="oracle"))


# ----------------------------------------------------------------------------- sbd judge
def tiny_denoiser(vocab=12, length=16, seed=0):
    from sbdcli.config import ModelConfig
    from sbdcli.model import Denoiser

    cfg = ModelConfig(vocab_size=vocab, mask_id=vocab - 1, seq_len=length, n_layers=2,
                      d_model=32, n_heads=2, cond_dim=16, dropout=0.0, bos_id=vocab - 2,
                      eos_id=vocab - 2)  # fmt: skip
    torch.manual_seed(seed)
    model = Denoiser(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def stepwise_causal_logprobs(model, x0: torch.Tensor) -> torch.Tensor:
    """log p(x_i | x_<i) one position at a time: [x_<i, MASK] in a causal pass (B, L-1)."""
    mask = model.config.mask_id
    out = []
    with torch.no_grad():
        for i in range(1, x0.shape[1]):
            inp = torch.cat([x0[:, :i], torch.full_like(x0[:, :1], mask)], dim=1)
            logits = model.sample_logits(inp, 1)[:, -1].double()  # (B, V)
            logits[:, mask] = -math.inf
            out.append(logits.log_softmax(-1).gather(-1, x0[:, i : i + 1])[:, 0])
    return torch.stack(out, dim=1)


def test_block1_judge_equals_stepwise_causal_computation():
    model = tiny_denoiser()
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 10, (3, 16), generator=gen)
    x0[:, 0] = 10  # BOS
    x0[2, 9] = 10  # an EOS in the middle of sample 2 (BOS = EOS id)
    info = VocabInfo(10, 10, 11, 12)
    judge = SbdJudge(model, info, blocks=[1], batch_size=2)
    ref = stepwise_causal_logprobs(model, x0)  # (3, 15)
    got = judge.token_logprobs(x0)[:, 1:].double()
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    recs = [make_record(r.tolist(), prompt_len=1 + 3 * (i == 1), id=str(i)) for i, r in
            enumerate(x0)]  # fmt: skip
    scores = judge.score(recs, "skip")
    mask = scored_mask(x0, torch.tensor([1, 4, 1]), [10], "skip")[:, 1:]
    np.testing.assert_allclose(scores.nll, (-(ref * mask)).sum(1).numpy(), rtol=1e-5)
    assert scores.ntok.tolist() == [15, 12, 14]
    cut = judge.score(recs, "cut")
    assert cut.ntok.tolist() == [15, 12, 8]


def test_block1_judge_refuses_other_tokenizer():
    judge = SbdJudge(tiny_denoiser(), VocabInfo(10, 10, 11, 12, "aaa"), blocks=[4])
    recs = [make_record([10, 1, 2, 3])]
    with pytest.raises(UserError, match="tokenizer"):
        judge.check(recs, VocabInfo(10, 10, 11, 12, "bbb"))
    with pytest.raises(UserError, match="different tokenizer"):
        judge.check([make_record([10, 1, 40, 3])], VocabInfo(10, 10, 11, 12, "aaa"))
    judge.check(recs, VocabInfo(10, 10, 11, 12, "aaa"))
    assert any("not block size 1" in n for n in judge.notes)


# ----------------------------------------------------------------------------- held-out ppl
def test_heldout_ppl_block1_is_the_exact_nll():
    model = tiny_denoiser(seed=1)
    rows = torch.randint(0, 10, (5, 16), generator=torch.Generator().manual_seed(2))
    rows[:, 0] = 10
    res = heldout_perplexity(model, rows, 1, mc=3, batch_size=2)
    exact = -stepwise_causal_logprobs(model, rows).mean().item()
    assert res.exact and res.stderr == 0.0
    assert res.nelbo == pytest.approx(exact, rel=1e-5)
    d = res.to_dict()
    assert d["ppl"] == pytest.approx(math.exp(exact), rel=1e-5)
    assert d["bits_per_token"] == pytest.approx(exact / math.log(2), rel=1e-5)


def test_heldout_ppl_monte_carlo_has_a_standard_error():
    model = tiny_denoiser(seed=1)
    rows = torch.randint(0, 10, (4, 16), generator=torch.Generator().manual_seed(2))
    rows[:, 0] = 10
    res = heldout_perplexity(model, rows, 4, mc=3, batch_size=4, seed=5)
    assert len(res.reps) == 3 and res.stderr > 0
    assert res.stderr == pytest.approx(np.std(res.reps, ddof=1) / math.sqrt(3))
    again = heldout_perplexity(model, rows, 4, mc=3, batch_size=4, seed=5)
    assert again.reps == res.reps  # reproducible from the seed


def test_heldout_ppl_on_parity_fixture_equals_reference_nelbo(fixture_dir):
    from safetensors.torch import load_file

    from sbdcli.model.checkpoint import load_model

    inputs = load_file(str(fixture_dir / "inputs.safetensors"))
    outputs = load_file(str(shared_path("fixtures", "bd3lm-tiny", "outputs.safetensors")))
    model = load_model(str(fixture_dir))
    x0 = inputs["x0"].long()
    res = heldout_perplexity(model, x0, 4, t=inputs["t"], x_t=inputs["xt"].long(), batch_size=1)
    ref = outputs["train_token_nelbo"].double()  # (2, 32), 0 at position 0
    assert ref[:, 0].abs().max() == 0
    assert res.nelbo == pytest.approx(ref[:, 1:].mean().item(), rel=1e-4)


# ----------------------------------------------------------------------------- entropy, masks
def test_unigram_entropy_of_hand_made_sequences():
    assert unigram_entropy([1, 1, 2, 2]) == pytest.approx(math.log(2))
    assert unigram_entropy([3, 3, 3]) == 0.0
    assert unigram_entropy([1, 2, 3, 4, 5, 6]) == pytest.approx(math.log(6))
    p = np.array([0.5, 0.25, 0.25])
    assert unigram_entropy([7, 7, 8, 9]) == pytest.approx(-(p * np.log(p)).sum())
    assert math.isnan(unigram_entropy([]))


def test_entropy_counts_only_scored_positions():
    bos = eos = 9
    tokens = torch.tensor([[bos, 1, 1, 2, 2, eos, 3, 3], [bos, 5, 5, 5, 5, 5, 5, 5]])
    prompt = torch.tensor([1, 3])
    skip = scored_mask(tokens, prompt, [bos, eos], "skip")
    cut = scored_mask(tokens, prompt, [bos, eos], "cut")
    assert skip[0].tolist() == [False, True, True, True, True, False, True, True]
    assert cut[0].tolist() == [False, True, True, True, True, False, False, False]
    assert skip[1].tolist() == [False, False, False, True, True, True, True, True]
    e = entropy_stats(tokens.tolist(), skip.tolist())
    p = np.array([2, 2, 2]) / 6
    assert e["entropy_per_sample_mean"] == pytest.approx((-(p * np.log(p)).sum() + 0.0) / 2)
    pooled = np.array([2, 2, 2, 5]) / 11
    assert e["entropy_pooled"] == pytest.approx(-(pooled * np.log(pooled)).sum())
    assert entropy_stats(tokens.tolist(), cut.tolist())["entropy_per_sample_mean"] == (
        pytest.approx(math.log(2) / 2)
    )


def test_gen_ppl_corpus_and_per_sample_mean_differ_as_defined():
    out = gen_ppl(np.array([2.0, 12.0, 0.0]), np.array([2, 4, 0]))
    assert out["nll_per_token"] == pytest.approx(14 / 6)
    assert out["gen_ppl_corpus"] == pytest.approx(math.exp(14 / 6))
    assert out["gen_ppl_per_sample_mean"] == pytest.approx((math.e + math.exp(3)) / 2)
    assert out["n_scored"] == 2 and out["tokens_scored"] == 6


# ----------------------------------------------------------------------------- grouping, costs
def test_records_group_by_stage_history_not_by_seed_or_cost():
    draft = {"name": "draft", "block_size": 4, "top_p": 0.9, "seed": 1, "nfe": 8, "seconds": 0.5}
    draft2 = {**draft, "seed": 2, "nfe": 9, "seconds": 0.7, "batch_size": 3, "model": "m@1"}
    remask = {"name": "remask", "gamma": 0.25, "strategy": "snapshot", "seed": 0, "n_masked": 2}
    revise = {"name": "revise", "block_size": 16, "seed": 0, "nfe": 4, "seconds": 0.25}
    recs = [
        make_record([9, 1, 2], stages=[draft], nfe=8),
        make_record([9, 1, 2], stages=[draft2], nfe=9),
        make_record([9, 1, 2], stages=[draft, remask, revise], nfe=12),
    ]
    groups = group_records(recs)
    assert [len(g) for _, g in groups] == [2, 1]
    assert groups[0][0] == "draft(block_size=4, top_p=0.9)"
    assert stage_signature(recs[2]).endswith("revise(block_size=16)")
    settings = sampler_settings(groups[0][1])
    assert settings["stages"][0]["seeds"] == [1, 2]
    c = costs(groups[0][1])
    assert c["nfe_per_sample"] == 8.5
    assert c["seconds_per_sample"] == pytest.approx(0.6)
    assert c["tokens_per_second"] == pytest.approx(4 / 1.2)
    assert costs(groups[1][1])["seconds_per_sample"] == pytest.approx(0.75)


def test_markdown_and_plot(tmp_path):
    rows = [
        {"name": "a.jsonl", "n": 4, "gen_ppl_corpus": 5.0, "gen_ppl_per_sample_mean": 6.0,
         "entropy_per_sample_mean": 3.5, "nfe_per_sample": 32.0, "seconds_per_sample": 0.1,
         "settings_short": "draft B4", "evaluator": {"kind": "oracle"}, "eos": "skip",
         "oracle_floor_ppl": 3.3},
        {"name": "b.jsonl", "n": 4, "gen_ppl_corpus": 4.0, "gen_ppl_per_sample_mean": 4.5,
         "entropy_per_sample_mean": 3.4, "nfe_per_sample": 40.0, "seconds_per_sample": 0.2,
         "settings_short": "draft B4 · revise B16", "evaluator": {"kind": "oracle"}},
    ]  # fmt: skip
    md = markdown_table(rows)
    lines = md.splitlines()
    assert lines[0].startswith("| file / group | n | Gen PPL (corpus) | Gen PPL (mean/sample)")
    assert "| a.jsonl | 4 | 5.000 | 6.000 | 3.500 | 32.00 |" in md and "entropy in nats" in md
    out = tmp_path / "p.png"
    plot_genppl(rows, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["p.png"]  # no temporary left behind

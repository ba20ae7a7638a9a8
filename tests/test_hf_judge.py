"""Tests for evaluate/hf_judge.py: windows, the transformers judge against the Hugging Face
perplexity guide's loop, batching, text and EOS rules, the `Judge` protocol."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch

from evaluate_helpers import EOT, build_tiny_gpt2, make_record
from sbdcli.config import GenPplOptions
from sbdcli.errors import UserError
from sbdcli.evaluate import Judge, Scores, VocabInfo
from sbdcli.evaluate.hf_judge import HFJudge, windows


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


def test_windows_refuse_bad_context_or_stride():
    with pytest.raises(UserError, match="`context` >= 2 and 1 <= `stride` < `context`"):
        windows(10, 8, 8)


def test_hf_judge_is_a_judge(judge):
    assert isinstance(judge, Judge)
    for name in ("check", "score", "describe", "extras"):
        want = list(inspect.signature(getattr(Judge, name)).parameters)[1:]
        assert list(inspect.signature(getattr(judge, name)).parameters) == want, name
    recs = [make_record([0, 1, 2], text="the cat sat", id="a")]
    judge.check(recs, VocabInfo(0, 0, None, None))
    scores = judge.score(recs)
    assert isinstance(scores, Scores)
    assert scores.ntok.tolist() == [sum(judge.judge_sequence(recs[0])[1])] and scores.ntok[0] > 0
    assert judge.describe()["kind"] == "transformers" and judge.notes == []
    assert judge.extras(recs, GenPplOptions()) == {}

"""Tests for evaluate/metrics.py: entropy, scored positions, Gen PPL aggregation, summaries."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from evaluate_helpers import make_record
from sbdcli.errors import UserError
from sbdcli.evaluate import (
    ENTROPY_OVER,
    Scores,
    VocabInfo,
    entropy_stats,
    gen_ppl,
    scored_mask,
    summarize,
    unigram_entropy,
)
from sbdcli.evaluate.metrics import low_entropy_stats


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


def test_scored_mask_refuses_an_unknown_eos_rule():
    with pytest.raises(UserError, match="`eos` must be one of skip, cut"):
        scored_mask(torch.zeros(1, 3, dtype=torch.long), torch.tensor([1]), [0], "drop")


def test_gen_ppl_corpus_and_per_sample_mean_differ_as_defined():
    out = gen_ppl(np.array([2.0, 12.0, 0.0]), np.array([2, 4, 0]))
    assert out["nll_per_token"] == pytest.approx(14 / 6)
    assert out["gen_ppl_corpus"] == pytest.approx(math.exp(14 / 6))
    assert out["gen_ppl_per_sample_mean"] == pytest.approx((math.e + math.exp(3)) / 2)
    assert out["n_scored"] == 2 and out["tokens_scored"] == 6


def test_summarize_holds_every_number_and_no_nan():
    recs = [make_record([9, 1, 2, 9]), make_record([9, 9, 9, 9])]  # the second has nothing scored
    scores = Scores(np.array([3.0, 0.0]), np.array([2, 0]), ["a note"])
    out = summarize(recs, scores, VocabInfo(9, 9, None, None), "skip", {"kind": "test"})
    assert out["evaluator"] == {"kind": "test"} and out["n"] == 2 and out["eos"] == "skip"
    assert out["nll_per_token"] == pytest.approx(1.5) and out["tokens_scored"] == 2
    assert out["entropy_per_sample_mean"] == pytest.approx(math.log(2))
    assert out["entropy_over"] == ENTROPY_OVER and out["notes"] == ["a note"]
    assert out["seconds_per_sample"] is None and out["settings_short"] == "draft B4"
    empty = summarize(recs[1:], Scores(np.zeros(1), np.zeros(1)), VocabInfo(9, 9, None, None),
                      "skip", {})  # fmt: skip
    assert empty["gen_ppl_corpus"] is None and "notes" not in empty  # NaN -> None (JSON)


def test_both_gen_ppl_averagings_on_three_records_by_hand():
    """Per-sample perplexities 2, 4 and 10 over 2, 4 and 1 scored tokens (nats summed).

    Per-sample mean (BD3-LM/MDLM: each sample's exp(mean NLL), averaged; bd3lms metrics.py
    `record_generative_perplexity` at eval batch size 1 and scripts/log_sample_stats.py,
    commit 1c3e8f43d88dfbcee5ff2aa6932a9e74b31ae1d7): (2 + 4 + 10) / 3.
    Corpus (token-weighted): exp(total NLL / 7) = (2^2 4^4 10)^(1/7).
    """
    bos = eos = 9
    recs = [make_record([bos, 1, 2]), make_record([bos, 1, eos, 2, 3, 4]),
            make_record([bos, 5])]  # fmt: skip
    nll = np.array([2 * math.log(2), 4 * math.log(4), math.log(10)])
    out = summarize(recs, Scores(nll, np.array([2, 4, 1])), VocabInfo(bos, eos, None, None),
                    "skip", {"kind": "test"})  # fmt: skip
    assert out["gen_ppl_per_sample_mean"] == pytest.approx(16 / 3, rel=1e-12)
    assert out["gen_ppl_corpus"] == pytest.approx((4 * 256 * 10) ** (1 / 7), rel=1e-12)
    assert out["nll_per_token"] == pytest.approx(math.log(10240) / 7, rel=1e-12)
    assert out["n_scored"] == 3 and out["tokens_scored"] == 7
    assert "n_low_entropy" not in out  # no threshold given


def test_low_entropy_count_checks_only_samples_longer_than_the_window():
    recs = [make_record([9, 1, 1, 1, 1, 1]),  # tail [1]*4: H = 0
            make_record([9, 1, 2, 3, 4, 5]),  # tail 2..5: H = log 4
            make_record([9, 1, 1])]  # 3 tokens: not longer than the window  # fmt: skip
    out = low_entropy_stats(recs, threshold=1.0, window=4)
    assert out == {"low_entropy": 1.0, "low_entropy_window": 4, "n_low_entropy": 1,
                   "n_low_entropy_checked": 2}  # fmt: skip
    assert low_entropy_stats(recs, threshold=2.0, window=4)["n_low_entropy"] == 2
    summary = summarize(recs, Scores(np.ones(3), np.ones(3)), VocabInfo(9, 9, None, None),
                        "skip", {}, (1.0, 4))  # fmt: skip
    assert summary["n_low_entropy"] == 1 and summary["low_entropy_window"] == 4

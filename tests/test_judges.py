"""Tests for evaluate/judges.py: the oracle and block-1 judges against independent
computations, their refusals, and the `Judge` protocol they implement."""

from __future__ import annotations

import inspect
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from evaluate_helpers import make_record, make_synth_run, stepwise_causal_logprobs, tiny_denoiser
from sbdcli.config import GenPplOptions
from sbdcli.errors import UserError
from sbdcli.evaluate import (
    Judge,
    OracleJudge,
    SbdJudge,
    Scores,
    VocabInfo,
    evaluate_sets,
    scored_mask,
)


@pytest.fixture(scope="module")
def synth_run(tmp_path_factory) -> Path:
    return make_synth_run(tmp_path_factory.mktemp("run"))


def assert_implements_judge(judge) -> None:
    """isinstance against the runtime protocol, and the protocol's parameters by name."""
    assert isinstance(judge, Judge)
    for name in ("check", "score", "describe", "extras"):
        want = list(inspect.signature(getattr(Judge, name)).parameters)[1:]
        assert list(inspect.signature(getattr(judge, name)).parameters) == want, name


# ----------------------------------------------------------------------------- oracle
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


def test_oracle_judge_is_a_judge(synth_run):
    from sbdcli.data.synthetic import load_oracle

    j = OracleJudge(synth_run / "data", {})
    assert_implements_judge(j)
    rows = load_oracle(synth_run / "data").sample(3, 16, torch.Generator().manual_seed(0))
    recs = [make_record(r.tolist(), id=str(i)) for i, r in enumerate(rows)]
    j.check(recs, VocabInfo(None, None, None, None))
    scores = j.score(recs)
    assert isinstance(scores, Scores) and scores.ntok.tolist() == [15, 15, 15]
    assert j.describe()["kind"] == "oracle" and j.notes == []
    extras = j.extras(recs, GenPplOptions(floor_samples=32, seed=1))
    assert extras == j.floor(16, 32, 1)


# ----------------------------------------------------------------------------- sbd judge
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
    scores = judge.score(recs)  # eos "skip" by default
    mask = scored_mask(x0, torch.tensor([1, 4, 1]), [10], "skip")[:, 1:]
    np.testing.assert_allclose(scores.nll, (-(ref * mask)).sum(1).numpy(), rtol=1e-5)
    assert scores.ntok.tolist() == [15, 12, 14]
    judge.eos = "cut"
    cut = judge.score(recs)
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


def test_sbd_judge_is_a_judge():
    judge = SbdJudge(tiny_denoiser(), VocabInfo(10, 10, 11, 12), blocks=[1], batch_size=2)
    assert_implements_judge(judge)
    recs = [make_record([10, 1, 2, 3], id="a"), make_record([10, 4, 5, 6], id="b")]
    judge.check(recs, VocabInfo(10, 10, 11, 12))
    scores = judge.score(recs)
    assert isinstance(scores, Scores) and scores.ntok.tolist() == [3, 3]
    assert judge.describe()["kind"] == "sbd-block1" and judge.notes == []  # a block-1 run
    assert judge.extras(recs, GenPplOptions()) == {}

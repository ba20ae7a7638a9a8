"""Tests for pipeline/plans.py: stage parsing and the K-stage schedule equal to chained stages."""

from __future__ import annotations

import pytest

from fake_model import FakeDenoiser, one_thread  # noqa: F401 (autouse fixture)
from sbdcli import pipeline as pl
from sbdcli.diffusion import sampler as sp
from sbdcli.errors import UserError


def test_parse_stages():
    assert pl.parse_stages("4,full", "0.25") == (4, [(0.25, 0)])
    assert pl.parse_stages("4,64,full", "0.5") == (4, [(0.5, 64), (0.5, 0)])
    assert pl.parse_stages("4,64,full", "0.5,0.25") == (4, [(0.5, 64), (0.25, 0)])


@pytest.mark.parametrize(
    ("stages", "gammas", "message"),
    [
        ("", "0.25", "--stages needs at least the draft block size"),
        ("4,full,full", "0.1,0.2,0.3", "--gammas needs 2 values"),
        ("4,full", "x", "--gammas must be numbers"),
        ("full,full", "0.25", "the draft block"),
        ("4,x", "0.25", "block size must be an integer or 'full'"),
        ("4,0", "0.25", "block size must be >= 1"),
    ],
)
def test_parse_stages_errors(stages, gammas, message):
    with pytest.raises(UserError, match=message):
        pl.parse_stages(stages, gammas)


def test_generate_equals_chained_stages_and_counts_calls():
    ref = pl.ModelRef(FakeDenoiser(seq_len=32, seed=5), "fake", "000000000000")
    prompts = [pl.Prompt(f"s0-{i}", [ref.model.config.bos_id]) for i in range(3)]
    draft_cfg, rev_cfg = sp.SamplerConfig(block_size=4), sp.SamplerConfig(block_size=8)
    plan = [
        pl.StagePlan(pl.RemaskConfig(gamma=0.5, seed=1), rev_cfg, 1),
        pl.StagePlan(
            pl.RemaskConfig(gamma=0.25, strategy="masked", passes=3, seed=1),
            sp.SamplerConfig(block_size=0),
            1,
        ),
    ]
    got = pl.generate_batch(ref, prompts, 32, draft_cfg, 0, plan)
    recs = pl.draft_batch(ref, prompts, 32, draft_cfg, 0)
    for stage in plan:  # one record at a time: results do not depend on the batch
        recs = [pl.remask_batch([r], stage.remask, ref)[0] for r in recs]
        recs = [pl.revise_batch([r], ref, stage.revise, stage.seed)[0] for r in recs]
    strip = lambda rs: [  # noqa: E731
        {
            **r,
            "stages": [
                {k: v for k, v in s.items() if k not in ("seconds", "batch_size")}
                for s in r["stages"]
            ],
        }
        for r in rs
    ]
    assert strip(got) == strip(recs)
    for r in got:
        names = [s["name"] for s in r["stages"]]
        assert names == ["draft", "remask", "revise", "remask", "revise"]
        assert r["nfe"] == sum(s["nfe"] for s in r["stages"])
        assert r["stages"][3]["nfe"] == 3  # masked strategy: k calls
        assert r["stages"][2]["n_masked"] == 15 and r["stages"][4]["n_masked"] == 7

"""Tests for pipeline.py: stage parsing, the K-stage schedule equal to chained stages, and a
quality smoke check on a briefly trained model of a small topic-markov language."""

from __future__ import annotations

import pytest
import torch

from fake_model import FakeDenoiser, one_thread  # noqa: F401 (autouse fixture)
from sbdcli import pipeline as pl
from sbdcli.config import ModelConfig
from sbdcli.data.synthetic import TopicMarkovSpec, build_oracle
from sbdcli.diffusion import sampler as sp
from sbdcli.diffusion.loss import block_nelbo
from sbdcli.model import Denoiser


def test_parse_stages():
    assert pl.parse_stages("4,full", "0.25") == (4, [(0.25, 0)])
    assert pl.parse_stages("4,64,full", "0.5") == (4, [(0.5, 64), (0.5, 0)])
    assert pl.parse_stages("4,64,full", "0.5,0.25") == (4, [(0.5, 64), (0.25, 0)])


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


def train_tiny(oracle, length: int, steps: int) -> Denoiser:
    """A 2-layer d-64 denoiser trained briefly with mix-scale (B = 4 or L, 30% global)."""
    gen = torch.Generator().manual_seed(1)
    data = oracle.sample(2048, length, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    v = oracle.vocab
    cfg = ModelConfig(
        vocab_size=v + 2,
        mask_id=v + 1,
        seq_len=length,
        n_layers=2,
        d_model=64,
        n_heads=4,
        cond_dim=32,
        dropout=0.0,
        bos_id=v,
    )
    model = Denoiser(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(steps):
        rows = data[torch.randint(0, len(data), (64,), generator=gen)]
        block = length if torch.rand(1, generator=gen).item() < 0.3 else 4
        loss = block_nelbo(model, rows, block, generator=gen).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.mark.slow
def test_snapshot_revision_lowers_oracle_nll_of_a_trained_model():
    """Smoke check (fixed seeds): draft 2 tokens/call, snapshot remask 0.25, full revise."""
    length = 32
    oracle = build_oracle(TopicMarkovSpec(vocab=16, topics=4, fanout=3), seed=0)
    ref = pl.ModelRef(train_tiny(oracle, length, steps=150), "tiny", "000000000000")
    prompts = [pl.Prompt(f"s0-{i}", [16]) for i in range(48)]
    draft = pl.draft_batch(ref, prompts, length, sp.SamplerConfig(4, steps_per_block=2), 0)
    masked = pl.remask_batch(draft, pl.RemaskConfig(gamma=0.25), ref)
    revised = pl.revise_batch(masked, ref, sp.SamplerConfig(block_size=0), seed=0)

    def nll(recs: list[dict]) -> float:
        tokens = torch.tensor([r["tokens"] for r in recs])
        return float(-oracle.log_likelihood(tokens).mean()) / (length - 1)

    assert nll(revised) < nll(draft) - 0.1, (nll(draft), nll(revised))

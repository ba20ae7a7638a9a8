"""Tests for pipeline/stages.py: the stage entries and fields each stage writes, validation of
records read back, and a quality smoke check on a briefly trained model of a small
topic-markov language."""

from __future__ import annotations

import pytest
import torch

from fake_model import FakeDenoiser, one_thread  # noqa: F401 (autouse fixture)
from sbdcli import pipeline as pl
from sbdcli.config import ModelConfig
from sbdcli.data.synthetic import TopicMarkovSpec, build_oracle
from sbdcli.diffusion import sampler as sp
from sbdcli.diffusion.loss import block_nelbo
from sbdcli.errors import UserError
from sbdcli.model import Denoiser

DRAFT_KEYS = ["name", "block_size", "length", "steps_per_block", "first_hitting", "top_p",
              "temperature", "dtype", "unmask", "kv_cache", "seed", "model", "vocab_size",
              "mask_id", "bos_id", "n_records", "batch_size", "nfe", "seconds"]  # fmt: skip
REVISE_KEYS = ["name", "block", "block_size", "steps_per_block", "first_hitting", "top_p",
               "temperature", "dtype", "unmask", "kv_cache", "seed", "n_masked", "model",
               "batch_size", "nfe", "seconds"]  # fmt: skip
RECORD_KEYS = ["id", "tokens", "confidence", "confidence_nucleus", "step", "masked",
               "prompt_len", "nfe", "stages", "text", "model"]  # fmt: skip


def fake_ref(eos_id: int | None = None) -> pl.ModelRef:
    return pl.ModelRef(FakeDenoiser(seq_len=16, seed=3, eos_id=eos_id), "fake", "000000000000")


def bos_prompts(ref: pl.ModelRef, n: int) -> list[pl.Prompt]:
    return [pl.Prompt(f"s0-{i}", [ref.model.config.bos_id]) for i in range(n)]


def test_batched():
    assert list(pl.batched(range(5), 2)) == [[0, 1], [2, 3], [4]]
    assert list(pl.batched([], 3)) == []


def test_draft_record_fields_and_stage_entry():
    ref = fake_ref()
    recs = pl.draft_batch(ref, bos_prompts(ref, 2), 12, sp.SamplerConfig(block_size=4), 7)
    for rec in recs:
        assert list(rec) == RECORD_KEYS
        assert len(rec["tokens"]) == len(rec["confidence_nucleus"]) == len(rec["step"]) == 12
        assert (
            rec["masked"] == [] and rec["prompt_len"] == 1 and rec["model"] == "fake@000000000000"
        )
        (stage,) = rec["stages"]
        assert list(stage) == DRAFT_KEYS
        assert stage["seed"] == 7 and stage["batch_size"] == 2 and stage["block_size"] == 4
        assert stage["nfe"] == rec["nfe"] == 11  # one token per call, BOS given


def test_draft_stop_at_eos():
    ref = fake_ref(eos_id=7)
    recs = pl.draft_batch(ref, bos_prompts(ref, 4), 16, sp.SamplerConfig(4), 0, stop_at_eos=True)
    stops = sorted(r["stop"] for r in recs)
    assert stops[0] == -1 and stops[-1] >= 0  # with these seeds some stop, one does not
    for rec in recs:
        assert list(rec) == [*RECORD_KEYS, "stop"]
        if rec["stop"] >= 0:
            assert rec["stop"] == len(rec["tokens"]) - 1 and rec["tokens"][-1] == 7
        else:
            assert len(rec["tokens"]) == 16 and 7 not in rec["tokens"][1:]
    with pytest.raises(UserError, match="no EOS token"):
        pl.draft_batch(fake_ref(), bos_prompts(ref, 1), 8, sp.SamplerConfig(4), 0, stop_at_eos=True)


def test_remask_stage_entry_names_a_model_only_when_it_used_one():
    ref = fake_ref()
    draft = pl.draft_batch(ref, bos_prompts(ref, 2), 12, sp.SamplerConfig(block_size=4), 0)
    snap = pl.remask_batch(draft, pl.RemaskConfig(gamma=0.5))
    assert list(snap[0]["stages"][1]) == [
        "name", "strategy", "gamma", "scope", "threshold", "seed", "n_masked", "nfe", "seconds"
    ]  # fmt: skip
    masked = pl.remask_batch(draft, pl.RemaskConfig(gamma=0.5, strategy="masked", passes=2), ref)
    stage = masked[0]["stages"][1]
    assert stage["passes"] == 2 and stage["model"] == ref.id and stage["nfe"] == 2
    for rec in snap:
        assert rec["tokens"] == draft[0 if rec["id"] == "s0-0" else 1]["tokens"]
        assert len(rec["masked"]) == 5 and rec["stages"][1]["n_masked"] == 5
        assert rec["scores"][0] == 1.0 and list(rec)[-1] == "scores"  # BOS: not eligible
    with pytest.raises(UserError, match="strategy needs a model"):
        pl.remask_batch(draft, pl.RemaskConfig(gamma=0.5, strategy="posthoc"))


def test_revise_writes_its_counts_into_the_stage_entry_only():
    ref = fake_ref()
    draft = pl.draft_batch(ref, bos_prompts(ref, 3), 12, sp.SamplerConfig(block_size=4), 0)
    draft[2] = {**draft[2], "tokens": draft[2]["tokens"][:10]}  # another length: another group
    for key in ("confidence", "confidence_nucleus", "step"):
        draft[2][key] = draft[2][key][:10]
    masked = pl.remask_batch(draft, pl.RemaskConfig(gamma=0.3), ref)
    revised = pl.revise_batch(masked, ref, sp.SamplerConfig(block_size=0), 1)
    assert [r["id"] for r in revised] == ["s0-0", "s0-1", "s0-2"]
    for before, rec in zip(masked, revised, strict=True):
        assert list(rec) == [*RECORD_KEYS, "scores"]  # no bookkeeping keys left behind
        stage = rec["stages"][-1]
        assert list(stage) == REVISE_KEYS
        assert stage["n_masked"] == len(before["masked"]) and stage["block"] == "full"
        assert stage["block_size"] == len(rec["tokens"]) and stage["batch_size"] == 3
        assert rec["nfe"] == before["nfe"] + stage["nfe"] and rec["masked"] == []
        kept = [i for i in range(len(rec["tokens"])) if i not in before["masked"]]
        assert [rec["tokens"][i] for i in kept] == [before["tokens"][i] for i in kept]
        assert all(rec["step"][i] > before["nfe"] for i in before["masked"])


def test_check_records_validates_and_fills_optional_fields():
    ref = fake_ref()
    rec = pl.draft_batch(ref, bos_prompts(ref, 1), 8, sp.SamplerConfig(block_size=4), 0)[0]
    del rec["confidence_nucleus"]
    rec["step"] = [1]
    (checked,) = pl.check_records([rec], ref)
    assert checked["confidence_nucleus"] == checked["confidence"]
    assert checked["step"] == [0] * 8
    bad = {**rec, "tokens": [99] * 8}
    with pytest.raises(UserError, match="record 5 .*outside the vocabulary"):
        pl.check_records([bad], ref, first_index=5)
    assert pl.check_records([bad], None)  # no model: no vocabulary to check against


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

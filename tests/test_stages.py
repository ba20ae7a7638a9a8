"""Tests for pipeline/stages.py: the stage entries and fields each stage writes, validation of
records read back, and a quality smoke check on a briefly trained model of a small
topic-markov language."""

from __future__ import annotations

import pytest
import torch

from fake_model import FakeDenoiser, one_thread  # noqa: F401 (autouse fixture)
from sbdcli import pipeline as pl
from sbdcli.config import FixedSteps, ModelConfig, RedrawConfig
from sbdcli.data.synthetic import TopicMarkovSpec, build_oracle
from sbdcli.diffusion import sampler as sp
from sbdcli.diffusion.degenerate import is_degenerate
from sbdcli.diffusion.loss import block_nelbo
from sbdcli.errors import UserError
from sbdcli.model import Denoiser

DRAFT_KEYS = ["name", "block_size", "length", "steps_per_block", "first_hitting", "threshold",
              "schedule", "top_p", "temperature", "dtype", "unmask", "kv_cache", "cache",
              "refresh", "compile", "seed", "model", "vocab_size", "mask_id", "bos_id",
              "n_records", "batch_size", "nfe", "seconds"]  # fmt: skip
REVISE_KEYS = ["name", "block", "block_size", "steps_per_block", "first_hitting", "threshold",
               "schedule", "top_p", "temperature", "dtype", "unmask", "kv_cache", "cache",
               "refresh", "compile", "seed", "n_masked", "positions", "replaced",
               "replaced_confidence", "model", "batch_size", "nfe", "seconds"]  # fmt: skip
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
        assert stage["positions"] == before["masked"]  # what it replaced: sbd show's diff
        assert stage["replaced"] == [before["tokens"][i] for i in before["masked"]]
        assert stage["replaced_confidence"] == [before["confidence"][i] for i in before["masked"]]
        assert stage["block_size"] == len(rec["tokens"]) and stage["batch_size"] == 3
        assert rec["nfe"] == before["nfe"] + stage["nfe"] and rec["masked"] == []
        kept = [i for i in range(len(rec["tokens"])) if i not in before["masked"]]
        assert [rec["tokens"][i] for i in kept] == [before["tokens"][i] for i in kept]
        assert all(rec["step"][i] > before["nfe"] for i in before["masked"])


def test_per_record_seeds_give_each_record_what_its_own_seed_gives_it():
    ref = fake_ref()
    prompts, cfg = bos_prompts(ref, 3), sp.SamplerConfig(block_size=4)
    remask = pl.RemaskConfig(gamma=0.4, strategy="random")

    def chain(seeds: list[int]) -> list[dict]:
        draft = pl.draft_batch(ref, prompts, 12, cfg, seeds)
        masked = pl.remask_batch(draft, remask, ref, seeds)
        return pl.revise_batch(masked, ref, sp.SamplerConfig(block_size=0), seeds)

    seeds = [5, 6, 5]
    mixed = chain(seeds)
    for z in set(seeds):
        alone = chain([z] * 3)
        for rec, own, seed in zip(mixed, alone, seeds, strict=True):
            if seed == z:
                assert [s["seed"] for s in rec["stages"]] == [z, z, z]
                assert {**rec, "stages": None} == {**own, "stages": None}
    assert mixed[0]["tokens"] != mixed[1]["tokens"]
    one, each = (
        pl.draft_batch(ref, prompts, 12, cfg, 5),
        pl.draft_batch(ref, prompts, 12, cfg, [5] * 3),
    )
    for a, b in zip(one, each, strict=True):
        assert {**a["stages"][0], "seconds": 0} == {**b["stages"][0], "seconds": 0}
        assert {**a, "stages": None} == {**b, "stages": None}
    with pytest.raises(ValueError, match="2 seeds for 3 records"):
        pl.draft_batch(ref, prompts, 12, cfg, [1, 2])


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
    draft = pl.draft_batch(ref, prompts, length, sp.SamplerConfig(4, FixedSteps(2)), 0)
    masked = pl.remask_batch(draft, pl.RemaskConfig(gamma=0.25), ref)
    revised = pl.revise_batch(masked, ref, sp.SamplerConfig(block_size=0), seed=0)

    def nll(recs: list[dict]) -> float:
        tokens = torch.tensor([r["tokens"] for r in recs])
        return float(-oracle.log_likelihood(tokens).mean()) / (length - 1)

    assert nll(revised) < nll(draft) - 0.1, (nll(draft), nll(revised))


# --------------------------------------------------------------------------- redraw
REDRAW_KEYS = ["redraw_low_entropy", "redraw_window", "redraw_attempts", "redraws",
               "redraw_nfe"]  # fmt: skip


def redraw_cfg(h: float, attempts: int = 10) -> RedrawConfig:
    return RedrawConfig(redraw_low_entropy=h, redraw_window=8, redraw_attempts=attempts)


def test_draft_without_redraw_records_no_redraw_keys():
    ref = fake_ref()
    (rec,) = pl.draft_batch(ref, bos_prompts(ref, 1), 16, sp.SamplerConfig(4), 7)
    assert not set(REDRAW_KEYS) & set(rec["stages"][0])


def test_redraw_threshold_zero_keeps_every_first_draft():
    ref = fake_ref()
    plain = pl.draft_batch(ref, bos_prompts(ref, 3), 16, sp.SamplerConfig(4), 7)
    kept = pl.draft_batch(ref, bos_prompts(ref, 3), 16, sp.SamplerConfig(4), 7,
                          redraw=redraw_cfg(0.0))  # fmt: skip
    for a, b in zip(plain, kept, strict=True):
        stage = b["stages"][0]
        assert a["tokens"] == b["tokens"] and list(stage)[-7:-2] == REDRAW_KEYS
        assert (stage["redraw_low_entropy"], stage["redraw_window"]) == (0.0, 8)
        assert stage["redraw_attempts"] == 10
        assert stage["redraws"] == stage["redraw_nfe"] == 0 and "low_entropy" not in stage


def test_redraw_forced_by_a_high_threshold_uses_every_attempt_and_flags_the_record():
    ref = fake_ref()
    recs = pl.draft_batch(ref, bos_prompts(ref, 2), 16, sp.SamplerConfig(4), 7,
                          redraw=redraw_cfg(100.0, attempts=3))  # fmt: skip
    for rec in recs:
        stage = rec["stages"][0]
        assert stage["redraws"] == 2 and stage["low_entropy"] is True
        assert stage["redraw_nfe"] == 2 * 15 and rec["nfe"] == stage["nfe"] == 3 * 15


def test_redraw_continues_the_records_own_generator():
    """A record redrawn once holds the second draft of its own (seed, id) generator."""
    ref = fake_ref()
    prompts, cfg = bos_prompts(ref, 8), sp.SamplerConfig(4)
    recs = pl.draft_batch(ref, prompts, 16, cfg, 7, redraw=redraw_cfg(1.6))
    once = [i for i, r in enumerate(recs) if r["stages"][0]["redraws"] == 1]
    assert once, "the threshold should make some record redraw exactly once"
    for i in once:
        gen = sp.make_generator(7, "draft", 0, prompts[i].id)
        sp.draft(ref.model, [prompts[i].tokens], 16, cfg, [gen])
        second = sp.draft(ref.model, [prompts[i].tokens], 16, cfg, [gen])
        assert recs[i]["tokens"] == second.tokens[0].tolist()
        assert not is_degenerate(recs[i]["tokens"], 1.6, 8, 4)


def test_redraw_is_batch_invariant():
    ref = fake_ref()
    prompts, cfg, redraw = bos_prompts(ref, 8), sp.SamplerConfig(4), redraw_cfg(1.6)
    together = pl.draft_batch(ref, prompts, 16, cfg, 7, redraw=redraw)
    alone = [pl.draft_batch(ref, [p], 16, cfg, 7, redraw=redraw)[0] for p in prompts]
    counts = [r["stages"][0]["redraws"] for r in together]
    assert len(set(counts)) > 1  # some records redraw more often than others
    for a, b in zip(together, alone, strict=True):
        assert a["tokens"] == b["tokens"] and a["nfe"] == b["nfe"]
        assert a["stages"][0]["redraws"] == b["stages"][0]["redraws"]


@pytest.mark.parametrize("kwargs", [{"redraw_low_entropy": -0.5},
                                    {"redraw_low_entropy": float("nan")},
                                    {"redraw_window": 0}, {"redraw_attempts": 0}])  # fmt: skip
def test_redraw_config_refuses_bad_values(kwargs):
    with pytest.raises(UserError, match="`redraw_"):
        RedrawConfig(**kwargs)


def test_records_of_one_redrawn_draft_stay_one_draft_and_one_group():
    from sbdcli.artifacts.records import DraftTally
    from sbdcli.evaluate.grouping import group_records

    ref = fake_ref()
    recs = pl.draft_batch(ref, bos_prompts(ref, 8), 16, sp.SamplerConfig(4), 7,
                          redraw=redraw_cfg(1.6, attempts=3))  # fmt: skip
    assert len({r["stages"][0]["redraws"] for r in recs}) > 1
    assert any("low_entropy" in r["stages"][0] for r in recs)
    tally = DraftTally()
    for rec in recs:
        tally.add(rec)
    assert tally.shortfall() is None and tally.declared() == 8
    assert len(group_records(recs)) == 1

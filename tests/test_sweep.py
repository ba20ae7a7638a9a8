"""Tests for pipeline/sweep.py: whole sample sets and the reuse of finished files."""

from __future__ import annotations

from fake_model import FakeDenoiser, one_thread  # noqa: F401 (autouse fixture)
from sbdcli import pipeline as pl
from sbdcli.artifacts import read_records, write_records
from sbdcli.config import FixedSteps, RemaskConfig, SamplerConfig


def fake_ref() -> pl.ModelRef:
    return pl.ModelRef(FakeDenoiser(seq_len=16, seed=3), "fake", "000000000000")


def test_a_set_in_batches_is_the_set_in_one_batch():
    ref, cfg = fake_ref(), SamplerConfig(block_size=4, reveal=FixedSteps(2))
    whole = pl.draft_set(ref, 5, 1, cfg, batch=5)
    parts = pl.draft_set(ref, 5, 1, cfg, batch=2)
    assert [r["tokens"] for r in parts] == [r["tokens"] for r in whole]
    assert {r["stages"][0]["n_records"] for r in parts} == {5}
    assert [r["stages"][0]["batch_size"] for r in parts] == [2, 2, 2, 2, 1]


def test_revise_set_remasks_and_revises_every_draft_and_keeps_the_drafts():
    ref = fake_ref()
    drafts = pl.draft_set(ref, 3, 0, SamplerConfig(block_size=4))
    before = [dict(r) for r in drafts]
    rcfg = RemaskConfig(gamma=0.5, strategy="snapshot", seed=0)
    revised = pl.revise_set(ref, drafts, rcfg, SamplerConfig(block_size=0), 0, batch=2)
    assert [[s["name"] for s in r["stages"]] for r in revised] == [
        ["draft", "remask", "revise"]
    ] * 3
    assert [r["id"] for r in revised] == [r["id"] for r in drafts]
    assert drafts == before  # the caller's drafts are not touched


def test_reuse_or_write_reuses_only_a_finished_file(tmp_path):
    ref, cfg = fake_ref(), SamplerConfig(block_size=4)
    path = tmp_path / "sub" / "draft.jsonl"
    calls: list[int] = []

    def make() -> list:
        calls.append(1)
        return pl.draft_set(ref, 4, 0, cfg)

    first, reused = pl.reuse_or_write(path, 4, make)
    assert not reused and len(list(read_records(str(path)))) == 4
    again, reused = pl.reuse_or_write(path, 4, make)
    assert reused and len(calls) == 1 and again == first
    _, reused = pl.reuse_or_write(path, 4, make, fresh=True)
    assert not reused and len(calls) == 2
    write_records(first[:3], str(path))  # a cut file is redone
    assert pl.finished(path, 4) is None
    _, reused = pl.reuse_or_write(path, 4, make)
    assert not reused and len(calls) == 3


def test_finished_refuses_a_damaged_or_missing_file(tmp_path):
    assert pl.finished(tmp_path / "none.jsonl", 1) is None
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x"\n')
    assert pl.finished(bad, 1) is None

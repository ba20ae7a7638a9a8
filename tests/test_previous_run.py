"""A run directory written by the previous version (tests/fixtures/run-v0) still works:
it loads through the public API, drafts the same records and resumes to the same losses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import sbdcli
from sbdcli import config
from sbdcli.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "run-v0"
SHRUNK_TINY = {"n_layers": 1, "d_model": 16, "n_heads": 2, "cond_dim": 8, "dropout": 0.0}
"""The preset the fixture was trained with (a resume rebuilds the model from its preset)."""


def run(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code in (0, None), f"sbd {' '.join(argv)} exited {info.value.code}"


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x]


def test_load_model_reads_the_old_run():
    model = sbdcli.load_model(str(FIXTURE / "run"))
    assert model.config.d_model == 16 and model.config.seq_len == 16
    assert not model.training


def test_draft_from_the_old_run_gives_the_old_records(tmp_path):
    out = tmp_path / "draft.jsonl"
    argv = ["draft", "-m", str(FIXTURE / "run"), "-n", "3", "--seed", "3", "--device", "cpu"]
    run([*argv, "-o", str(out)])
    for new, old in zip(lines(out), lines(FIXTURE / "draft.jsonl"), strict=True):
        assert new["tokens"] == old["tokens"]
        assert new["confidence"] == pytest.approx(old["confidence"], rel=1e-6)
        assert new["text"] == old["text"] and new["nfe"] == old["nfe"]


def test_resume_of_the_old_run_continues_to_the_same_losses(tmp_path, monkeypatch):
    monkeypatch.setitem(config.PRESETS, "tiny", SHRUNK_TINY)
    rundir = tmp_path / "run"
    shutil.copytree(FIXTURE / "run", rundir)
    data = FIXTURE / "data"
    run(["train", "--resume", "--out", str(rundir), "--data", str(data), "--steps", "6"])
    got, want = lines(rundir / "metrics.jsonl"), lines(FIXTURE / "resumed-metrics.jsonl")
    assert [m["step"] for m in got] == [m["step"] for m in want] == [1, 2, 3, 4, 5, 6]
    for g, w in zip(got, want, strict=True):
        assert g["loss"] == pytest.approx(w["loss"], rel=1e-5)
        assert g["block_size"] == w["block_size"]

"""Tests for demo.py and `sbd demo`: the quick demo checks its own outputs."""

from __future__ import annotations

import json
import math

import pytest

from sbdcli import artifacts
from sbdcli.cli import main
from sbdcli.config import DEMO_GAMMAS as GAMMAS
from sbdcli.config import REMASK_STRATEGIES as STRATEGIES
from sbdcli.config import DemoConfig
from sbdcli.demo import run_demo

SAMPLES = 6


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    cfg = DemoConfig(out=out, quick=True, steps=24, samples=SAMPLES)
    messages: list[str] = []
    rows = run_demo(cfg, log=messages.append)
    return cfg, rows, messages


def test_every_setting_has_n_samples_and_finite_numbers(demo_run):
    cfg, rows, _ = demo_run
    settings = {(r["strategy"], r["gamma"]) for r in rows if r["stage"] == "revise"}
    assert settings == {(s, g) for s in STRATEGIES for g in GAMMAS}
    assert [r["stage"] for r in rows].count("draft") == 1
    for row in rows:
        assert row["n"] == SAMPLES
        for key in ("gen_ppl_corpus", "entropy_per_sample_mean", "nfe_per_sample"):
            assert math.isfinite(row[key]), (row["name"], key)
        assert row["oracle_floor_ppl"] < row["gen_ppl_corpus"]
    assert json.loads((cfg.out / "results.json").read_text()) == rows
    table = (cfg.out / "results.md").read_text()
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(lines) == len(rows) + 1  # header + one line per setting
    assert (cfg.out / "pareto.png").stat().st_size > 1000


def test_revised_records_carry_their_draft_history(demo_run):
    cfg = demo_run[0]
    drafts = {r["id"]: r for r in artifacts.read_records(str(cfg.out / "draft.jsonl"))}
    path = cfg.out / "revise-snapshot-g0.25.jsonl"
    for rec in artifacts.read_records(str(path)):
        draft = drafts[rec["id"]]
        assert [s["name"] for s in rec["stages"]] == ["draft", "remask", "revise"]
        assert rec["stages"][0] == draft["stages"][0]
        assert rec["nfe"] >= draft["nfe"]
        pairs = zip(rec["tokens"], draft["tokens"], strict=True)
        changed = [i for i, (a, b) in enumerate(pairs) if a != b]
        assert set(changed) <= set(range(draft["prompt_len"], len(draft["tokens"])))
        assert rec["stages"][1]["n_masked"] == math.floor(0.25 * (len(rec["tokens"]) - 1))


def test_rerun_reuses_finished_steps_and_prints_the_table(demo_run, capsys):
    cfg = demo_run[0]
    before = (cfg.out / "draft.jsonl").stat().st_mtime_ns
    argv = ["demo", "--quick", "--out", str(cfg.out), "--steps", "24", "-n", str(SAMPLES)]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    err = capsys.readouterr().err
    assert "reusing the trained model" in err and "Gen PPL" in err
    assert "oracle floor" in err
    assert (cfg.out / "draft.jsonl").stat().st_mtime_ns == before


def test_bad_gamma_is_a_user_error():
    from sbdcli.errors import UserError

    with pytest.raises(UserError, match="gammas"):
        DemoConfig(gammas=(0.5, 1.5))

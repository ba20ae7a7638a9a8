"""Tests for demo.py and `sbd demo`: the quick demo checks its own outputs."""

from __future__ import annotations

import io
import json
import math

import pytest

from sbdcli import artifacts
from sbdcli.cli import main
from sbdcli.config import DEMO_GAMMAS as GAMMAS
from sbdcli.config import REMASK_STRATEGIES as STRATEGIES
from sbdcli.config import DemoConfig
from sbdcli.demo import demo_summary, run_demo

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
    settings = [(r["strategy"], r["gamma"]) for r in rows[1 : 1 + len(STRATEGIES) * len(GAMMAS)]]
    assert settings == [(s, g) for s in STRATEGIES for g in GAMMAS]  # the original rows first
    assert rows[0]["name"] == "draft" and rows[0]["draft"] == "2 calls/block"
    drafts = [r["draft"] for r in rows if r["stage"] == "draft"]
    assert drafts == [f"{c} call{'s' if c > 1 else ''}/block" for c in (2, 1, 3, 4)] + [
        "2 calls/block, confident order"
    ]
    assert rows[-1]["stage"] == "revise" and rows[-1]["draft"] == "4 calls/block"
    for row in rows:
        assert row["n"] == SAMPLES
        for key in ("gen_ppl_corpus", "entropy_per_sample_mean", "nfe_per_sample"):
            assert math.isfinite(row[key]), (row["name"], key)
        assert row["oracle_floor_ppl"] < row["gen_ppl_corpus"]
    assert json.loads((cfg.out / "results.json").read_text()) == rows
    table = (cfg.out / "results.md").read_text()
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(lines) == len(rows) + 1  # header + one line per setting
    assert "\n- Lowest per-sample Gen PPL: " in table and "Matched by NFE" in table
    assert (cfg.out / "pareto.png").stat().st_size > 1000


def test_plain_drafts_cost_one_call_per_block_step(demo_run):
    cfg, rows, _ = demo_run
    plain = {r["draft"]: r["nfe_per_sample"] for r in rows if r["stage"] == "draft"}
    nfe = [plain[f"{c} call{'s' if c > 1 else ''}/block"] for c in (1, 2, 3, 4)]
    assert nfe == sorted(nfe) and len(set(nfe)) == 4
    assert plain["2 calls/block, confident order"] == plain["2 calls/block"]
    conf = next(artifacts.read_records(str(cfg.out / "draft-c2-confident.jsonl")))
    assert conf["stages"][0]["unmask"] == "confident"


def test_the_threshold_revise_revises_the_one_token_per_call_draft(demo_run):
    cfg = demo_run[0]
    drafts = {r["id"]: r for r in artifacts.read_records(str(cfg.out / "draft-c4.jsonl"))}
    (path,) = cfg.out.glob("revise-c4-*.jsonl")
    for rec in artifacts.read_records(str(path)):
        assert rec["stages"][0] == drafts[rec["id"]]["stages"][0]
        revise = rec["stages"][2]
        assert (revise["threshold"], revise["cache"], revise["refresh"]) == (0.5, "approx", 4)


def _row(stage: str, draft: str, ppl: float, nfe: float, strategy: str = "-") -> dict:
    name = f"{stage} {draft} {strategy}"
    return {"stage": stage, "draft": draft, "strategy": strategy, "name": name,
            "gen_ppl_per_sample_mean": ppl, "nfe_per_sample": nfe,
            "seconds_per_sample": nfe / 100, "entropy_per_sample_mean": 3.0}  # fmt: skip


def test_the_summary_says_what_the_rows_say():
    rows = [
        _row("draft", "2 calls/block", 10.0, 64),
        _row("draft", "4 calls/block", 4.0, 128),
        _row("revise", "2 calls/block", 8.0, 70, "snapshot"),  # beats the 64-call draft
        _row("revise", "2 calls/block", 9.0, 120, "random"),  # loses to the 128-call one
    ]
    lines = demo_summary(rows)
    assert lines[0].startswith("Lowest per-sample Gen PPL: draft 4 calls/block")
    assert "The plain draft at 4 calls/block is the best setting at this scale" in lines[1]
    assert "Matched by NFE" in lines[2] and ": 1 of 2 revises have the lower" in lines[2]
    rows[2]["gen_ppl_per_sample_mean"] = 3.0
    lines = demo_summary(rows)
    assert lines[0].startswith("Lowest per-sample Gen PPL: revise 2 calls/block snapshot")
    assert not any("best setting at this scale" in line for line in lines)


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


def test_the_terminal_table_fits_80_columns_and_keeps_every_column_when_wide():
    from rich.console import Console

    from sbdcli.cli.demo import COLUMNS, results_table

    rows = [
        {**_row("draft", "2 calls/block, confident order", 18.76, 64), "gen_ppl_corpus": 12.6},
        {**_row("revise", "4 calls/block", 5.157, 135.1, "snapshot, τ 0.5, approx cache R 4"),
         "gen_ppl_corpus": 4.97, "gamma": 0.25, "entropy_per_sample_mean": 3.391},
    ]  # fmt: skip
    for width, dropped in ((80, ["Gen PPL (corpus)", "strategy", "draft"]), (250, [])):
        table, left_out = results_table(rows, width)
        assert left_out == dropped
        console = Console(width=width, record=True, file=io.StringIO())
        console.print(table)
        lines = console.export_text().splitlines()
        assert max(len(line) for line in lines) <= width
        assert len(lines) == 4 + len(rows) + 2  # title, rules, header; one line a row; caption
        assert ("strategy" in lines[2]) == (width == 250) and len(COLUMNS) == 9

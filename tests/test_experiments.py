"""Smoke test of experiments/ (the study, the sampler frontier, the edit correction) at
tiny budgets.

Every step runs as its user runs it, `python -m experiments.<module> STEP` from the
repository root: prepare a small synthetic language, train the two study models for two
steps, sample the study's whole grid with 2 samples per setting, judge, time and report
it, then the frontier's run and report, and the edit correction (`sbd edit` on corrupted
true samples, 4 texts, one rate, one scorer) and its report, each report written into a
copy of the doc. It
proves the experiments still run against the library; their numbers at this budget mean
nothing and are not checked.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run(module: str, *args: str | Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", f"experiments.{module}", *map(str, args)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("study")
    run("study", "prepare", "--out", out, "--rows", "128")
    for kind in ("mix", "single"):
        run("study", "train", "--out", out, "--model", kind, "--steps", "2")
    return out


def test_the_study_samples_judges_times_and_reports(study, tmp_path):
    doc = tmp_path / "results.md"
    shutil.copy(ROOT / "docs" / "results.md", doc)
    run("study", "sample", "--out", study, "--n", "2", "--batch", "2")
    samples = sorted((study / "synthetic" / "samples").rglob("*.jsonl"))
    assert len(samples) == 6 + 29  # the grid's 6 drafts and their 29 revises, every file
    run("study", "eval", "--out", study, "--n", "2", "--seeds", "0")
    run("study", "timing", "--out", study, "--time-batch", "2")
    run("study", "report", "--out", study, "--doc", doc)
    section = doc.read_text().split("<!-- results:study-synthetic -->")[1]
    assert "training seeds [0]" in section and "At least 2 samples" in section
    assert "### a. Stage 2" in section and "| mix | 0 | 2 |" in section
    assert (tmp_path / "results-frontier-synthetic.png").stat().st_size > 1000
    assert "results:study-shakespeare" in doc.read_text()  # the other sections are kept


def test_the_frontier_runs_and_reports(study, tmp_path):
    doc = tmp_path / "results.md"
    doc.write_text("# Results\n")
    args = ("--out", study, "--seeds", "0", "--n", "2", "--batch", "2", "--time-batch", "2")
    run("frontier", "run", *args, "--repeats", "1")
    text = run("frontier", "report", "--out", study, "--doc", doc)
    assert "## Sampler frontier" in text and "| draft 1 tok/call |" in text
    assert "<!-- results:frontier-synthetic -->" in doc.read_text()


def test_the_edit_correction_runs_and_reports(study, tmp_path):
    doc = tmp_path / "results.md"
    doc.write_text("# Results\n")
    model = study / "synthetic" / "models" / "mix-s0"
    out = tmp_path / "edit"
    run("edit_correction", "run", "--run", model, "--out", out, "--n", "4", "--rhos", "0.1",
        "--scorers", "random")  # fmt: skip
    rows = json.loads((out / "edit-correction.json").read_text())["rows"]
    assert [(r["rho"], r["scorer"], r["gamma"]) for r in rows] == [(0.1, "random", 0.1),
                                                                  (0.1, "random", 0.2)]  # fmt: skip
    assert all(0 <= r["recall"] <= 1 and r["nll_true"] < r["nll_corrupted"] for r in rows)
    run("edit_correction", "report", "--out", out, "--doc", doc, "--notes", "")
    section = doc.read_text().split("<!-- results:edit-correction -->")[1]
    assert "| 0.1 | random | 0.2 |" in section

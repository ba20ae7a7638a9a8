"""The README's quick start (and its self-contained editing line) run as written, and the
test suite's independence of the working directory it leaves behind (`./data`, `./runs`).

The quick-start block is read from README.md and run line by line with bash in a fresh
directory, except `make install` (the suite already runs inside the installed `.venv`,
which the directory links as `./.venv`). The prepare and train lines get tiny budgets
appended (the last value of a flag wins), so the test takes seconds, not minutes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUDGETS = {
    "sbd prepare": "--seq-len 32 --num-train 256 --num-val 16 --oracle-samples 64",
    "sbd train": "--steps 2 --batch-size 4 --val-rows 8 --device cpu",
}
"""Flags appended to the quick start's lines that start with these commands."""
SETUP_ONLY = ("make install",)
"""Quick-start lines the test does not run (the environment is already installed)."""
CWD_SENSITIVE = (
    "tests/test_cli_evaluate.py::test_missing_evaluator_for_non_synthetic_records",
    "tests/test_genppl.py::test_judge_choice_errors_name_the_fields",
)
"""Tests that failed when run from a directory holding the README pipeline's ./data."""


def bash_block(heading: str) -> list[str]:
    """The lines of the first bash block under the README.md section `heading`."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(f"## {heading}") :]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, f"README.md: no bash block under '## {heading}'"
    return [line for line in block.group(1).splitlines() if line.strip()]


def quick_start() -> list[str]:
    """The lines of the first bash block under '## Quick start' in README.md."""
    return bash_block("Quick start")


def with_budget(line: str) -> str:
    """`line` with its tiny budget flags put before its comment."""
    command, hash_, comment = line.partition(" #")
    for start, flags in BUDGETS.items():
        if command.strip().startswith(start):
            command = f"{command.rstrip()} {flags} "
    return f"{command}{hash_}{comment}"


def env() -> dict[str, str]:
    e = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    e.pop("SBD_MODEL", None)
    return e


def test_every_test_runs_in_an_empty_directory_of_its_own():
    cwd = Path.cwd()
    assert cwd.resolve() != ROOT and not any(cwd.iterdir())


@pytest.mark.slow
def test_the_quick_start_runs_as_written_and_leaves_the_tests_unaffected():
    activate = Path(sys.prefix) / "bin" / "activate"
    if not activate.is_file():
        pytest.skip("the tests do not run inside a virtual environment (no bin/activate)")
    lines = quick_start()
    assert any(line.startswith("source .venv/bin/activate") for line in lines)
    work = Path.cwd()
    (work / ".venv").symlink_to(sys.prefix)
    script = [with_budget(line) for line in lines if not line.startswith(SETUP_ONLY)]
    done = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + "\n".join(script)],
        cwd=work, env=env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout.splitlines()
    summary = json.loads(out[0])  # eval genppl into a pipe: its JSON summary
    assert summary["n"] == 64 and summary["evaluator"]["kind"] == "oracle"
    assert summary["group"].startswith("draft B4 ") and "revise Bfull" in summary["group"]
    samples = out[1:]  # sbd show --plain: the three samples alone
    assert len(samples) == 3 and all(s.startswith("w1 w2 w3 w") for s in samples), samples
    assert all(re.fullmatch(r"(w\d+ ?)+", s) for s in samples), samples
    assert os.readlink(work / "runs" / "latest").startswith("tiny-topic-markov-")

    # the README's editing lines that need no file of the reader's, as written, on the
    # model the quick start trained
    lines = [line for line in bash_block("Editing your own text") if line.startswith("echo ")]
    assert lines, "README.md: no self-contained line under '## Editing your own text'"
    edit = subprocess.run(
        ["bash", "-c", "set -euo pipefail\nsource .venv/bin/activate\n" + "\n".join(lines)],
        cwd=work, env=env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert edit.returncode == 0, edit.stderr[-3000:]
    (filled,) = edit.stdout.splitlines()
    assert re.fullmatch(r"w3( w\d+){2} w4 w5 w\d+ w6", filled), filled

    # the ./data and ./runs it made change no test result (they did before every test
    # got its own working directory)
    tests = [str(ROOT / t) for t in CWD_SENSITIVE]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        cwd=work, env=env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:]
    assert f"{len(CWD_SENSITIVE)} passed" in run.stdout

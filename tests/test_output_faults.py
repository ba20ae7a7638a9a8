"""Output-side failures are user errors: a full disk or a file-size limit (RLIMIT_FSIZE in a
subprocess), stdout on a full disk, a checkpoint that does not fit; an output path that is a
directory or lies under a file, refused before any work. Each case exits 2 with one stderr line
and no traceback, leaves the previous output unchanged and no temporary beside it."""

from __future__ import annotations

import hashlib
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from test_cli_sample import make_run

SBD = [sys.executable, "-m", "sbdcli"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("outfaults")
    make_run(root)
    records = subprocess.run([*SBD, "draft", "-n", "4", "--device", "cpu"], cwd=root,
                             env=_env(), capture_output=True, text=True, check=True)  # fmt: skip
    (root / "drafts.jsonl").write_text(records.stdout)
    return root


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("SBD_MODEL", None)
    return env


def _limit(size: int):
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))


CASES = {
    "draft -o over the size limit": (["draft", "-n", "16", "-o", "{out}"], "out.jsonl", 3000),
    "draft bundle over the limit": (["draft", "-n", "4", "-o", "{out}"], "out.safetensors", 1000),
    "remask -o over the limit": (
        ["remask", "--gamma", "0.5", "-i", "drafts.jsonl", "-o", "{out}"], "out.jsonl", 1500),
    "eval --out over the limit": (
        ["eval", "genppl", "drafts.jsonl", "-e", "runs/r1", "--out", "{out}"], "sum.jsonl", 300),
    "prepare over the limit": (
        ["prepare", "--out", "{out}", "--num-train", "4096", "--seq-len", "64"], "data2", 20000),
}  # fmt: skip


def _only_line(stderr: str, after_report: bool = False) -> str:
    """The one error line; `after_report`: eval prints its table before writing --out."""
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr, stderr
    errors = [line for line in lines if "sbd: error" in line]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr
    assert after_report or len(lines) == 1, stderr
    return lines[-1]


@pytest.mark.parametrize("name", list(CASES))
def test_a_failed_write_is_one_line_and_keeps_the_previous_output(work, name):
    argv, target, limit = CASES[name]
    out = work / target
    if not target.startswith("data"):
        out.write_text("previous\n")
    argv = [a.format(out=out.name) for a in argv]
    res = subprocess.run([*SBD, *argv, "--device", "cpu"] if argv[0] == "draft" else [*SBD, *argv],
                         cwd=work, env=_env(), capture_output=True, text=True,
                         preexec_fn=_limit(limit))  # fmt: skip
    assert res.returncode == 2, res.stderr
    line = _only_line(res.stderr, after_report=argv[0] == "eval")
    assert "File too large" in line and out.name in line, line
    if out.suffix in (".jsonl", ".safetensors"):
        assert out.read_text() == "previous\n"
    else:
        assert not out.exists()
    assert not [p.name for p in work.iterdir() if p.name.startswith(f".{out.name}.")]


def test_stdout_over_the_size_limit_is_one_line(work):
    with open(work / "stdout.jsonl", "w") as sink:
        res = subprocess.run([*SBD, "draft", "-n", "16", "--device", "cpu"], cwd=work,
                             env=_env(), stdout=sink, stderr=subprocess.PIPE, text=True,
                             preexec_fn=_limit(3000))  # fmt: skip
    assert res.returncode == 2
    assert _only_line(res.stderr).endswith("stdout: File too large")


def test_output_naming_a_directory_is_refused(work):
    (work / "adir").mkdir(exist_ok=True)
    res = subprocess.run([*SBD, "draft", "-n", "2", "--device", "cpu", "-o", "adir"], cwd=work,
                         env=_env(), capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 2
    assert "adir is a directory" in _only_line(res.stderr)
    assert list((work / "adir").iterdir()) == []


EARLY = {
    "eval --plot of an unknown type": ["eval", "genppl", "drafts.jsonl", "--plot", "p.xyz"],
    "eval --out naming a directory": ["eval", "genppl", "drafts.jsonl", "--out", "adir"],
    "demo --out naming a file": ["demo", "--out", "drafts.jsonl", "--quick"],
    "demo --device tpu": ["demo", "--device", "tpu", "--out", "newdemo", "--quick"],
    "draft -o under a file": ["draft", "-n", "2", "-o", "drafts.jsonl/x"],
    "revise -o naming a directory": ["revise", "-i", "drafts.jsonl", "-o", "adir"],
    "eval ppl --out naming a directory": ["eval", "ppl", "-m", "runs/r1", "--out", "adir"],
    "prepare --out naming a file": ["prepare", "--out", "drafts.jsonl", "--num-train", "64"],
    "prepare --out under a file": ["prepare", "--out", "drafts.jsonl/data"],
    "train --out under a file": ["train", "--out", "drafts.jsonl/run", "--steps", "1"],
    "demo --out under a file": ["demo", "--out", "drafts.jsonl/demo", "--quick"],
}
"""Refused before any work: nothing is judged, trained or written."""


@pytest.mark.parametrize("name", list(EARLY))
def test_bad_outputs_are_refused_before_any_work(work, name):
    (work / "adir").mkdir(exist_ok=True)
    before = sorted(p.name for p in work.iterdir())
    drafts = (work / "drafts.jsonl").read_text()
    res = subprocess.run([*SBD, *EARLY[name]], cwd=work, env=_env(), capture_output=True,
                         text=True)  # fmt: skip
    assert res.returncode == 2, res.stderr
    _only_line(res.stderr)
    assert sorted(p.name for p in work.iterdir()) == before
    assert (work / "drafts.jsonl").read_text() == drafts
    assert list((work / "adir").iterdir()) == []


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_stdout_on_a_full_disk_is_one_line(work):
    with open("/dev/full", "w") as full:
        res = subprocess.run([*SBD, "draft", "-n", "2", "--device", "cpu"], cwd=work, env=_env(),
                             stdout=full, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert res.returncode == 2
    assert _only_line(res.stderr).endswith("stdout: No space left on device")


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


def test_a_failed_checkpoint_keeps_the_previous_one(tmp_path):
    """A resumed run whose next checkpoint does not fit: the last one stays whole."""

    def run(*argv: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([*SBD, *argv], cwd=tmp_path, env=_env(), capture_output=True,
                              text=True, **kw)  # fmt: skip

    run("prepare", "--out", "data", "--num-train", "64", "--num-val", "16",
        "--oracle-samples", "16", "--seq-len", "16", check=True)  # fmt: skip
    run("train", "--out", "r", "--data", "data", "--steps", "2", "--batch-size", "4",
        "--device", "cpu", check=True)  # fmt: skip
    state = _tree(tmp_path / "r" / "state")
    model = _tree(tmp_path / "r")["model.safetensors"]
    # the model (2.2 MB) fits, the optimizer state (4.4 MB) does not
    res = run("train", "--resume", "--out", "r", "--steps", "4", "--device", "cpu",
              preexec_fn=_limit(3_000_000))  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert "state: File too large" in _only_line(res.stderr, after_report=True)
    assert _tree(tmp_path / "r" / "state") == state
    assert _tree(tmp_path / "r")["model.safetensors"] == model
    assert not [p for p in (tmp_path / "r").rglob("*") if p.name.endswith(".tmp")]

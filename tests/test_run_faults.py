"""The run directory under faults: two concurrent trains, a training killed before its first
checkpoint, the lock released by a process that ends (tests for artifacts/rundir.py's lock
and train/build.py's claim on a run directory)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sbdcli.artifacts.rundir import RunDir
from sbdcli.errors import UserError

SBD = [sys.executable, "-m", "sbdcli"]
TRAIN = ["train", "--preset", "tiny", "--batch-size", "8", "--device", "cpu", "--seed", "1"]


def _env() -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runfaults")
    argv = ["prepare", "--out", str(root / "data"), "--seq-len", "32", "--num-train",
            "256", "--num-val", "32", "--oracle-samples", "64", "--vocab", "16"]  # fmt: skip
    subprocess.run([*SBD, *argv], env=_env(), check=True, capture_output=True)
    return root / "data"


def _start_long_train(data: Path, out: Path) -> subprocess.Popen:
    argv = [*TRAIN, "--data", str(data), "--out", str(out), "--steps", "100000",
            "--val-every", "0", "--save-every", "0"]  # fmt: skip
    proc = subprocess.Popen([*SBD, *argv], env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").is_file() or not (out / "metrics.jsonl").read_text():
        assert proc.poll() is None and time.time() < deadline, "training did not start"
        time.sleep(0.2)
    return proc


def _train(data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    argv = [*TRAIN, "--data", str(data), "--out", str(out), "--steps", "2", *extra]
    return subprocess.run([*SBD, *argv], env=_env(), capture_output=True, text=True)


@pytest.mark.slow
def test_a_second_writer_is_refused_naming_the_holder_then_a_killed_first_run_restarts(
    data, tmp_path
):
    out = tmp_path / "run"
    first = _start_long_train(data, out)
    try:
        for extra in ((), ("--resume",)):
            res = _train(data, out, *extra)
            assert res.returncode == 2, res.stderr
            lines = res.stderr.strip().splitlines()
            assert len(lines) == 1 and "Traceback" not in res.stderr
            assert f"pid {first.pid}" in lines[0]
        metrics = (out / "metrics.jsonl").read_text()
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert metrics and not (out / "state").exists()  # killed before its first checkpoint
    res = _train(data, out, "--resume")
    assert res.returncode == 2 and "without --resume) starts it over" in res.stderr
    res = _train(data, out)
    assert res.returncode == 0, res.stderr
    assert "unfinished run without a checkpoint: starting over" in res.stderr
    assert RunDir(out).finished_steps() == 2
    assert [m["step"] for m in RunDir(out).metrics()] == [1, 2]


def test_the_lock_is_released_when_its_holder_ends(tmp_path):
    run = RunDir(tmp_path / "r")
    lock = run.lock()
    assert run.lock_path.read_text().strip() == str(os.getpid())
    code = f"from sbdcli.artifacts.rundir import RunDir; RunDir({str(run.path)!r}).lock()"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert child.returncode == 1 and f"pid {os.getpid()}" in child.stderr  # a UserError
    lock.release()
    again = run.lock()  # free again once released (a dead process releases it the same way)
    again.release()


def test_a_directory_with_other_files_is_never_replaced(data, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    res = _train(data, out)
    assert res.returncode == 2 and "not empty" in res.stderr
    assert (out / "notes.txt").read_text() == "keep me" and sorted(os.listdir(out)) == ["notes.txt"]


def test_lock_refusal_is_a_user_error(tmp_path):
    run = RunDir(tmp_path / "r")
    held = run.lock()
    with pytest.raises(UserError, match=r"pid \d+"):
        run.lock()
    held.release()

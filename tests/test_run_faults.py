"""The run directory under faults: two concurrent trains into one directory, a training
SIGKILLed before its first checkpoint, the lock released by a process that ends, directories
sbd must never replace (tests for artifacts/rundir.py's lock and train/build.py's claim)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sbdcli.artifacts.rundir import RunDir
from sbdcli.cli import main
from sbdcli.errors import UserError

SBD = [sys.executable, "-m", "sbdcli"]
TRAIN = ["train", "--preset", "tiny", "--batch-size", "8", "--val-every", "0",
         "--save-every", "0", "--device", "cpu", "--seed", "1"]  # fmt: skip
LONG_STEPS = 600  # over ten seconds on one CPU: time for two refused writers to start


def _env() -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runfaults")
    argv = ["prepare", "--synthetic", "topic-markov", "--out", str(root / "data"),
            "--seq-len", "32", "--num-train", "256", "--num-val", "32",
            "--oracle-samples", "64", "--vocab", "16", "--topics", "2"]  # fmt: skip
    subprocess.run([*SBD, *argv], env=_env(), check=True, capture_output=True)
    return root / "data"


def _argv(data: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return [*SBD, *TRAIN, "--data", str(data), "--out", str(out), "--steps", str(steps), *extra]


def _start(data: Path, out: Path, steps: int, ready: str) -> subprocess.Popen:
    """A background `sbd train`, once `out/<ready>` exists and is not empty."""
    with open(out.parent / f"{out.name}.log", "w") as log:  # a full pipe would stall it
        proc = subprocess.Popen(_argv(data, out, steps), env=_env(), stdout=log, stderr=log)
    deadline = time.time() + 120
    while not ((out / ready).is_file() and (out / ready).read_text().strip()):
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"training did not start: {_log(out)}")
        time.sleep(0.1)
    return proc


def _log(out: Path) -> str:
    return (out.parent / f"{out.name}.log").read_text()


def _train(data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(_argv(data, out, 2, *extra), env=_env(), capture_output=True, text=True)


def _one_line(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    return lines[0]


def _snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_a_second_writer_is_refused_naming_the_pid_and_the_first_finishes_intact(data, tmp_path):
    out = tmp_path / "run"
    first = _start(data, out, LONG_STEPS, ready=".lock")
    try:
        seconds = [subprocess.Popen(_argv(data, out, 2, *extra), env=_env(), text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                   for extra in ((), ("--resume",))]  # fmt: skip
        for proc in seconds:
            stdout, stderr = proc.communicate(timeout=120)
            res = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
            assert f"pid {first.pid}" in _one_line(res)
        assert first.poll() is None, "the first run ended before the second writers started"
        assert first.wait(timeout=300) == 0, _log(out)
    finally:
        first.kill()
        first.wait()
    run = RunDir(out)
    assert run.finished_steps() == LONG_STEPS and run.model_path.is_file()
    assert [m["step"] for m in run.metrics()] == list(range(1, LONG_STEPS + 1))
    run.lock().release()  # the ended process released it


@pytest.mark.slow
def test_a_run_killed_before_its_first_checkpoint_is_started_over(data, tmp_path):
    out = tmp_path / "run"
    first = _start(data, out, 100_000, ready="metrics.jsonl")
    first.send_signal(signal.SIGKILL)
    first.wait()
    run = RunDir(out)
    assert run.metrics() and not run.has_state() and run.is_unfinished()
    before = _snapshot(out)
    line = _one_line(_train(data, out, "--resume"))  # decided: --resume refuses, with the fix
    assert "unfinished run without a checkpoint" in line and "starts it over" in line
    assert _snapshot(out) == before
    res = _train(data, out)  # the dead writer's lock is free: plain train starts over
    assert res.returncode == 0, res.stderr
    assert "unfinished run without a checkpoint: starting over" in res.stderr
    assert run.finished_steps() == 2 and [m["step"] for m in run.metrics()] == [1, 2]


HOLD = "import sys, time; from sbdcli.artifacts.rundir import RunDir; "
HOLD += "lock = RunDir(sys.argv[1]).lock(); print('locked', flush=True); time.sleep(60)"


def test_the_lock_names_its_holder_and_is_released_when_the_holder_dies(tmp_path):
    run = RunDir(tmp_path / "r")
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(run.path)], text=True,
                             stdout=subprocess.PIPE)  # fmt: skip
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "locked"
        assert run.lock_path.read_text().strip() == str(child.pid)
        with pytest.raises(UserError, match=rf"pid {child.pid}\b"):
            run.lock()
    finally:
        child.kill()
        child.communicate()
    mine = run.lock()  # the kernel dropped the dead holder's lock
    assert run.lock_path.read_text().strip() == str(os.getpid())
    with pytest.raises(UserError, match=rf"pid {os.getpid()}\b"):
        run.lock()  # a second lock in this process conflicts too
    mine.release()
    run.lock().release()


def _foreign_file(out: Path) -> None:
    (out / "notes.txt").write_text("keep me")


def _checkpointed_run(out: Path) -> None:
    RunDir(out).write_config({"train": {}})
    (out / "state").mkdir()
    (out / "state" / "trainer.json").write_text('{"step": 3}\n')


@pytest.mark.parametrize("make", [_foreign_file, _checkpointed_run], ids=["foreign", "ckpt"])
def test_a_directory_sbd_did_not_leave_unfinished_is_never_replaced(data, tmp_path, make, capsys):
    out = tmp_path / "run"
    out.mkdir()
    make(out)
    before = _snapshot(out)
    argv = [*TRAIN, "--data", str(data), "--out", str(out), "--steps", "2"]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "not empty (use --resume)" in err[0], err
    assert _snapshot(out) == before and not RunDir(out).lock_path.exists()

"""Tests for `sbd train`: defaults (./data, ./runs/<name>, runs/latest), mix-scale flags,
one-line errors with exit 2, Ctrl-C checkpoint + resume, and `torchrun -m sbdcli train`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sbdcli.cli import main

PREPARE = ["prepare", "--synthetic", "topic-markov", "--seq-len", "32", "--num-train", "256"]
PREPARE += ["--num-val", "16", "--oracle-samples", "64"]
FAST = ["--steps", "2", "--batch-size", "4", "--val-rows", "8", "--device", "cpu"]


def run_main(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return int(info.value.code or 0)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A working directory holding ./data written by `sbd prepare` (L = 32)."""
    work = tmp_path_factory.mktemp("cli_train")
    cwd = os.getcwd()
    os.chdir(work)
    try:
        with pytest.raises(SystemExit) as info:
            main(PREPARE)
        assert info.value.code in (0, None)
    finally:
        os.chdir(cwd)
    return work


def one_error_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1, err
    return err[0]


def test_literal_mix_command_uses_defaults_and_links_latest(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    assert run_main(["train", "--mix", "4,1024", "--lambda", "0.1", *FAST]) == 0
    err = capsys.readouterr().err
    assert "block size 1024 >= L = 32: using one global block" in err
    assert "oracle floor" in err
    latest = workdir / "runs" / "latest"
    assert latest.is_symlink()
    run = latest.resolve()
    assert run.parent == (workdir / "runs").resolve()
    assert run.name.startswith("tiny-topic-markov-")  # named after the preset and the data
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["block_small"] == 4 and config["train"]["mix_lambda"] == 0.1
    assert config["block_sizes"] == [4, 32] and config["processes"] == 1
    assert (run / "data" / "manifest.json").is_file() and (run / "model.safetensors").is_file()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["step"] for ln in lines] == [1, 2]


def test_a_note_says_when_runs_latest_moves(workdir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    data = ["--data", str(workdir / "data")]
    assert run_main(["train", *data, "--out", "runs/a", *FAST]) == 0
    assert "now points at" not in capsys.readouterr().err  # a first link moves nothing
    assert run_main(["train", *data, "--out", "runs/b", *FAST]) == 0
    err = capsys.readouterr().err
    assert "note: runs/latest now points at b (was a): commands without -m use this run" in err
    assert os.readlink(tmp_path / "runs" / "latest") == "b"


def test_the_train_bar_keeps_its_total_and_labels_at_80_columns(monkeypatch):
    from rich.console import Console

    from sbdcli.cli import progress, train

    narrow = Console(width=80, force_terminal=True, file=open(os.devnull, "w"), record=True)  # noqa: SIM115
    monkeypatch.setattr(progress, "console", narrow)
    bar = train._progress_bar(show=True)
    bar.add_task("train", total=1200, completed=600, loss=3.1234, block=128, tps=123456.0)
    narrow.print(bar.get_renderable())
    line = narrow.export_text().strip()
    assert len(line) <= 80 and "…" not in line, line
    for part in ("600/1200", "loss 3.1234", "block  128", "123,456 tok/s", "eta"):
        assert part in line, line


def test_single_block_flag(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    out = workdir / "single"
    assert run_main(["train", "--block", "8", "--out", str(out), *FAST]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["block_sizes"] == [8] and config["train"]["mix_lambda"] == 0.0
    assert {json.loads(ln)["block_size"] for ln in (out / "metrics.jsonl").open()} == {8}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--data", "nowhere"], "manifest.json missing"),
        (["--block", "5"], "does not divide"),
        (["--mix", "4"], "bad --mix"),
        (["--mix", "a,b"], "bad --mix"),
        (["--block", "4", "--mix", "4,32"], "either --block"),
        (["--lambda", "1.5"], "lambda"),
        (["--resume", "--out", "nothing-here"], "resume"),
        (["--global-batch", "6"], "global batch 6"),
        (["--preset", "huge"], "preset"),
        (["--eps-large", "x"], "bad --eps-large"),
        (["--eps-min", "0"], "--eps-min"),
    ],
)
def test_user_errors_are_one_line_exit_2(workdir, monkeypatch, capsys, args, needle):
    monkeypatch.chdir(workdir)
    assert run_main(["train", *FAST, *args]) == 2
    line = one_error_line(capsys)
    assert needle in line and "Traceback" not in line


def test_vocab_mismatch_with_init_is_one_line(workdir, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(workdir)
    other = tmp_path / "v30"
    assert run_main([*PREPARE, "--vocab", "30", "--out", str(other)]) == 0
    base = tmp_path / "base"
    assert run_main(["train", "--data", str(other), "--out", str(base), *FAST]) == 0
    capsys.readouterr()
    assert run_main(["train", "--init", str(base), "--out", str(tmp_path / "x"), *FAST]) == 2
    assert "vocab" in one_error_line(capsys)
    assert not (tmp_path / "x").exists()


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    start = time.monotonic()
    while not (path.is_file() and path.read_text().strip()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - start < timeout, "training never logged a step"
        time.sleep(0.2)


def test_ctrl_c_writes_a_checkpoint_exits_130_and_resumes(workdir):
    run = workdir / "interrupted"
    cmd = [sys.executable, "-m", "sbdcli", "train", "--out", str(run), "--steps", "100000"]
    cmd += ["--batch-size", "2", "--val-rows", "4", "--val-every", "0", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stderr=subprocess.PIPE, text=True)
    _wait_for(run / "metrics.jsonl", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    step = json.loads((run / "state" / "trainer.json").read_text())["step"]
    assert step >= 1
    resumed = [*cmd[:4], "--resume", "--out", str(run), "--steps", str(step + 1)]
    out = subprocess.run(resumed, cwd=workdir, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f"resuming {run} at step {step}" in out.stderr
    steps = [json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, step + 2))


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(workdir):
    run = workdir / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    cmd += ["2", "-m", "sbdcli", "train", "--out", str(run), *FAST, "--batch-size", "2"]
    out = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    config = json.loads((run / "config.json").read_text())
    assert config["processes"] == 2 and config["global_batch"] == 4
    assert config["distributed_type"] == "MULTI_CPU"
    records = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["processes"] for r in records] == [2, 2]


@pytest.mark.slow
def test_compile_trains_the_same_first_step(workdir):
    """`--compile` (inductor through accelerate) gives the eager run's first-step loss.

    Each run is its own process: accelerate keeps one dynamo setting per process.
    """
    losses = {}
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        run = workdir / f"compile-{name}"
        cmd = [sys.executable, "-m", "sbdcli", "train", "--out", str(run), *FAST]
        cmd += ["--block", "4", "--val-every", "0", "--seed", "3", *extra]
        cache = workdir / f"inductor-{name}"  # inductor writes its generated kernels here
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCHINDUCTOR_CACHE_DIR": str(cache)}
        out = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-3000:]
        config = json.loads((run / "config.json").read_text())
        assert config["train"]["compile"] is (name == "compiled")
        compiled = cache.is_dir() and any(p.is_file() for p in cache.rglob("*"))
        assert compiled is (name == "compiled")  # a no-op flag would leave no kernels
        records = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
        losses[name] = [r["loss"] for r in records if "loss" in r]
    assert len(losses["compiled"]) == 2
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-4)

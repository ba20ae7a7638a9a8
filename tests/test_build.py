"""Tests for train/build.py: the run directory (layout, runs/latest, config.json, EMA
weights), `init` from a run or a BD3-LM checkpoint, `resume_config`.

The runs use the real Denoiser and `block_nelbo` on a small synthetic data directory (L = 32).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sbdcli.cli.options import to_flags
from sbdcli.errors import UserError
from sbdcli.train import resume_config, setup, train
from train_helpers import metrics, tiny


def test_resume_refuses_changed_optimisation(tmp_path, data_dir):
    run = tmp_path / "r"
    train(tiny(steps=2, val_every=0), data_dir, run, runs_root=tmp_path)
    assert resume_config(run, steps=4).steps == 4
    with pytest.raises(UserError, match="`lr`") as lr:
        resume_config(run, lr=1.0)
    assert to_flags(str(lr.value)).startswith("cannot change --lr when resuming")
    with pytest.raises(UserError, match="`block_small`") as block:
        resume_config(run, block_small=8)
    assert "--mix/--block" in to_flags(str(block.value))
    with pytest.raises(UserError, match="nothing to resume"):
        setup(tiny(), data_dir, tmp_path / "none", resume=True)


def test_run_directory_layout_latest_link_and_ema_weights(tmp_path, data_dir):
    import sbdcli

    runs = tmp_path / "runs"
    summary = train(tiny(steps=3, ema=0.9), data_dir, runs_root=runs)
    run = summary.run_dir
    assert run.parent == runs and run.name.startswith("tiny-")
    assert (runs / "latest").is_symlink() and (runs / "latest").resolve() == run.resolve()
    names = {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()}
    assert {"model.safetensors", "config.json", "metrics.jsonl"} <= names
    assert {"data/manifest.json", "data/oracle.safetensors"} <= names
    state = ("trainer.json", "model", "ema", "optimizer", "rng")
    assert {f"state/{n if n.endswith('json') else n + '.safetensors'}" for n in state} <= names
    config = json.loads((run / "config.json").read_text())
    assert config["processes"] == 1 and config["train"]["steps"] == 3
    assert config["model"]["vocab_size"] == 66 and Path(config["data"]["dir"]).samefile(data_dir)
    assert [r["processes"] for r in metrics(run)] == [1, 1, 1]
    model = sbdcli.load_model(str(run))
    ema = load_file(run / "state" / "ema.safetensors")
    raw = load_file(run / "state" / "model.safetensors")
    state = model.state_dict()
    assert all(torch.equal(state[k], ema[k]) for k in ema)
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)
    with pytest.raises(UserError, match="not empty"):
        setup(tiny(), data_dir, run)


def test_init_from_run_and_vocab_mismatch(tmp_path, data_dir):
    from sbdcli.data import prepare_synthetic
    from sbdcli.data.synthetic import TopicMarkovSpec

    base = train(tiny(steps=2), data_dir, tmp_path / "base", runs_root=tmp_path)
    tuned = setup(tiny(init=str(base.run_dir)), data_dir, tmp_path / "tuned")
    start = load_file(base.run_dir / "model.safetensors")
    assert all(torch.equal(v, tuned.denoiser.state_dict()[k]) for k, v in start.items())
    other = tmp_path / "v32"
    spec = TopicMarkovSpec(vocab=30)
    prepare_synthetic(other, spec, 32, num_train=16, num_val=8, floor_samples=8)
    with pytest.raises(UserError, match="vocab"):
        setup(tiny(init=str(base.run_dir)), other, tmp_path / "bad")


def test_init_from_a_bd3lm_checkpoint_directory(tmp_path, fixture_dir):
    """`init` accepts the published BD3-LM layout (config.json + backbone.* safetensors)."""
    from sbdcli.data import prepare_synthetic
    from sbdcli.data.synthetic import TopicMarkovSpec

    spec = TopicMarkovSpec(vocab=1022, topics=1)  # vocab 1024 with BOS and [MASK] = 1023
    prepare_synthetic(tmp_path / "d", spec, 32, num_train=16, num_val=4, floor_samples=4)
    trainer = setup(
        tiny(init=str(fixture_dir), steps=1, val_rows=4), tmp_path / "d", tmp_path / "r"
    )
    reference = load_file(fixture_dir / "model.safetensors")
    state = trainer.denoiser.state_dict()
    for name, value in reference.items():
        if name.startswith("backbone."):
            assert torch.equal(state[name.removeprefix("backbone.")], value.float()), name
    trainer.fit()
    saved = json.loads((tmp_path / "r" / "config.json").read_text())["model"]
    assert (saved["n_layers"], saved["d_model"], saved["vocab_size"]) == (2, 64, 1024)


@pytest.mark.skipif(torch.cuda.is_available(), reason="on GPUs the FSDP launch really shards")
def test_an_fsdp_launch_on_cpu_processes_is_refused(tmp_path, data_dir):
    """accelerate runs examples/accelerate/fsdp.yaml on CPUs as plain DDP: sbd says so."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(root / "examples" / "accelerate" / "fsdp.yaml"), "--num_processes", "2",
              "--mixed_precision", "no", "-m", "sbdcli", "train", "--data", str(data_dir),
              "--out", str(tmp_path / "run"), "--steps", "1", "--batch-size", "4"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=240)
    errors = [line for line in done.stderr.splitlines() if line.startswith("sbd: error:")]
    assert done.returncode != 0 and "exitcode  : 2" in done.stderr
    assert errors and all("FSDP launch on CPU processes" in line for line in errors), done.stderr
    assert not (tmp_path / "run").exists()

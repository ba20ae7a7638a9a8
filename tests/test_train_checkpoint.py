"""Tests for train/checkpoint.py: optimizer state without pickle, exact resume after an
interrupt, the resume-state format (safetensors and JSON only).

The runs use the real Denoiser and `block_nelbo` on a small synthetic data directory (L = 32).
"""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from sbdcli import artifacts
from sbdcli.train import resume_config, train
from sbdcli.train.checkpoint import flatten_optimizer_state, unflatten_optimizer_state
from train_helpers import metrics, tiny


def test_optimizer_state_round_trips_through_safetensors_and_json(tmp_path):
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    def make():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
        return model, torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95))

    def step(model, opt, seed):
        torch.manual_seed(seed)
        opt.zero_grad()
        model(torch.randn(5, 3)).pow(2).sum().backward()
        opt.step()

    model, opt = make()
    step(model, opt, 1)
    tensors, meta = flatten_optimizer_state(get_optimizer_state_dict(model, opt))
    artifacts.save_tensors(tmp_path / "o.safetensors", tensors, "t")
    artifacts.write_json(tmp_path / "o.json", meta)
    loaded, _ = artifacts.load_tensors(tmp_path / "o.safetensors")
    restored = unflatten_optimizer_state(loaded, artifacts.read_json(tmp_path / "o.json"))
    model2, opt2 = make()
    model2.load_state_dict(model.state_dict())
    set_optimizer_state_dict(model2, opt2, restored)
    assert opt2.param_groups[0]["betas"] == (0.8, 0.95)
    step(model, opt, 2)
    step(model2, opt2, 2)
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)


def test_resume_after_interrupt_reproduces_the_uninterrupted_run(tmp_path, data_dir):
    cfg = tiny(global_batch=8, mix_lambda=0.5)  # accumulation 2, both block sizes
    full = tmp_path / "full"
    train(cfg, data_dir, full, runs_root=tmp_path)

    part = tmp_path / "part"

    def interrupt(info):
        if info.step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # the loop stops at the step boundary

    with pytest.raises(KeyboardInterrupt):
        train(cfg, data_dir, part, runs_root=tmp_path, progress=interrupt)
    assert json.loads((part / "state" / "trainer.json").read_text())["step"] == 3
    assert len(metrics(part)) == 3
    train(resume_config(part), data_dir, part, resume=True, runs_root=tmp_path)

    keys = ("step", "loss", "block_size", "lr", "tokens", "grad_norm", "val_nelbo")
    got = [{k: r.get(k) for k in keys} for r in metrics(part)]
    want = [{k: r.get(k) for k in keys} for r in metrics(full)]
    assert got == want
    assert {r["block_size"] for r in got} == {4, 32}
    for name in ("model", "ema", "optimizer"):
        a = load_file(full / "state" / f"{name}.safetensors")
        b = load_file(part / "state" / f"{name}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_no_pickle_anywhere_in_a_run(tmp_path, data_dir):
    summary = train(tiny(steps=2, save_every=1), data_dir, tmp_path / "run", runs_root=tmp_path)
    for path in summary.run_dir.rglob("*"):
        if not path.is_file():
            continue
        if path.name == ".lock":  # the writer lock: the holder's pid as text
            assert path.read_text().strip().isdigit()
            continue
        assert path.suffix in {".json", ".jsonl", ".safetensors"}, path
        head = path.read_bytes()[:2]
        assert head[:1] != b"\x80" and head != b"PK", f"{path} looks like a pickle/zip"
        if path.suffix == ".safetensors":
            load_file(path)
        else:
            for line in path.read_text().splitlines() if path.suffix == ".jsonl" else []:
                json.loads(line)


def test_read_state_refuses_a_foreign_trainer_json(tmp_path):
    from sbdcli.artifacts.rundir import RunDir
    from sbdcli.errors import UserError
    from sbdcli.train.checkpoint import read_state

    run = RunDir(tmp_path / "run")
    run.state_dir.mkdir(parents=True)
    artifacts.write_json(run.trainer_state_path, {"schema": "something.else", "step": 3})
    assert run.trainer_state()["step"] == 3 and run.finished_steps() == 3
    with pytest.raises(UserError, match="not an sbd training state"):
        read_state(run)
    artifacts.write_json(run.trainer_state_path, [1, 2])
    with pytest.raises(UserError, match="not an sbd training state"):
        run.trainer_state()


@pytest.mark.slow
def test_fsdp2_training_resumes_exactly(tmp_path, data_dir):
    """FSDP2 on 2 CPU processes (tests/fsdp_steps.py): 4 steps = 2 steps + a resume to 4,
    and the checkpoint loads in one process."""
    import subprocess
    import sys
    from pathlib import Path

    from sbdcli.model.checkpoint import load_model

    script = str(Path(__file__).resolve().parent / "fsdp_steps.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone"]

    def steps(run, n, resume):
        cmd = [*launch, "--nproc_per_node", "2", script, str(data_dir), str(run), str(n), resume]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr[-3000:]

    full, cut = tmp_path / "full", tmp_path / "cut"
    steps(full, 4, "0")
    steps(cut, 2, "0")
    steps(cut, 4, "1")
    assert json.loads((full / "sharding.json").read_text()) == {"param": "DTensor"}
    losses = [[m["loss"] for m in metrics(run)] for run in (full, cut)]
    assert len(losses[0]) == 4 and losses[0] == losses[1]
    model = load_model(str(full))
    assert sum(p.numel() for p in model.parameters()) > 0

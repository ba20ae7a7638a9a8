"""Tests for train/trainer.py: the global batch's noise, the loss falling, accumulation and
data-parallel equivalence, clip search, noise intervals, divergence.

Everything runs the real Denoiser and the real `loss.block_nelbo` on a small synthetic
data directory (L = 32) written by `sbdcli.data.prepare_synthetic`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sbdcli import artifacts
from sbdcli.config import train_config
from sbdcli.diffusion.loss import block_nelbo
from sbdcli.errors import UserError
from sbdcli.train import draw_noise, setup, train
from train_helpers import tiny

HERE = Path(__file__).resolve().parent


def test_draw_noise_equals_the_draws_block_nelbo_makes(data_dir):
    """Drawing the global batch's noise up front must not change the estimator."""
    from sbdcli.config import preset
    from sbdcli.data import load_split
    from sbdcli.model import Denoiser

    x0 = load_split(data_dir, "train")[:6]  # (6, 32)
    model = Denoiser(preset("tiny", vocab_size=66, mask_id=65, seq_len=32)).eval()
    for block in (4, 32):
        out = block_nelbo(model, x0, block, generator=torch.Generator().manual_seed(3))
        t, masked = draw_noise(6, 32, block, torch.Generator().manual_seed(3), (1e-3, 1.0), False)
        assert torch.equal(t, out.t) and torch.equal(masked, out.masked)
        assert not masked[:, 0].any()


def test_tiny_model_loss_drops_on_synthetic_data(tmp_path):
    """A deterministic-chain member of the topic-markov family (1 topic, 1 successor): the
    NELBO can only fall far below its start by using context, and it does in 40 steps."""
    from sbdcli.data import prepare_synthetic
    from sbdcli.data.synthetic import TopicMarkovSpec

    chain = TopicMarkovSpec(vocab=16, topics=1, fanout=1, eps=0.0)
    prepare_synthetic(tmp_path / "chain", chain, 32, num_train=512, num_val=32, floor_samples=8)
    cfg = tiny(steps=40, batch_size=16, val_rows=32, val_every=0, lr=3e-3, warmup=10, ema=0.0)
    trainer = setup(cfg, tmp_path / "chain", tmp_path / "run")
    start = trainer.validate()  # the same corruption as the final validation
    summary = trainer.fit()
    for block in (4, 32):
        assert summary.val[block] < 0.5 * start[block], (start, summary.val)
    assert summary.reference["oracle_floor"] == 0.0  # the chain is deterministic


def test_accumulation_matches_one_big_batch(tmp_path, data_dir):
    """1 process x 4 rows x 2 accumulation == 1 process x 8 rows (same loss, same grads)."""
    grads = []
    for name, batch in (("acc", 4), ("big", 8)):
        trainer = setup(tiny(batch_size=batch, global_batch=8), data_dir, tmp_path / name)
        loss = trainer.forward_backward(trainer.sampler.draw())
        grads.append((loss, {n: p.grad.clone() for n, p in trainer.denoiser.named_parameters()}))
    (loss_a, ga), (loss_b, gb) = grads
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    for name in ga:
        assert torch.allclose(ga[name], gb[name], rtol=1e-4, atol=1e-6), name


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path, data_dir):
    """torchrun 2 processes x 4 rows gives the first step of 1 process x 8 rows (gloo DDP)."""
    script = str(HERE / "ddp_first_step.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two, one = tmp_path / "two", tmp_path / "one"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd = [*launch, "--nproc_per_node", "2", script, str(data_dir), str(two), "4"]
    for _ in range(2):  # one retry: torchrun's local rendezvous can flake on a busy host
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
        if done.returncode == 0:
            break
        shutil.rmtree(two, ignore_errors=True)
    assert done.returncode == 0, f"torchrun failed twice:\n{done.stderr[-3000:]}"
    single = [sys.executable, script, str(data_dir), str(one), "8"]
    done = subprocess.run(single, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    (a, ha), (b, hb) = (artifacts.load_tensors(p / "grads.safetensors") for p in (two, one))
    assert (ha["processes"], hb["processes"]) == (2, 1)
    assert json.loads((two / "run" / "config.json").read_text())["processes"] == 2
    assert float(a["__loss__"]) == pytest.approx(float(b["__loss__"]), rel=1e-5)
    for name in b:
        assert torch.allclose(a[name], b[name], rtol=1e-4, atol=1e-6), name


def test_clip_search_sets_the_training_interval_and_checkpoint_header(tmp_path, data_dir):
    from sbdcli.diffusion.loss import clip_intervals

    cfg = tiny(steps=2, val_every=2, val_rows=4, clip_search=True, block_small=8, mix_lambda=0)
    summary = train(cfg, data_dir, tmp_path / "clip", runs_root=tmp_path)
    state = json.loads((summary.run_dir / "state" / "trainer.json").read_text())
    lo, hi = state["eps"]["8"]
    assert (lo, hi) in clip_intervals(8)
    _, header = artifacts.load_tensors(summary.run_dir / "model.safetensors")
    assert header["sampling_eps"] == {"8": [lo, hi]}


def test_clip_search_scores_the_reference_batch_count_by_default(tmp_path, data_dir, monkeypatch):
    """BD3-LM's var_min search uses its first 100 validation batches (bd3lms diffusion.py
    `validation_step`, commit 1c3e8f43d88dfbcee5ff2aa6932a9e74b31ae1d7); sbd's default is
    the same count, capped by the validation rows there are."""
    from sbdcli.diffusion.loss import ClipSearch
    from sbdcli.train import trainer as trainer_module

    assert train_config("tiny").clip_search_batches == 100
    seen: list[int] = []

    def fake(model, batches, block, **kw):
        seen.append(sum(b.shape[0] for b in batches))
        return ClipSearch(1e-3, 1.0)

    monkeypatch.setattr(trainer_module, "clip_search", fake)
    cfg = dict(val_rows=8, batch_size=2, clip_search=True, block_small=8, mix_lambda=0)
    setup(tiny(**cfg), data_dir, tmp_path / "all").validate()
    setup(tiny(**cfg, clip_search_batches=3), data_dir, tmp_path / "three").validate()
    assert seen == [8, 6]  # all 4 batches of 2 rows (fewer than 100), then 3 batches
    with pytest.raises(UserError, match="`clip_search_batches` must be >= 1"):
        tiny(clip_search_batches=0)


def test_noise_interval_per_block_size(tmp_path, data_dir):
    trainer = setup(tiny(eps_min=0.3, large_eps_min=0.01), data_dir, tmp_path / "eps")
    assert trainer.progress_state.eps == {4: [0.3, 1.0], 32: [0.01, 1.0]}
    single = setup(tiny(block_small=8, mix_lambda=0.0, eps_min=0.3), data_dir, tmp_path / "one")
    assert single.progress_state.eps == {8: [0.3, 1.0]}
    assert train_config("tiny").eps_min == 0.25 and train_config("small").eps_min == 1e-3


def test_divergence_is_one_clear_error_before_the_update(tmp_path, data_dir):
    trainer = setup(tiny(steps=3), data_dir, tmp_path / "nan")
    before = {n: p.detach().clone() for n, p in trainer.denoiser.named_parameters()}
    trainer.forward_backward = lambda block: float("nan")
    with pytest.raises(UserError, match="diverged: loss nan at step 1"):
        trainer.fit()
    after = dict(trainer.denoiser.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_time_conditioned_model_trains_samples_and_evaluates(tmp_path, capsys):
    """`time_conditioning`: the network sees each row's noise level; it learns the chain,
    then `sbd draft` samples it and `sbd eval ppl` scores it."""
    from sbdcli.cli import main
    from sbdcli.data import prepare_synthetic
    from sbdcli.data.synthetic import TopicMarkovSpec

    chain = TopicMarkovSpec(vocab=16, topics=1, fanout=1, eps=0.0)
    data = tmp_path / "chain"
    prepare_synthetic(data, chain, 32, num_train=512, num_val=32, floor_samples=8)
    cfg = tiny(steps=40, batch_size=16, val_rows=32, val_every=0, lr=3e-3, warmup=10, ema=0.0,
               time_conditioning=True)  # fmt: skip
    trainer = setup(cfg, data, tmp_path / "run")
    assert trainer.model_config.time_conditioning
    start = trainer.validate()
    summary = trainer.fit()
    for block in (4, 32):
        assert torch.isfinite(torch.tensor(summary.val[block]))
        assert summary.val[block] < 0.5 * start[block], (start, summary.val)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["time_conditioning"] is True
    out = tmp_path / "draft.jsonl"
    for kv in ("--kv-cache", "--no-kv-cache"):
        with pytest.raises(SystemExit) as info:
            main(["draft", "-m", str(tmp_path / "run"), "-n", "2", "-o", str(out), kv])
        assert info.value.code in (0, None)
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(records) == 2 and all(len(r["tokens"]) == 32 for r in records)
        out.unlink()
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["eval", "ppl", "-m", str(tmp_path / "run"), "--data", str(data), "--mc", "1"])
    assert info.value.code in (0, None)
    assert math.isfinite(json.loads(capsys.readouterr().out)["nelbo_per_token"])

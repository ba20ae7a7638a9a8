"""Tests for train/tracking.py: `sbd train --log-with` through accelerate's trackers."""

from __future__ import annotations

import math
import os

import pytest

from sbdcli.errors import UserError
from sbdcli.train.tracking import check_trackers, parse_trackers, step_values
from train_helpers import metrics, tiny


def test_parse_and_check():
    assert parse_trackers("tensorboard, WandB") == ("tensorboard", "wandb")
    assert parse_trackers(None) == ()
    with pytest.raises(UserError, match="unknown tracker 'nope'"):
        check_trackers(("nope",))


def test_a_tracker_that_is_not_installed_is_one_line(monkeypatch, capsys):
    import accelerate.utils

    from sbdcli.cli import main

    monkeypatch.setattr(accelerate.utils, "is_wandb_available", lambda: False)
    with pytest.raises(SystemExit) as info:
        main(["train", "--log-with", "wandb", "--data", "nowhere"])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and "'wandb' is not installed" in err[0]


def test_step_values_name_the_block_size():
    rec = {"step": 3, "loss": 2.0, "block_size": 4, "lr": 1e-3, "tokens_per_s": 10.0,
           "grad_norm": None, "val_nelbo": {"4": 1.5, "32": 2.5}}  # fmt: skip
    assert step_values(rec) == {"train/loss_B4": 2.0, "train/lr": 1e-3,
                                "train/tokens_per_s": 10.0, "val/nelbo_B4": 1.5,
                                "val/nelbo_B32": 2.5}  # fmt: skip


def test_tensorboard_events_equal_metrics_jsonl(data_dir, tmp_path):
    pytest.importorskip("tensorboard", reason="needs the `track` extra (tensorboard)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from sbdcli.train import train

    run = tmp_path / "run"
    train(tiny(), data_dir, run, runs_root=tmp_path / "runs", log_with=("tensorboard",))
    events = EventAccumulator(str(run / "logs" / "sbd"))
    events.Reload()
    logged = {
        tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]
    }
    want: dict[str, dict[int, float]] = {}
    for rec in metrics(run):
        for tag, value in step_values(rec).items():
            want.setdefault(tag, {})[rec["step"]] = value
    assert "val/nelbo_B4" in want and "train/grad_norm" in want
    assert set(want) <= set(logged)
    for tag, steps in want.items():
        assert set(steps) == set(logged[tag]), tag
        for step, value in steps.items():
            assert math.isclose(logged[tag][step], value, rel_tol=1e-6, abs_tol=1e-9), tag
    hparams = [t for t in os.listdir(run / "logs" / "sbd") if not t.startswith("events")]
    assert hparams  # add_hparams writes the config into its own sub-run


def test_wandb_offline(data_dir, tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="needs the `track` extra (wandb)")
    from sbdcli.train import train

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    train(tiny(steps=2, val_every=0), data_dir, run, runs_root=tmp_path / "runs",
          log_with=("wandb",))  # fmt: skip
    offline = list((run / "logs" / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and any(offline[0].rglob("*.wandb"))

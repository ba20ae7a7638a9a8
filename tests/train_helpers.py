"""Shared helpers of the training tests: a tiny training config, a run's metrics (the small
synthetic data directory they train on is the `data_dir` fixture of conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

from sbdcli.config import TrainConfig, train_config


def tiny(**overrides) -> TrainConfig:
    base = {"steps": 6, "batch_size": 4, "val_every": 3, "save_every": 0, "val_rows": 8}
    base.update(device="cpu", warmup=2, lr=5e-3, block_large=1024, mix_lambda=0.5)
    base.update(overrides)
    return train_config("tiny", **base)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]

"""The run directory and the data a run reads: layout, provenance, resume config, rows.

- `TokenRows`: rows of a data split read lazily from its safetensors shards (a corpus
  larger than memory trains without loading it);
- `read_data_manifest`, `reference_numbers`: the data manifest and the oracle's reference
  NLL (synthetic data) that validation is reported next to;
- `new_run_dir`, `point_latest`, `copy_data_files`, `append_metrics`, `truncate_metrics`:
  the run directory layout (`RUN/config.json`, `RUN/data/`, `RUN/metrics.jsonl`,
  `runs/latest`);
- `resume_config`: the saved training config of a run, with the changes a resume allows.

Not here: the training loop (train.py) and the resume state tensors (trainstate.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from sbdcli import artifacts
from sbdcli.config import TrainConfig
from sbdcli.errors import UserError

TOKENS_SCHEMA = "sbd.tokens"
DATA_COPIES = ("manifest.json", "tokenizer.json", "oracle.safetensors")
RESUMABLE_CHANGES = (
    "steps", "val_every", "save_every", "val_rows", "device", "batch_size", "global_batch",
)  # fmt: skip
"""Training-config fields a resumed run may change; every other field must stay."""
FLAGS = {
    "block_small": "--mix/--block",
    "block_large": "--mix/--block",
    "mix_lambda": "--lambda",
    "large_eps_min": "--eps-large",
    "large_eps_max": "--eps-large",
}
"""Command-line flags of the training-config fields whose flag is not the field's name."""


class TokenRows:
    """Rows (int32 `tokens` [rows, L]) of one split, read lazily from its safetensors shards."""

    def __init__(self, data_dir: Path, split: str, manifest: dict[str, Any]) -> None:
        from safetensors import safe_open

        names = manifest.get("shards", {}).get(split)
        paths = (
            [data_dir / n for n in names]
            if names
            else sorted(data_dir.glob(f"{split}*.safetensors"))
        )
        if not paths or not all(p.is_file() for p in paths):
            raise UserError(f"{data_dir} lacks its {split} rows (run 'sbd prepare' again)")
        self._shards = []
        counts = []
        for path in paths:
            schema = artifacts.read_tensor_metadata(path).get("schema")
            if schema != TOKENS_SCHEMA:
                raise UserError(f"{path} has schema '{schema}', expected '{TOKENS_SCHEMA}'")
            handle = safe_open(str(path), framework="pt")
            view = handle.get_slice("tokens")
            self._shards.append((handle, view))
            counts.append(int(view.get_shape()[0]))
        self.seq_len = int(self._shards[0][1].get_shape()[1])
        self.starts = torch.tensor([0, *counts]).cumsum(0)  # (n_shards + 1,)
        self.n_rows = int(self.starts[-1])

    def get(self, index: torch.Tensor) -> torch.Tensor:
        """Rows at global indices `index` (n,) as int64 (n, L)."""
        shard = torch.searchsorted(self.starts, index, right=True) - 1
        rows = []
        for s, i in zip(shard.tolist(), index.tolist(), strict=True):
            local = i - int(self.starts[s])
            rows.append(self._shards[s][1][local : local + 1])
        return torch.cat(rows).long() if rows else torch.empty(0, self.seq_len, dtype=torch.long)

    def head(self, n: int) -> torch.Tensor:
        """The first n rows (all when n is 0 or too large), int64 (n, L)."""
        n = self.n_rows if n <= 0 else min(n, self.n_rows)
        return self.get(torch.arange(n))


def read_data_manifest(data_dir: Path) -> dict[str, Any]:
    """The data directory's manifest; a missing one is a UserError that says what to run."""
    from sbdcli.data import read_manifest

    if not (data_dir / "manifest.json").is_file():
        raise UserError(f"no data at {data_dir}: manifest.json missing (run 'sbd prepare' first)")
    return read_manifest(data_dir)


def reference_numbers(
    data_dir: Path, manifest: dict[str, Any], val_rows: torch.Tensor
) -> dict[str, float]:
    """Oracle references for validation NELBO (synthetic data only): the manifest's floor
    (NLL per token of fresh true samples) and the exact oracle NLL per token of the
    validation rows themselves."""
    out: dict[str, float] = {}
    floor = (manifest.get("oracle") or {}).get("nll_per_token")
    if isinstance(floor, (int, float)):
        out["oracle_floor"] = float(floor)
    if (data_dir / "oracle.safetensors").is_file():
        from sbdcli.synthetic import load_oracle

        nll = -load_oracle(data_dir / "oracle.safetensors").log_likelihood(val_rows)  # (N,)
        out["oracle_val_nll"] = float(nll.sum() / (val_rows.shape[0] * (val_rows.shape[1] - 1)))
    return out


def new_run_dir(runs_root: Path, preset_name: str) -> Path:
    """A fresh `runs_root/<preset>-<YYYYmmdd-HHMMSS>[-n]` path (not created)."""
    base = f"{preset_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = runs_root / base, 1
    while path.exists():
        n += 1
        path = runs_root / f"{base}-{n}"
    return path


def point_latest(run_dir: Path, runs_root: Path) -> None:
    """Make `runs_root/latest` a relative symlink to `run_dir` when the run lives there."""
    if run_dir.resolve().parent != runs_root.resolve():
        return
    link = runs_root / "latest"
    tmp = runs_root / f".latest.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(run_dir.name)
    os.replace(tmp, link)


def resume_config(run_dir: Path, **changes: Any) -> TrainConfig:
    """The training config saved in `run_dir`, with the allowed `changes` applied.

    Changing anything but the step count, the val/save intervals, the val rows, the device
    or how the (unchanged) global batch is split is a UserError: a resumed run must continue
    the same optimisation.
    """
    if not (run_dir / "state" / "trainer.json").is_file():
        raise UserError(f"{run_dir} holds no resume state (state/trainer.json)")
    saved = artifacts.read_json(run_dir / "config.json", "run config")
    base = TrainConfig.from_dict(saved["train"])
    values = base.to_dict()
    for key, value in changes.items():
        if value is None or value == values.get(key):
            continue
        if key not in RESUMABLE_CHANGES:
            flag = FLAGS.get(key, "--" + key.replace("_", "-"))
            raise UserError(f"cannot change {flag} when resuming (the run used {values[key]})")
        values[key] = value
    return TrainConfig(**values)


def copy_data_files(data_dir: Path, run_dir: Path) -> None:
    """Copy the manifest, tokenizer and oracle (those present) into `run_dir/data`."""
    target = run_dir / "data"
    target.mkdir(parents=True, exist_ok=True)
    for name in DATA_COPIES:
        src = data_dir / name
        if src.is_file():
            with artifacts.atomic_path(target / name) as tmp:
                shutil.copyfile(src, tmp)


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines written after the checkpoint being resumed (a crash after it)."""
    if not path.is_file():
        return
    kept = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
    with artifacts.atomic_file(path) as handle:
        handle.write("".join(f"{ln}\n" for ln in kept))


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line to the run's metrics file (flushed, so `tail -f` follows it)."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")

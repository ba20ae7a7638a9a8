"""Building a run: the accelerator, the model, the data, the run directory's `config.json`.

- `setup(cfg, data_dir, out)` prepares a `Trainer`: a new run directory (default
  `runs_root/<preset>-<data>-<time>`), or with `resume=True` an existing one (default
  `runs_root/latest`); `train(...)` is `setup(...).fit(progress)`;
- `build_trainer` builds the pieces in order (`make_accelerator`, `load_run_data`, the
  block sizes and gradient accumulation, `build_model`), restores a resumed run and writes
  `config.json` (`run_config`) and `data/`;
- `resume_config`: the training config a resumed run continues with.

Not here: the loop (trainer.py), the resume state (checkpoint.py) or the run directory's
layout (artifacts/rundir.py).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import broadcast_object_list

import sbdcli.train.tracking as tracking
from sbdcli.artifacts.files import sha256_file
from sbdcli.artifacts.rundir import LOCK_FILE, RunDir, RunLock, new_run_dir, point_latest
from sbdcli.config import TrainConfig, preset
from sbdcli.data.datadir import TokenRows, data_label, read_data_manifest
from sbdcli.data.synthetic import oracle_references
from sbdcli.errors import UserError
from sbdcli.model.checkpoint import load_model
from sbdcli.model.denoiser import Denoiser
from sbdcli.train.checkpoint import restore_checkpoint
from sbdcli.train.state import RunData, resolve_block_sizes, seed_for
from sbdcli.train.trainer import StepInfo, Trainer, TrainSummary

RESUMABLE_CHANGES = (
    "steps", "val_every", "save_every", "val_rows", "device", "batch_size", "global_batch",
)  # fmt: skip
"""Training-config fields a resumed run may change; every other field must stay."""


# --------------------------------------------------------------------------- entry points
def setup(
    cfg: TrainConfig,
    data_dir: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    resume: bool = False,
    runs_root: str | os.PathLike[str] = "runs",
    log_with: tuple[str, ...] = (),
) -> Trainer:
    """Prepare a run: a new one in `out` (default `runs_root/<preset>-<data>-<time>`), or, with
    `resume`, the existing run `out` (default `runs_root/latest`). `log_with`: accelerate
    trackers that watch the run (tracking.py)."""
    tracking.check_trackers(log_with)
    data, root = Path(data_dir), Path(runs_root)
    if not (data / "manifest.json").is_file():
        raise UserError(f"no data at {data}: manifest.json missing (run 'sbd prepare' first)")
    run_dir = (
        _resumed_dir(out, root) if resume else _new_dir(out, root, cfg.preset, data_label(data))
    )
    existed = run_dir.exists()
    lock, notes = _claim(RunDir(run_dir), resume) if _is_main_process() else (None, [])
    try:
        trainer = build_trainer(cfg, data, run_dir, resume, log_with)
    except BaseException:
        if lock is not None:
            _undo_claim(RunDir(run_dir), lock, existed)
        raise
    trainer.run_lock = lock  # held for the life of the process (the kernel drops it at exit)
    trainer.notes[:0] = notes
    if trainer.is_main:
        before = point_latest(run_dir, root)
        if before is not None:
            trainer.notes.append(
                f"{root / 'latest'} now points at {run_dir.name} (was {before}): commands "
                "without -m use this run"
            )
    return trainer


def _undo_claim(run: RunDir, lock: RunLock, existed: bool) -> None:
    """A start that failed leaves no trace: no new directory, no lock file."""
    lock.release()
    if not existed:
        shutil.rmtree(run.path, ignore_errors=True)
    elif run.entries() == [LOCK_FILE]:
        run.lock_path.unlink(missing_ok=True)


def _is_main_process() -> bool:
    """Process 0 of a launch (torchrun / accelerate set RANK), or a single process."""
    return int(os.environ.get("RANK", "0")) == 0


def _claim(run: RunDir, resume: bool) -> tuple[RunLock, list[str]]:
    """Take the run directory's writer lock; start an unfinished first run over."""
    lock = run.lock()
    notes = []
    if not resume and run.is_unfinished():
        run.clear_unfinished()
        notes.append(f"{run.path} held an unfinished run without a checkpoint: starting over")
    return lock, notes


def train(
    cfg: TrainConfig,
    data_dir: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    resume: bool = False,
    runs_root: str | os.PathLike[str] = "runs",
    progress: Callable[[StepInfo], None] | None = None,
    log_with: tuple[str, ...] = (),
) -> TrainSummary:
    """`setup(...)` then `fit(progress)`: train a model and return the summary."""
    trainer = setup(cfg, data_dir, out, resume=resume, runs_root=runs_root, log_with=log_with)
    return trainer.fit(progress)


def _resumed_dir(out: str | os.PathLike[str] | None, root: Path) -> Path:
    run_dir = Path(out) if out is not None else root / "latest"
    _check_resumable(RunDir(run_dir))
    return run_dir.resolve() if run_dir.is_symlink() else run_dir


def _check_resumable(run: RunDir) -> None:
    """Not locked by a live writer, and holding a checkpoint to continue from."""
    _check_not_locked(run)
    if run.is_unfinished():
        raise UserError(
            f"{run.path} holds an unfinished run without a checkpoint: nothing to resume; "
            f"'sbd train --out {run.path}' (without --resume) starts it over"
        )
    if not run.has_state():
        raise UserError(f"nothing to resume at {run.path} (no state/trainer.json)")


def _new_dir(
    out: str | os.PathLike[str] | None, root: Path, preset_name: str, data_name: str
) -> Path:
    run_dir = Path(out) if out is not None else _agreed_name(root, preset_name, data_name)
    run = RunDir(run_dir)
    _check_not_locked(run)
    if [n for n in run.entries() if n != LOCK_FILE] and not run.is_unfinished():
        raise UserError(f"run directory {run_dir} exists and is not empty (use --resume)")
    return run_dir


def _check_not_locked(run: RunDir) -> None:
    """A run directory another live process writes is refused first, naming its pid."""
    if _is_main_process():
        run.check_unlocked()


def _agreed_name(root: Path, preset_name: str, data_name: str) -> Path:
    """A new run path chosen by process 0 and shared with every process of the launch."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return new_run_dir(root, preset_name, data_name)
    PartialState()  # joins the launch's process group
    box = [new_run_dir(root, preset_name, data_name).name]
    broadcast_object_list(box, from_process=0)
    return root / box[0]


# --------------------------------------------------------------------------- the pieces
def build_trainer(
    cfg: TrainConfig, data_dir: Path, run_dir: Path, resume: bool, log_with: tuple[str, ...] = ()
) -> Trainer:
    """Build everything (a fresh or a resumed run); this seeds the global torch RNG (dropout)
    per process. Process 0 then writes `config.json` and `data/` and starts the trackers."""
    accelerator = make_accelerator(cfg, tracking.tracker_kwargs(log_with, run_dir))
    data = load_run_data(data_dir, cfg.val_rows)
    small, large, notes = resolve_block_sizes(cfg.block_small, cfg.block_large, data.length)
    accum = accumulation(cfg, accelerator.num_processes)
    denoiser = build_model(cfg, data.manifest, data.length, notes)
    trainer = Trainer(
        cfg, run_dir, accelerator, data, denoiser, blocks=(small, large), accum=accum, notes=notes
    )
    if resume:
        restore_checkpoint(trainer)
    if trainer.is_main:
        write_run_files(trainer)
    tracking.start(accelerator, log_with, run_dir, run_config(trainer))
    trainer.tracked = bool(log_with)
    accelerator.wait_for_everyone()
    return trainer


def make_accelerator(cfg: TrainConfig, trackers: dict[str, Any] | None = None) -> Accelerator:
    """The `Accelerator` of `cfg.device`, `cfg.precision` and `cfg.compile` (and of the
    trackers' `log_with` / `project_dir`, tracking.py)."""
    cuda = torch.cuda.is_available()
    if cfg.device == "cuda" and not cuda:
        raise UserError("`device` cuda requested but no CUDA device is available")
    on_cpu = cfg.device == "cpu" or not cuda
    precision = cfg.precision
    if precision == "auto":
        precision = "no" if on_cpu else "bf16"
    accelerator = Accelerator(
        cpu=on_cpu,
        mixed_precision="no" if precision == "fp32" else precision,
        dynamo_backend="inductor" if cfg.compile else "no",
        **(trackers or {}),
    )
    _check_sharded(accelerator)
    return accelerator


def _check_sharded(accelerator: Accelerator) -> None:
    """An FSDP launch (`distributed_type: FSDP`) on CPU processes is refused: accelerate runs
    FSDP only on accelerator devices and would silently train plain data-parallel instead."""
    wants = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if wants and accelerator.device.type == "cpu":
        raise UserError(
            "an FSDP launch on CPU processes: accelerate shards only on GPUs (on CPUs it "
            "would run unsharded data parallelism); use examples/accelerate/cpu.yaml "
            "(data parallelism) or GPUs"
        )


def load_run_data(data_dir: Path, val_rows: int) -> RunData:
    """Manifest, lazily read training rows, the first `val_rows` validation rows (0: all)
    and the oracle references."""
    manifest = read_data_manifest(data_dir)
    rows = TokenRows(data_dir, "train", manifest)
    if rows.seq_len != int(manifest["seq_len"]):
        raise UserError(f"{data_dir}: rows of {rows.seq_len} tokens, manifest says "
                        f"{manifest['seq_len']}")  # fmt: skip
    val = TokenRows(data_dir, "val", manifest).head(val_rows)
    if val.shape[0] == 0:
        raise UserError(f"{data_dir} has no validation rows (prepare with --num-val > 0)")
    return RunData(data_dir, manifest, rows, val, oracle_references(data_dir, manifest, val))


def accumulation(cfg: TrainConfig, processes: int) -> int:
    """Micro-batches per optimizer step that make up `cfg.global_batch`."""
    per_pass = cfg.batch_size * processes
    if cfg.global_batch is None:
        return 1
    if cfg.global_batch % per_pass:
        raise UserError(
            f"global batch {cfg.global_batch} is not a multiple of batch size {cfg.batch_size} "
            f"x {processes} process(es) = {per_pass}"
        )
    return cfg.global_batch // per_pass


def build_model(
    cfg: TrainConfig, manifest: dict[str, Any], length: int, notes: list[str]
) -> torch.nn.Module:
    """A fresh denoiser from the preset (seeded), or the weights of `cfg.init`."""
    if cfg.init is not None:
        model = _init_model(cfg.init, manifest, length, notes)
        if cfg.time_conditioning and not model.config.time_conditioning:
            model.config = dataclasses.replace(model.config, time_conditioning=True)
        return model
    config = preset(
        cfg.preset,
        vocab_size=int(manifest["vocab_size"]),
        mask_id=int(manifest["mask_id"]),
        seq_len=length,
        bos_id=manifest.get("bos_id"),
        eos_id=manifest.get("eos_id"),
        time_conditioning=cfg.time_conditioning,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_for(cfg.seed, "init"))
        return Denoiser(config).train()


def _init_model(
    init: str, manifest: dict[str, Any], length: int, notes: list[str]
) -> torch.nn.Module:
    """The weights of an sbd run or a BD3-LM/MDLM checkpoint, checked against the data."""
    vocab, mask_id = int(manifest["vocab_size"]), int(manifest["mask_id"])
    model = load_model(init)
    got = model.config
    if got.vocab_size != vocab or got.mask_id != mask_id:
        raise UserError(
            f"`init` {init} has vocab {got.vocab_size} (mask {got.mask_id}) but the data "
            f"has vocab {vocab} (mask {mask_id})"
        )
    if got.seq_len != length:
        notes.append(f"--init model was trained at L = {got.seq_len}; training at L = {length}")
        model.config = dataclasses.replace(got, seq_len=length)
    return model.train()


# --------------------------------------------------------------------------- config.json
def run_config(trainer: Trainer) -> dict[str, Any]:
    """What `config.json` says of a run: model, training config, data provenance, launch."""
    acc = trainer.accelerator
    return {
        "model": trainer.model_config.to_dict(),
        "train": trainer.cfg.to_dict(),
        "data": {
            "dir": str(trainer.data_dir.resolve()),
            "manifest_sha256": sha256_file(trainer.data_dir / "manifest.json"),
            "seq_len": trainer.length,
            "vocab_size": trainer.model_config.vocab_size,
            "train_rows": trainer.train_rows.n_rows,
            "val_rows_used": int(trainer.val_rows.shape[0]),
            "source": trainer.manifest.get("source"),
        },
        "processes": trainer.processes,
        "distributed_type": str(acc.distributed_type.value),
        "mixed_precision": acc.mixed_precision,
        "global_batch": trainer.global_batch,
        "gradient_accumulation": trainer.accum,
        "block_sizes": trainer.sizes,
        "reference": trainer.reference,
    }


def write_run_files(trainer: Trainer) -> None:
    """`config.json` and `data/`; rewritten on resume, so they describe the run as it
    continues. An empty `metrics.jsonl` is created for a new run."""
    run = trainer.run
    run.path.mkdir(parents=True, exist_ok=True)
    run.copy_data_files(trainer.data_dir)
    run.write_config(run_config(trainer))
    run.metrics_path.touch()


# --------------------------------------------------------------------------- resume
def resume_config(run_dir: Path, **changes: Any) -> TrainConfig:
    """The training config saved in `run_dir`, with the allowed `changes` applied.

    Changing anything but the step count, the val/save intervals, the val rows, the device
    or how the (unchanged) global batch is split is a UserError: a resumed run must continue
    the same optimisation.
    """
    run = RunDir(run_dir)
    _check_resumable(run)
    values = TrainConfig.from_dict(run.config()["train"]).to_dict()
    for key, value in changes.items():
        if value is None or value == values.get(key):
            continue
        if key not in RESUMABLE_CHANGES:
            raise UserError(f"cannot change `{key}` when resuming (the run used {values[key]})")
        values[key] = value
    return TrainConfig(**values)

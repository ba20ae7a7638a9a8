"""Saving and restoring a run's exact resume state, and writing its `model.safetensors`.

- `save_checkpoint(trainer)`: full (unsharded) state dicts of the raw and the EMA weights
  and of the optimizer, every process's RNG state, then (process 0) `RUN/state/` and
  `RUN/model.safetensors` (EMA weights, sampling header);
- `restore_checkpoint(trainer)`: the inverse: weights, EMA, optimizer, schedule position,
  RNG streams and data position, so a resumed run continues exactly;
- `gather_rng`: every process's global torch (and CUDA) RNG state;
- `flatten_optimizer_state` / `unflatten_optimizer_state`: an optimizer state dict as
  safetensors tensors plus a JSON remainder, so resume state never needs pickle;
- `write_state` / `read_state`: the resume state directory (`RUN/state/`): one safetensors
  file per group (model, ema, optimizer, rng) and `trainer.json` (read through `RunDir`).

Not here: the pieces being saved (state.py), the loop (trainer.py), the run directory's
layout (artifacts/rundir.py) or the model file format (model/checkpoint.py).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from sbdcli.artifacts.files import atomic_dir, sha256_file, write_json
from sbdcli.artifacts.rundir import RunDir
from sbdcli.artifacts.tensors import load_tensors, save_tensors
from sbdcli.config import ModelConfig
from sbdcli.errors import UserError
from sbdcli.model.checkpoint import save_sbd_model
from sbdcli.model.denoiser import Denoiser
from sbdcli.train.state import EMA, LoopCounters


class Trainer(Protocol):
    """What saving and restoring need of a trainer (train/trainer.py's `Trainer` is one).

    Declared here so this module does not import the trainer, which imports it."""

    cfg: Any
    model: torch.nn.Module
    model_config: ModelConfig
    optimizer: Any
    accelerator: Any
    ema: EMA | None
    named: dict[str, torch.nn.Parameter]
    sampler: Any
    noise: torch.Generator
    progress_state: LoopCounters
    run: RunDir
    run_dir: Path
    data_dir: Path
    manifest: dict[str, Any]
    notes: list[str]
    sizes: list[int]
    length: int
    global_batch: int
    processes: int
    rank: int
    is_main: bool

    def ema_weights(self) -> AbstractContextManager[Any]: ...


STATE_SCHEMA = "sbd.train_state"
STATE_GROUPS = ("model", "ema", "optimizer", "rng")


# --------------------------------------------------------------------------- save
def save_checkpoint(trainer: Trainer) -> None:
    """Write `model.safetensors` (EMA weights) and `state/` (resume state); all ranks call."""
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    raw = _strip(get_model_state_dict(trainer.model, options=opts))  # copies, not aliases
    with trainer.ema_weights():
        ema = _strip(get_model_state_dict(trainer.model, options=opts))
    optim = get_optimizer_state_dict(trainer.model, trainer.optimizer.optimizer, options=opts)
    rng = gather_rng(trainer.accelerator, trainer.processes)
    if trainer.is_main:
        tensors, optim_meta = flatten_optimizer_state(optim)
        rng = {**rng, "blocks": trainer.sampler.state(), "noise": trainer.noise.get_state()}
        groups = {"model": raw, "ema": ema, "optimizer": tensors, "rng": rng}
        write_state(trainer.run, groups, _trainer_json(trainer, optim_meta))
        write_model(trainer.model_config, ema, trainer.run, _model_header(trainer))
    trainer.accelerator.wait_for_everyone()


def gather_rng(accelerator: Any, processes: int) -> dict[str, torch.Tensor]:
    """Every process's global torch (and CUDA) RNG state, gathered to all processes."""
    mine = [torch.get_rng_state()]
    if torch.cuda.is_available() and accelerator.device.type == "cuda":
        mine.append(torch.cuda.get_rng_state(accelerator.device))
    flat = torch.cat(mine)  # (n,) uint8
    sizes = [m.numel() for m in mine]
    if processes > 1:
        flat = accelerator.gather(flat.to(accelerator.device)).cpu()
    flat = flat.view(processes, -1)
    out: dict[str, torch.Tensor] = {}
    for rank in range(processes):
        parts = flat[rank].split(sizes)
        out[f"torch.rank{rank}"] = parts[0].clone()
        if len(parts) > 1:
            out[f"cuda.rank{rank}"] = parts[1].clone()
    return out


def _trainer_json(trainer: Trainer, optim_meta: dict[str, Any]) -> dict[str, Any]:
    """The counters of `state/trainer.json` (beside the schema `write_state` adds)."""
    st = trainer.progress_state
    return {
        "step": st.step,
        "data_position": st.step * trainer.global_batch,
        "tokens": st.tokens,
        "elapsed_s": st.elapsed_s,
        "eps": {str(b): v for b, v in st.eps.items()},
        "last_val": {str(b): v for b, v in st.last_val.items()},
        "ema_updates": trainer.ema.updates if trainer.ema else 0,
        "processes": trainer.processes,
        "global_batch": trainer.global_batch,
        "optimizer": optim_meta,
    }


def _model_header(trainer: Trainer) -> dict[str, Any]:
    """The JSON header of `model.safetensors`: what a sampler needs to know of the run."""
    st = trainer.progress_state
    return {
        "step": st.step,
        "ema": trainer.cfg.ema,
        "weights": "ema" if trainer.ema else "raw",
        "sampling_eps": {str(b): v for b, v in st.eps.items()},
        "block_sizes": trainer.sizes,
        "val_nelbo": {str(b): v for b, v in st.last_val.items()},
        "data": {"source": trainer.manifest.get("source"), "seq_len": trainer.length},
    }


def write_model(
    config: ModelConfig, state: dict[str, torch.Tensor], run: RunDir, header: dict[str, Any]
) -> None:
    """Write `RUN/model.safetensors` from a full CPU state dict of a `Denoiser`."""
    with torch.device("meta"):
        model = Denoiser(config)
    model.load_state_dict(state, assign=True)
    save_sbd_model(model.eval(), run.model_path, header)


# --------------------------------------------------------------------------- restore
def restore_checkpoint(trainer: Trainer) -> None:
    """Restore model, EMA, optimizer, schedule position, RNG streams and data position."""
    groups, meta = read_state(trainer.run)
    _check_resumable(trainer, meta)
    _load_weights(trainer, groups, meta)
    _load_rng(trainer, groups["rng"], meta)
    _load_progress(trainer.progress_state, meta)
    if trainer.is_main:
        trainer.run.truncate_metrics(trainer.progress_state.step)
    trainer.notes.append(f"resuming {trainer.run_dir} at step {trainer.progress_state.step}")


def _check_resumable(trainer: Trainer, meta: dict[str, Any]) -> None:
    """A note when the data changed; a UserError when the global batch did."""
    sha = sha256_file(trainer.data_dir / "manifest.json")
    if trainer.run.config().get("data", {}).get("manifest_sha256") != sha:
        trainer.notes.append(f"the data at {trainer.data_dir} differs from the run's original data")
    if meta["global_batch"] != trainer.global_batch:
        raise UserError(
            f"the run used a global batch of {meta['global_batch']} rows; this launch "
            f"gives {trainer.global_batch}: pass `global_batch` {meta['global_batch']}"
        )


def _load_weights(
    trainer: Trainer, groups: dict[str, dict[str, torch.Tensor]], meta: dict[str, Any]
) -> None:
    """The EMA shadow (rebuilt from the saved EMA weights), the raw weights, the optimizer."""
    opts = StateDictOptions(full_state_dict=True)
    set_model_state_dict(trainer.model, _prefix(groups["ema"]), options=opts)
    if trainer.ema is not None:
        trainer.ema = EMA(trainer.named, trainer.cfg.ema, trainer.cfg.ema_warmup)
        trainer.ema.updates = int(meta["ema_updates"])
    set_model_state_dict(trainer.model, _prefix(groups["model"]), options=opts)
    optim = unflatten_optimizer_state(groups["optimizer"], meta["optimizer"])
    set_optimizer_state_dict(trainer.model, trainer.optimizer.optimizer, optim, options=opts)


def _load_rng(trainer: Trainer, rng: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Block-size and noise streams always; this rank's dropout streams when they exist."""
    trainer.sampler.load_state(rng["blocks"])
    trainer.noise.set_state(rng["noise"])
    key = f"torch.rank{trainer.rank}"
    if meta["processes"] != trainer.processes or key not in rng:
        trainer.notes.append(
            f"the run had {meta['processes']} processes, now {trainer.processes}: dropout "
            "RNG streams restart (the data order and noise continue exactly)"
        )
        return
    torch.set_rng_state(rng[key])
    cuda_key = f"cuda.rank{trainer.rank}"
    device = trainer.accelerator.device
    if cuda_key in rng and device.type == "cuda":
        torch.cuda.set_rng_state(rng[cuda_key], device)


def _load_progress(st: LoopCounters, meta: dict[str, Any]) -> None:
    st.step, st.tokens, st.elapsed_s = meta["step"], meta["tokens"], meta["elapsed_s"]
    st.eps.update({int(b): v for b, v in meta["eps"].items()})
    st.last_val = {int(b): v for b, v in meta.get("last_val", {}).items()}


def _strip(state: dict[str, torch.Tensor], prefix: str = "denoiser.") -> dict[str, torch.Tensor]:
    """CPU copies without the wrapper's prefix (state dicts may alias live parameters)."""
    return {k.removeprefix(prefix): v.detach().to("cpu", copy=True) for k, v in state.items()}


def _prefix(state: dict[str, torch.Tensor], prefix: str = "denoiser.") -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v for k, v in state.items()}


# --------------------------------------------------------------------------- optimizer state
def _json_safe(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    raise TypeError(f"optimizer state value of type {type(value).__name__} is not JSON-safe")


def flatten_optimizer_state(
    state_dict: dict[str, Any],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an FQN-keyed optimizer state dict into (tensors, JSON remainder).

    Tensors are named `state/<param fqn>/<key>`; scalars and param_groups go to JSON.
    """
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for fqn, entries in state_dict["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"state/{fqn}/{key}"] = value.detach().cpu()
            else:
                scalars.setdefault(str(fqn), {})[key] = _json_safe(value)
    groups = [{k: _json_safe(v) for k, v in g.items()} for g in state_dict["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def unflatten_optimizer_state(
    tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> dict[str, Any]:
    """Inverse of `flatten_optimizer_state` (betas come back as tuples)."""
    state: dict[str, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, rest = name.split("/", 1)
        fqn, key = rest.rsplit("/", 1)
        state.setdefault(fqn, {})[key] = value
    for fqn, entries in meta.get("scalars", {}).items():
        state.setdefault(fqn, {}).update(entries)
    groups = []
    for g in meta["param_groups"]:
        group = dict(g)
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


# --------------------------------------------------------------------------- state directory
def write_state(
    run: RunDir, groups: dict[str, dict[str, torch.Tensor]], meta: dict[str, Any]
) -> None:
    """Write `RUN/state/<group>.safetensors` for each group and `trainer.json`, replacing an
    earlier state only once the new one is complete."""
    with atomic_dir(run.state_dir) as tmp:
        for name in STATE_GROUPS:
            save_tensors(tmp / f"{name}.safetensors", groups[name], STATE_SCHEMA)
        write_json(tmp / run.trainer_state_path.name, {"schema": STATE_SCHEMA, **meta})


def read_state(run: RunDir) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """The tensor groups and the JSON of a state directory written by `write_state`."""
    meta = run.trainer_state()
    if meta.get("schema") != STATE_SCHEMA:
        raise UserError(f"{run.trainer_state_path} is not an sbd training state")
    groups = {}
    for name in STATE_GROUPS:
        groups[name], _ = load_tensors(run.state_dir / f"{name}.safetensors", STATE_SCHEMA)
    return groups, meta

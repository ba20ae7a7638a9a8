"""Mix-scale block-diffusion training (METHOD §4-5) on `accelerate`, and the run directory.

`setup(config, data_dir, out)` builds a `Trainer`: it reads the data manifest, builds or
loads the denoiser, creates (or reopens, with `resume=True`) the run directory and wraps
everything in an `Accelerator` (one process, or DDP/FSDP under `torchrun` /
`accelerate launch`). `Trainer.fit(progress)` runs the loop:

- per optimizer step, the block size B ~ (1 - lambda) delta(B_small) + lambda delta(B_large);
- the noise (one antithetic t per (row, block) and the masks) is drawn for the whole global
  batch from one generator shared by all processes, then sliced per process and
  micro-batch, so 2 processes x b rows and 1 process x 2b rows compute the same step;
- loss `loss.block_nelbo`, gradient accumulation up to `global_batch`, grad clip, AdamW,
  warmup then constant or cosine, EMA of the weights;
- validation NELBO (EMA weights, t in [1e-3, 1]) at every block size in use, optional
  variance-minimising clip search, checkpoints, exact resume, Ctrl-C checkpoint.

Run directory (`RUN/`): `model.safetensors` (EMA weights), `config.json`, `data/` (copies of
the manifest, tokenizer and oracle), `metrics.jsonl`, `state/` (resume state, safetensors
and JSON only). `runs/latest` points at the newest run under the runs root.

Not here: the network (model.py), the loss (loss.py), the state pieces (trainstate.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sbdcli import artifacts
from sbdcli.artifacts.rundir import RunDir, new_run_dir, point_latest
from sbdcli.config import ModelConfig, TrainConfig, preset
from sbdcli.data.datadir import TokenRows, read_data_manifest
from sbdcli.data.synthetic import oracle_references
from sbdcli.errors import UserError
from sbdcli.train.build import resume_config
from sbdcli.train.state import (
    EMA,
    BlockSizeSampler,
    DataOrder,
    flatten_optimizer_state,
    lr_at,
    read_state,
    resolve_block_sizes,
    seed_for,
    unflatten_optimizer_state,
    write_state,
)

__all__ = ["StepInfo", "TrainSummary", "Trainer", "draw_noise", "resume_config", "setup", "train"]


@dataclass
class StepInfo:
    """What the loop reports after each optimizer step (and each validation)."""

    step: int
    steps: int
    loss: float
    block_size: int
    lr: float
    tokens_per_s: float
    elapsed_s: float
    grad_norm: float | None = None
    val: dict[int, float] | None = None


@dataclass
class TrainSummary:
    """The outcome of `Trainer.fit`."""

    run_dir: Path
    step: int
    val: dict[int, float]
    reference: dict[str, float]
    processes: int
    seconds: float
    is_main: bool


# --------------------------------------------------------------------------- noise
def draw_noise(
    rows: int,
    length: int,
    block: int,
    generator: torch.Generator,
    eps: tuple[float, float],
    resample: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block levels t (rows, L / block) and masks (rows, L) for a whole (global) batch.

    The same draws as `loss.block_nelbo` makes internally (antithetic t per (row, block),
    mask token i with probability t, BOS never), made once per global batch so that how the
    batch is split over processes and micro-batches does not change the step.
    """
    from sbdcli.diffusion.schedule import resample_masks, sample_masks, sample_t

    t = sample_t(rows, length // block, generator=generator, eps_min=eps[0], eps_max=eps[1])
    t_tok = t.repeat_interleave(block, dim=1)  # (rows, L)
    masked = sample_masks(t_tok, generator)
    if resample:
        masked = resample_masks(masked, t_tok, block, eps[0], eps[1], generator)
    return t, masked


class _TrainForward(torch.nn.Module):
    """Routes forward() to `Denoiser.train_logits`, so DDP/FSDP wrappers see a forward call."""

    def __init__(self, denoiser: torch.nn.Module) -> None:
        super().__init__()
        self.denoiser = denoiser

    def forward(
        self, x_t: torch.Tensor, x_0: torch.Tensor, block_size: int, sigma: Any = None
    ) -> torch.Tensor:
        return self.denoiser.train_logits(x_t, x_0, block_size, sigma=sigma)  # (B, L, V)


class _LossView:
    """What `block_nelbo` needs of a model (`.config`, `.train_logits`), via the wrapper."""

    def __init__(self, wrapped: torch.nn.Module, config: ModelConfig) -> None:
        self.wrapped, self.config = wrapped, config

    def train_logits(self, x_t: Any, x_0: Any, block_size: int, sigma: Any = None) -> Any:
        return self.wrapped(x_t, x_0, block_size, sigma)

    @property
    def training(self) -> bool:
        return self.wrapped.training

    def train(self, mode: bool = True) -> _LossView:
        self.wrapped.train(mode)
        return self

    def eval(self) -> _LossView:
        return self.train(False)


# --------------------------------------------------------------------------- signals
class _StopFlag:
    """Set by SIGINT/SIGTERM while training; the loop stops at the next step boundary."""

    def __init__(self) -> None:
        self.requested = False

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            self.requested = True
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a 2nd Ctrl-C is hard

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


# --------------------------------------------------------------------------- trainer
@dataclass
class _Progress:
    step: int = 0
    tokens: int = 0
    elapsed_s: float = 0.0
    eps: dict[int, list[float]] = field(default_factory=dict)
    last_val: dict[int, float] = field(default_factory=dict)


class Trainer:
    """A prepared training run; see the module docstring. Build it with `setup`."""

    def __init__(self, cfg: TrainConfig, data_dir: Path, run_dir: Path, resume: bool) -> None:
        """Build everything; this seeds the global torch RNG (dropout) per process."""
        self.cfg, self.data_dir, self.run_dir = cfg, data_dir, run_dir
        self.run = RunDir(run_dir)
        self.notes: list[str] = []
        self.accelerator = acc = _make_accelerator(cfg)
        self.is_main, self.processes = acc.is_main_process, acc.num_processes
        self.rank = acc.process_index
        self._setup_data()
        small, large, notes = resolve_block_sizes(cfg.block_small, cfg.block_large, self.length)
        self.notes += notes
        self.sizes = [large] if cfg.mix_lambda >= 1.0 else sorted({small, large})
        if cfg.mix_lambda == 0.0:
            self.sizes = [small]
        self.sampler = BlockSizeSampler(small, large, cfg.mix_lambda, seed_for(cfg.seed, "blocks"))
        self.accum = _accumulation(cfg, self.processes)
        self.global_batch = cfg.batch_size * self.processes * self.accum
        self.denoiser = _build_model(cfg, self.manifest, self.length, self.notes)
        self.model_config: ModelConfig = self.denoiser.config
        self._prepare()
        self.order = DataOrder(self.train_rows.n_rows, cfg.seed)
        self.noise = torch.Generator().manual_seed(seed_for(cfg.seed, "noise"))
        torch.manual_seed(seed_for(cfg.seed, "dropout", self.rank))
        self.progress_state = _Progress(eps=_initial_eps(cfg, small, large, self.sizes))
        if resume:
            self._load_state()
        if self.is_main:
            self._write_run_files()
        acc.wait_for_everyone()

    # ------------------------------------------------------------------ construction
    def _setup_data(self) -> None:
        """Manifest, lazily read training rows, the validation rows and the references."""
        self.manifest = read_data_manifest(self.data_dir)
        self.train_rows = TokenRows(self.data_dir, "train", self.manifest)
        self.length = self.train_rows.seq_len
        if self.length != int(self.manifest["seq_len"]):
            raise UserError(f"{self.data_dir}: rows of {self.length} tokens, manifest says "
                            f"{self.manifest['seq_len']}")  # fmt: skip
        self.val_rows = TokenRows(self.data_dir, "val", self.manifest).head(self.cfg.val_rows)
        if self.val_rows.shape[0] == 0:
            raise UserError(f"{self.data_dir} has no validation rows (prepare with --num-val > 0)")
        self.reference = oracle_references(self.data_dir, self.manifest, self.val_rows)

    def _prepare(self) -> None:
        """AdamW (no decay on gains, biases, embeddings), accelerate wrapping, EMA."""
        cfg, acc = self.cfg, self.accelerator
        wrapper = _TrainForward(self.denoiser)
        decay, no_decay = [], []
        for name, p in wrapper.named_parameters():
            (no_decay if p.ndim < 2 or "embedding" in name else decay).append(p)
        groups = [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(
            groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps
        )
        self.model, self.optimizer = acc.prepare(wrapper, optimizer)
        self.denoiser = acc.unwrap_model(self.model).denoiser
        self.loss_view = _LossView(self.model, self.model_config)
        self.named = dict(self.denoiser.named_parameters())
        self.ema = EMA(self.named, cfg.ema, cfg.ema_warmup) if cfg.ema > 0 else None

    def _write_run_files(self) -> None:
        """`config.json` (model, training config, data provenance, processes) and `data/`;
        rewritten on resume, so they describe the run as it continues."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run.copy_data_files(self.data_dir)
        manifest_sha = artifacts.sha256_file(self.data_dir / "manifest.json")
        config = {
            "model": self.model_config.to_dict(),
            "train": self.cfg.to_dict(),
            "data": {
                "dir": str(self.data_dir.resolve()),
                "manifest_sha256": manifest_sha,
                "seq_len": self.length,
                "vocab_size": self.model_config.vocab_size,
                "train_rows": self.train_rows.n_rows,
                "val_rows_used": int(self.val_rows.shape[0]),
                "source": self.manifest.get("source"),
            },
            "processes": self.processes,
            "distributed_type": str(self.accelerator.distributed_type.value),
            "mixed_precision": self.accelerator.mixed_precision,
            "global_batch": self.global_batch,
            "gradient_accumulation": self.accum,
            "block_sizes": self.sizes,
            "reference": self.reference,
        }
        self.run.write_config(config)
        self.run.metrics_path.touch()

    # ------------------------------------------------------------------ loop
    def fit(self, progress: Callable[[StepInfo], None] | None = None) -> TrainSummary:
        """Train up to `cfg.steps`; on SIGINT/SIGTERM save and raise KeyboardInterrupt."""
        cfg, st = self.cfg, self.progress_state
        stop = _StopFlag()
        start = time.perf_counter() - st.elapsed_s
        with stop.installed():
            while st.step < cfg.steps:
                info = self._step()
                st.elapsed_s = time.perf_counter() - start
                info.elapsed_s = st.elapsed_s
                if _due(st.step, cfg.val_every, cfg.steps):
                    info.val = self.validate()
                self._log(info)
                if progress is not None and self.is_main:
                    progress(info)
                if self._agreed(stop.requested):
                    self.save()
                    raise KeyboardInterrupt
                if _due(st.step, cfg.save_every, cfg.steps):
                    self.save()
        if not st.last_val:
            st.last_val = self.validate()
        return TrainSummary(
            self.run_dir,
            st.step,
            dict(st.last_val),
            dict(self.reference),
            self.processes,
            st.elapsed_s,
            self.is_main,
        )

    def _step(self) -> StepInfo:
        """One optimizer step: block size, LR, gradients, clip, AdamW, EMA, bookkeeping."""
        cfg, st = self.cfg, self.progress_state
        t0 = time.perf_counter()
        block = self.sampler.draw()
        lr = lr_at(st.step, cfg.lr, cfg.warmup, cfg.steps, cfg.schedule, cfg.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss = self.forward_backward(block)
        if not math.isfinite(loss):  # before the update: the saved state stays usable
            raise UserError(
                f"training diverged: loss {loss} at step {st.step + 1} (try a lower --lr or "
                f"a longer --warmup; the last checkpoint is in {self.run_dir / 'state'})"
            )
        norm = None
        if cfg.grad_clip > 0:
            norm = self.accelerator.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.named)
        st.step += 1
        st.tokens += self.global_batch * self.length
        tokens_per_s = self.global_batch * self.length / max(time.perf_counter() - t0, 1e-9)
        grad_norm = None if norm is None else float(norm)
        return StepInfo(st.step, cfg.steps, loss, block, lr, tokens_per_s, 0.0, grad_norm)

    def forward_backward(self, block: int) -> float:
        """Gradients of the current step's global batch at block size `block`.

        Draws the step's noise for the whole global batch, runs this process's micro-batches
        (`.grad` ends up averaged over processes, summed over micro-batches / accumulation)
        and returns the loss averaged over the global batch. Advances the noise stream.
        """
        cfg, st, acc = self.cfg, self.progress_state, self.accelerator
        eps = tuple(st.eps[block])
        t, masked = draw_noise(self.global_batch, self.length, block, self.noise, eps, cfg.resample)
        index = self.order.rows(st.step * self.global_batch, self.global_batch)
        self.model.train()
        total = torch.zeros((), device=acc.device)
        for k in range(self.accum):
            lo = (k * self.processes + self.rank) * cfg.batch_size
            sl = slice(lo, lo + cfg.batch_size)
            total += self._micro_step(index[sl], t[sl], masked[sl], block, k)
        return float(acc.reduce(total / self.accum, reduction="mean"))

    def _micro_step(
        self, index: torch.Tensor, t: torch.Tensor, masked: torch.Tensor, block: int, k: int
    ) -> torch.Tensor:
        from sbdcli.diffusion.loss import block_nelbo

        acc = self.accelerator
        x0 = self.train_rows.get(index).to(acc.device)  # (b, L)
        x_t = torch.where(masked.to(acc.device), self.model_config.mask_id, x0)
        last = k == self.accum - 1
        sync = contextlib.nullcontext() if last else acc.no_sync(self.model)
        with sync:
            with acc.autocast():
                out = block_nelbo(self.loss_view, x0, block, t=t.to(acc.device), x_t=x_t)
            acc.backward(out.loss / self.accum)
        return out.loss.detach()

    def _agreed(self, flag: bool) -> bool:
        """True on every process when any process saw a stop request."""
        if self.processes == 1:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.accelerator.device)
        return bool(self.accelerator.reduce(value, reduction="sum").item() > 0)

    def _log(self, info: StepInfo) -> None:
        if not self.is_main:
            return
        record: dict[str, Any] = {
            "step": info.step,
            "loss": info.loss,
            "block_size": info.block_size,
            "lr": info.lr,
            "tokens_per_s": info.tokens_per_s,
            "grad_norm": info.grad_norm,
            "tokens": self.progress_state.tokens,
            "elapsed_s": info.elapsed_s,
            "processes": self.processes,
        }
        if info.val is not None:
            record["val_nelbo"] = {str(b): v for b, v in info.val.items()}
            record.update(self.reference)
        self.run.append_metrics(record)

    # ------------------------------------------------------------------ validation
    @contextlib.contextmanager
    def ema_weights(self) -> Iterator[_LossView]:
        """The model (as `block_nelbo` sees it) with EMA weights swapped in, in eval mode."""
        scope = self.ema.swapped_into(self.named) if self.ema else contextlib.nullcontext()
        with scope:
            self.model.eval()
            try:
                yield self.loss_view
            finally:
                self.model.train()

    @torch.no_grad()
    def validate(self) -> dict[int, float]:
        """Validation NELBO per token (t in [1e-3, 1], EMA weights) at each block size in use.

        The noise for all validation rows is drawn from one fixed seed, so every evaluation
        (and any number of processes) sees the same corruption; rows are split over processes.
        """
        out: dict[int, float] = {}
        with self.ema_weights() as model:
            for block in self.sizes:
                out[block] = self._val_nelbo(model, block)
            if self.cfg.clip_search:
                self._clip_search(model)
        self.progress_state.last_val = out
        return out

    def _val_nelbo(self, model: _LossView, block: int) -> float:
        from sbdcli.diffusion.loss import block_nelbo

        acc, rows, mask_id = self.accelerator, self.val_rows, self.model_config.mask_id
        gen = torch.Generator().manual_seed(seed_for(self.cfg.seed, "val", block))
        t, masked = draw_noise(rows.shape[0], self.length, block, gen, (1e-3, 1.0), False)
        total = torch.zeros(2, dtype=torch.float64, device=acc.device)  # (sum, tokens)
        for chunk in torch.arange(self.rank, rows.shape[0], self.processes).split(
            self.cfg.batch_size
        ):
            x0 = rows[chunk].to(acc.device)  # (b, L)
            x_t = torch.where(masked[chunk].to(acc.device), mask_id, x0)
            with acc.autocast():
                res = block_nelbo(model, x0, block, t=t[chunk].to(acc.device), x_t=x_t)
            total[0] += res.token_nelbo[:, 1:].double().sum()
            total[1] += x0.shape[0] * (self.length - 1)
        total = acc.reduce(total, reduction="sum")
        return float(total[0] / total[1].clamp_min(1))

    def _clip_search(self, model: _LossView) -> None:
        """BD3-LM var_min: per block size, the interval with the least loss variance, found
        on up to 4 validation batches (process 0's choice is used by every process)."""
        from accelerate.utils import broadcast

        from sbdcli.diffusion.loss import clip_search

        rows = self.val_rows[: 4 * self.cfg.batch_size]
        batches = list(rows.to(self.accelerator.device).split(self.cfg.batch_size))
        for block in self.sizes:
            gen = torch.Generator().manual_seed(seed_for(self.cfg.seed, "val", 10_000 + block))
            found = clip_search(model, batches, block, generator=gen, resample=self.cfg.resample)
            pair = torch.tensor([found.eps_min, found.eps_max], dtype=torch.float64)
            pair = pair.to(self.accelerator.device)
            if self.processes > 1:
                pair = broadcast(pair, from_process=0)
            self.progress_state.eps[block] = [float(v) for v in pair.tolist()]
        self.denoiser.sampling_eps = tuple(self.progress_state.eps[self.sizes[0]])

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> None:
        """Write `model.safetensors` (EMA weights) and `state/` (resume state); all ranks call."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        raw = _strip(get_model_state_dict(self.model, options=opts))  # copies, not aliases
        with self.ema_weights():
            ema = _strip(get_model_state_dict(self.model, options=opts))
        optim = get_optimizer_state_dict(self.model, self.optimizer.optimizer, options=opts)
        rng = self._gather_rng()
        if self.is_main:
            self._write_state(raw, ema, optim, rng)
        self.accelerator.wait_for_everyone()

    def _gather_rng(self) -> dict[str, torch.Tensor]:
        """Every process's global torch (and CUDA) RNG state, gathered to all processes."""
        mine = [torch.get_rng_state()]
        if torch.cuda.is_available() and self.accelerator.device.type == "cuda":
            mine.append(torch.cuda.get_rng_state(self.accelerator.device))
        flat = torch.cat(mine)  # (n,) uint8
        sizes = [m.numel() for m in mine]
        if self.processes > 1:
            flat = self.accelerator.gather(flat.to(self.accelerator.device)).cpu()
        flat = flat.view(self.processes, -1)
        out: dict[str, torch.Tensor] = {}
        for rank in range(self.processes):
            parts = flat[rank].split(sizes)
            out[f"torch.rank{rank}"] = parts[0].clone()
            if len(parts) > 1:
                out[f"cuda.rank{rank}"] = parts[1].clone()
        return out

    def _write_state(
        self,
        raw: dict[str, torch.Tensor],
        ema: dict[str, torch.Tensor],
        optim: dict[str, Any],
        rng: dict[str, torch.Tensor],
    ) -> None:
        from sbdcli.model.checkpoint import save_sbd_model

        st = self.progress_state
        tensors, optim_meta = flatten_optimizer_state(optim)
        rng = {**rng, "blocks": self.sampler.state(), "noise": self.noise.get_state()}
        trainer = {
            "step": st.step,
            "data_position": st.step * self.global_batch,
            "tokens": st.tokens,
            "elapsed_s": st.elapsed_s,
            "eps": {str(b): v for b, v in st.eps.items()},
            "last_val": {str(b): v for b, v in st.last_val.items()},
            "ema_updates": self.ema.updates if self.ema else 0,
            "processes": self.processes,
            "global_batch": self.global_batch,
            "optimizer": optim_meta,
        }
        groups = {"model": raw, "ema": ema, "optimizer": tensors, "rng": rng}
        write_state(self.run_dir / "state", groups, trainer)
        header = {
            "step": st.step,
            "ema": self.cfg.ema,
            "weights": "ema" if self.ema else "raw",
            "sampling_eps": {str(b): v for b, v in st.eps.items()},
            "block_sizes": self.sizes,
            "val_nelbo": {str(b): v for b, v in st.last_val.items()},
            "data": {"source": self.manifest.get("source"), "seq_len": self.length},
        }
        save_sbd_model(
            _cpu_denoiser(self.model_config, ema), self.run_dir / "model.safetensors", header
        )

    def _load_state(self) -> None:
        """Restore model, EMA, optimizer, schedule position, RNG streams and data position."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        groups, trainer = read_state(self.run_dir / "state")
        saved = self.run.config()
        sha = artifacts.sha256_file(self.data_dir / "manifest.json")
        if saved.get("data", {}).get("manifest_sha256") != sha:
            self.notes.append(f"the data at {self.data_dir} differs from the run's original data")
        if trainer["global_batch"] != self.global_batch:
            raise UserError(
                f"the run used a global batch of {trainer['global_batch']} rows; this launch "
                f"gives {self.global_batch}: pass --global-batch {trainer['global_batch']}"
            )
        opts = StateDictOptions(full_state_dict=True)
        set_model_state_dict(self.model, _prefix(groups["ema"]), options=opts)
        if self.ema is not None:
            self.ema = EMA(self.named, self.cfg.ema, self.cfg.ema_warmup)
            self.ema.updates = int(trainer["ema_updates"])
        set_model_state_dict(self.model, _prefix(groups["model"]), options=opts)
        optim = unflatten_optimizer_state(groups["optimizer"], trainer["optimizer"])
        set_optimizer_state_dict(self.model, self.optimizer.optimizer, optim, options=opts)
        self._load_rng(groups["rng"], trainer)
        st = self.progress_state
        st.step, st.tokens, st.elapsed_s = trainer["step"], trainer["tokens"], trainer["elapsed_s"]
        st.eps.update({int(b): v for b, v in trainer["eps"].items()})
        st.last_val = {int(b): v for b, v in trainer.get("last_val", {}).items()}
        if self.is_main:
            self.run.truncate_metrics(st.step)
        self.notes.append(f"resuming {self.run_dir} at step {st.step}")

    def _load_rng(self, rng: dict[str, torch.Tensor], trainer: dict[str, Any]) -> None:
        self.sampler.load_state(rng["blocks"])
        self.noise.set_state(rng["noise"])
        key = f"torch.rank{self.rank}"
        if trainer["processes"] != self.processes or key not in rng:
            self.notes.append(
                f"the run had {trainer['processes']} processes, now {self.processes}: dropout "
                "RNG streams restart (the data order and noise continue exactly)"
            )
            return
        torch.set_rng_state(rng[key])
        cuda_key = f"cuda.rank{self.rank}"
        if cuda_key in rng and self.accelerator.device.type == "cuda":
            torch.cuda.set_rng_state(rng[cuda_key], self.accelerator.device)


def _cpu_denoiser(config: ModelConfig, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A CPU `Denoiser` holding a full state dict (to write `model.safetensors` from)."""
    from sbdcli.model import Denoiser

    with torch.device("meta"):
        model = Denoiser(config)
    model.load_state_dict(state, assign=True)
    return model.eval()


# --------------------------------------------------------------------------- helpers
def _initial_eps(
    cfg: TrainConfig, small: int, large: int, sizes: list[int]
) -> dict[int, list[float]]:
    """Noise interval per block size in use: small-block steps use [eps_min, eps_max],
    large-block steps [large_eps_min, large_eps_max] (single-size runs: the former)."""
    eps = {b: [cfg.large_eps_min, cfg.large_eps_max] for b in sizes if b == large}
    eps.update({b: [cfg.eps_min, cfg.eps_max] for b in sizes if b == small})
    return eps


def _due(step: int, every: int, steps: int) -> bool:
    return step == steps or (every > 0 and step % every == 0)


def _strip(state: dict[str, torch.Tensor], prefix: str = "denoiser.") -> dict[str, torch.Tensor]:
    """CPU copies without the wrapper's prefix (state dicts may alias live parameters)."""
    return {k.removeprefix(prefix): v.detach().to("cpu", copy=True) for k, v in state.items()}


def _prefix(state: dict[str, torch.Tensor], prefix: str = "denoiser.") -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v for k, v in state.items()}


def _accumulation(cfg: TrainConfig, processes: int) -> int:
    per_pass = cfg.batch_size * processes
    if cfg.global_batch is None:
        return 1
    if cfg.global_batch % per_pass:
        raise UserError(
            f"global batch {cfg.global_batch} is not a multiple of batch size {cfg.batch_size} "
            f"x {processes} process(es) = {per_pass}"
        )
    return cfg.global_batch // per_pass


def _make_accelerator(cfg: TrainConfig) -> Any:
    from accelerate import Accelerator

    cuda = torch.cuda.is_available()
    if cfg.device == "cuda" and not cuda:
        raise UserError("--device cuda requested but no CUDA device is available")
    on_cpu = cfg.device == "cpu" or not cuda
    precision = cfg.precision
    if precision == "auto":
        precision = "no" if on_cpu else "bf16"
    return Accelerator(
        cpu=on_cpu,
        mixed_precision="no" if precision == "fp32" else precision,
        dynamo_backend="inductor" if cfg.compile else "no",
    )


def _build_model(
    cfg: TrainConfig, manifest: dict[str, Any], length: int, notes: list[str]
) -> torch.nn.Module:
    """A fresh denoiser from the preset (seeded), or the weights of `cfg.init`."""
    vocab, mask_id = int(manifest["vocab_size"]), int(manifest["mask_id"])
    if cfg.init is not None:
        from sbdcli.model.checkpoint import load_model

        model = load_model(cfg.init)
        got = model.config
        if got.vocab_size != vocab or got.mask_id != mask_id:
            raise UserError(
                f"--init {cfg.init} has vocab {got.vocab_size} (mask {got.mask_id}) but the data "
                f"has vocab {vocab} (mask {mask_id})"
            )
        if got.seq_len != length:
            notes.append(f"--init model was trained at L = {got.seq_len}; training at L = {length}")
            model.config = dataclasses.replace(got, seq_len=length)
        return model.train()
    from sbdcli.model import Denoiser

    config = preset(
        cfg.preset,
        vocab_size=vocab,
        mask_id=mask_id,
        seq_len=length,
        bos_id=manifest.get("bos_id"),
        eos_id=manifest.get("eos_id"),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_for(cfg.seed, "init"))
        return Denoiser(config).train()


def setup(
    cfg: TrainConfig,
    data_dir: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    resume: bool = False,
    runs_root: str | os.PathLike[str] = "runs",
) -> Trainer:
    """Prepare a run: a new one in `out` (default `runs_root/<preset>-<time>`), or, with
    `resume`, the existing run `out` (default `runs_root/latest`)."""
    data, root = Path(data_dir), Path(runs_root)
    if not (data / "manifest.json").is_file():
        raise UserError(f"no data at {data}: manifest.json missing (run 'sbd prepare' first)")
    if resume:
        run_dir = Path(out) if out is not None else root / "latest"
        if not (run_dir / "state" / "trainer.json").is_file():
            raise UserError(f"nothing to resume at {run_dir} (no state/trainer.json)")
        run_dir = run_dir.resolve() if run_dir.is_symlink() else run_dir
    else:
        run_dir = Path(out) if out is not None else _agreed_name(root, cfg.preset)
        if run_dir.exists() and any(run_dir.iterdir()):
            raise UserError(f"run directory {run_dir} exists and is not empty (use --resume)")
    trainer = Trainer(cfg, data, run_dir, resume)
    if trainer.is_main:
        point_latest(run_dir, root)
    return trainer


def _agreed_name(root: Path, preset_name: str) -> Path:
    """A new run path chosen by process 0 and shared with every process of the launch."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return new_run_dir(root, preset_name)
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    PartialState()  # joins the launch's process group
    box = [new_run_dir(root, preset_name).name]
    broadcast_object_list(box, from_process=0)
    return root / box[0]


def train(
    cfg: TrainConfig,
    data_dir: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    resume: bool = False,
    runs_root: str | os.PathLike[str] = "runs",
    progress: Callable[[StepInfo], None] | None = None,
) -> TrainSummary:
    """`setup(...)` then `fit(progress)`: train a model and return the summary."""
    return setup(cfg, data_dir, out, resume=resume, runs_root=runs_root).fit(progress)

"""The training loop: a built `Trainer`, its optimizer steps and its validation.

`Trainer.fit(progress)` runs mix-scale block-diffusion training (README.md) on `accelerate`
(one process, or DDP/FSDP under `torchrun` / `accelerate launch`):

- per optimizer step, the block size B ~ (1 - lambda) delta(B_small) + lambda delta(B_large);
- the noise (one antithetic t per (row, block) and the masks) is drawn for the whole global
  batch from one generator shared by all processes, then sliced per process and
  micro-batch, so 2 processes x b rows and 1 process x 2b rows compute the same step;
- loss `block_nelbo`, gradient accumulation up to `global_batch`, grad clip, AdamW,
  warmup then constant or cosine, EMA of the weights;
- validation NELBO (EMA weights, t in [1e-3, 1]) at every block size in use, optional
  variance-minimising clip search, checkpoints, Ctrl-C checkpoint;
- each step's metrics.jsonl record, also to accelerate's trackers when `--log-with` asks.

Not here: building a run and its `config.json` (build.py), the resume state
(checkpoint.py), the state pieces (state.py), the loss and noise math (diffusion/) or the
network (model/).
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import broadcast

from sbdcli.artifacts.rundir import RunDir
from sbdcli.config import ModelConfig, TrainConfig
from sbdcli.diffusion.loss import block_nelbo, clip_search
from sbdcli.diffusion.schedule import draw_noise
from sbdcli.errors import UserError
from sbdcli.train.checkpoint import save_checkpoint
from sbdcli.train.state import (
    EMA,
    BlockSizeSampler,
    DataOrder,
    LoopCounters,
    RunData,
    initial_eps,
    lr_at,
    seed_for,
    sizes_in_use,
)
from sbdcli.train.tracking import step_values

__all__ = ["StepInfo", "TrainSummary", "Trainer"]


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


class Trainer:
    """A prepared training run; see the module docstring. Build it with `build.setup`."""

    def __init__(
        self,
        cfg: TrainConfig,
        run_dir: Path,
        accelerator: Any,
        data: RunData,
        denoiser: torch.nn.Module,
        *,
        blocks: tuple[int, int],
        accum: int,
        notes: list[str],
    ) -> None:
        """Wire the built pieces together; this seeds the global torch RNG (dropout) per
        process. `build.build_trainer` makes the pieces (`blocks` = the resolved small and
        large block sizes), restores a resumed run and writes `config.json`."""
        self.cfg, self.run_dir, self.run = cfg, run_dir, RunDir(run_dir)
        self.notes = notes
        self.run_lock: Any = None
        """The run directory's writer lock (process 0), set by `setup`."""
        self.tracked = False
        """Whether accelerate's trackers log each step (`--log-with`, tracking.py)."""
        self._join(accelerator)
        self._take_data(data)
        self._plan(*blocks, accum)
        self._prepare(denoiser)
        self._seed_streams()

    # ------------------------------------------------------------------ construction phases
    def _join(self, accelerator: Any) -> None:
        """This process's place in the launch."""
        self.accelerator = accelerator
        self.is_main, self.processes = accelerator.is_main_process, accelerator.num_processes
        self.rank = accelerator.process_index

    def _take_data(self, data: RunData) -> None:
        """Training rows (read lazily), validation rows and the oracle references."""
        self.data_dir, self.manifest = data.data_dir, data.manifest
        self.train_rows, self.val_rows = data.train_rows, data.val_rows
        self.length, self.reference = data.length, data.reference

    def _plan(self, small: int, large: int, accum: int) -> None:
        """Block sizes in use and their sampler, the global batch, the loop's counters."""
        cfg = self.cfg
        self.sizes = sizes_in_use(small, large, cfg.mix_lambda)
        self.sampler = BlockSizeSampler(small, large, cfg.mix_lambda, seed_for(cfg.seed, "blocks"))
        self.accum = accum
        self.global_batch = cfg.batch_size * self.processes * accum
        self.progress_state = LoopCounters(eps=initial_eps(cfg, small, large, self.sizes))

    def _prepare(self, denoiser: torch.nn.Module) -> None:
        """AdamW, accelerate wrapping, EMA."""
        self.model_config: ModelConfig = denoiser.config
        wrapper = _TrainForward(denoiser)
        optimizer = _adamw(wrapper, self.cfg)
        self.model, self.optimizer = self.accelerator.prepare(wrapper, optimizer)
        self.denoiser = self.accelerator.unwrap_model(self.model).denoiser
        self.loss_view = _LossView(self.model, self.model_config)
        self.named = dict(self.denoiser.named_parameters())
        cfg = self.cfg
        self.ema = EMA(self.named, cfg.ema, cfg.ema_warmup) if cfg.ema > 0 else None

    def _seed_streams(self) -> None:
        """The data order, the shared noise stream and this process's dropout stream."""
        cfg = self.cfg
        self.order = DataOrder(self.train_rows.n_rows, cfg.seed)
        self.noise = torch.Generator().manual_seed(seed_for(cfg.seed, "noise"))
        torch.manual_seed(seed_for(cfg.seed, "dropout", self.rank))

    # ------------------------------------------------------------------ loop
    def fit(self, progress: Callable[[StepInfo], None] | None = None) -> TrainSummary:
        """Train up to `cfg.steps`; on SIGINT/SIGTERM save and raise KeyboardInterrupt."""
        cfg, st = self.cfg, self.progress_state
        stop = _StopFlag()
        start = time.perf_counter() - st.elapsed_s
        with stop.installed(), self._trackers_ended():
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
        return self._summary()

    @contextlib.contextmanager
    def _trackers_ended(self) -> Iterator[None]:
        """Flush and close the trackers however the loop ends."""
        try:
            yield
        finally:
            if self.tracked:
                self.accelerator.end_training()

    def _summary(self) -> TrainSummary:
        st = self.progress_state
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
        lr = lr_at(st.step, cfg.lr, cfg.warmup, cfg.steps, cfg.lr_schedule, cfg.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss = self.forward_backward(block)
        if not math.isfinite(loss):  # before the update: the saved state stays usable
            raise UserError(
                f"training diverged: loss {loss} at step {st.step + 1} (try a lower `lr` or "
                f"a longer `warmup`; the last checkpoint is in {self.run.state_dir})"
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
        if self.tracked:
            self.accelerator.log(step_values(record), step=info.step)

    def save(self) -> None:
        """Write `model.safetensors` (EMA weights) and `state/` (resume state); all ranks call."""
        save_checkpoint(self)

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
        acc, rows, mask_id = self.accelerator, self.val_rows, self.model_config.mask_id
        gen = torch.Generator().manual_seed(seed_for(self.cfg.seed, "val", block))
        t, masked = draw_noise(rows.shape[0], self.length, block, gen, (1e-3, 1.0), False)
        total = torch.zeros(2, dtype=torch.float64, device=acc.device)  # (sum, tokens)
        mine = torch.arange(self.rank, rows.shape[0], self.processes)
        for chunk in mine.split(self.cfg.batch_size):
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
        on up to `clip_search_batches` validation batches (BD3-LM: 100; process 0's choice
        is used by every process)."""
        rows = self.val_rows[: self.cfg.clip_search_batches * self.cfg.batch_size]
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


def _adamw(module: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with no weight decay on gains, biases and embeddings."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        (no_decay if p.ndim < 2 or "embedding" in name else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps)


def _due(step: int, every: int, steps: int) -> bool:
    return step == steps or (every > 0 and step % every == 0)

"""Every settings dataclass of sbd, validated at creation.

- `ModelConfig`: the BD3-LM denoiser (it travels inside every checkpoint so a model can
  be rebuilt from its file), with presets;
- `TrainConfig`: one training run, with per-preset defaults (`train_config`);
- `SamplerConfig`: how a draft or revise stage samples;
- `RedrawConfig`: when a draft draws a degenerate record again;
- `RemaskConfig`: how a remask stage chooses positions;
- `GenPplOptions`: how `sbd eval genppl` judges samples;
- `DemoConfig`: what `sbd demo` runs.

Each field carries its documentation as an attribute docstring; the command line derives
its options (flag, default, help) from these fields, so a default lives here only.
Validation messages name fields in backticks (`gamma`); the command line shows the flag
instead. This module holds no logic beyond validation and presets; it is long (about 630
lines) because every setting of sbd, with its documentation, lives here and nowhere else:
the command line, the stage entries and the docs all read these fields, and splitting the
dataclasses across modules would scatter the one place a default is defined.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sbdcli.errors import UserError


def check_finite(config: Any) -> None:
    """Every float setting of a config dataclass (alone or in a tuple) must be a finite
    number: no setting of sbd has a meaning for infinity or NaN. Each config calls it first."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        values = value if isinstance(value, tuple) else (value,)
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise UserError(f"`{field.name}` must be a finite number, got {value}")


def _check(*checks: tuple[bool, str]) -> None:
    """Raise a UserError with the message of the first failed (ok, message) check."""
    for ok, message in checks:
        if not ok:
            raise UserError(message)


@dataclass(frozen=True)
class ModelConfig:
    """The denoiser's shape: a DiT with adaLN-Zero and rotary positions (BD3-LM layout)."""

    vocab_size: int
    """Model vocabulary including [MASK] (GPT-2: 50258)."""
    mask_id: int
    """Id of the [MASK] token; BD3-LM puts it last (vocab_size - 1)."""
    seq_len: int = 1024
    """Trained context length L (BD3-LM `model_length`)."""
    n_layers: int = 12
    """Number of transformer blocks (BD3-LM `n_blocks`)."""
    d_model: int = 768
    """Hidden width (BD3-LM `hidden_dim`)."""
    n_heads: int = 12
    """Attention heads; d_model must divide by it."""
    cond_dim: int = 128
    """Width of the conditioning vector that drives adaLN."""
    mlp_ratio: int = 4
    """MLP hidden width = mlp_ratio * d_model."""
    dropout: float = 0.1
    """Dropout on attention output and MLP residual (training only)."""
    time_conditioning: bool = False
    """Feed the noise level to the network; BD3-LM default is off (sigma replaced by 0)."""
    rope_base: float = 10000.0
    """Rotary embedding base."""
    freq_dim: int = 256
    """Width of the sinusoidal timestep embedding fed to the sigma MLP."""
    bos_id: int | None = None
    """Beginning-of-sequence id (GPT-2: 50256 = EOS), informational."""
    eos_id: int | None = None
    """End-of-sequence id, informational."""

    def __post_init__(self) -> None:
        check_finite(self)
        checks = [
            (self.vocab_size >= 2, "vocab_size must be >= 2"),
            (0 <= self.mask_id < self.vocab_size, "mask_id must lie inside the vocabulary"),
            (self.seq_len >= 2, "seq_len must be >= 2"),
            (self.n_layers >= 1, "n_layers must be >= 1"),
            (
                self.n_heads >= 1 and self.d_model % self.n_heads == 0,
                "d_model must be a multiple of n_heads",
            ),
            ((self.d_model // max(self.n_heads, 1)) % 2 == 0, "head dimension must be even"),
            (0.0 <= self.dropout < 1.0, "dropout must lie in [0, 1)"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(f"invalid model config: {message}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise UserError(f"unknown model config fields: {', '.join(unknown)}")
        return cls(**data)


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"n_layers": 2, "d_model": 128, "n_heads": 4, "cond_dim": 64, "dropout": 0.0},
    "small": {"n_layers": 12, "d_model": 768, "n_heads": 12, "cond_dim": 128},
    "medium": {"n_layers": 24, "d_model": 1024, "n_heads": 16, "cond_dim": 128},
}


def preset(name: str, vocab_size: int, mask_id: int, seq_len: int, **overrides: Any) -> ModelConfig:
    """A `ModelConfig` from a named preset (tiny, small, medium) plus overrides."""
    if name not in PRESETS:
        raise UserError(f"unknown preset '{name}' (choose from {', '.join(PRESETS)})")
    values: dict[str, Any] = dict(PRESETS[name])
    values.update(overrides)
    return ModelConfig(vocab_size=vocab_size, mask_id=mask_id, seq_len=seq_len, **values)


DEFAULT_SHARD_TOKENS = 1 << 24
"""Tokens per data shard written by `sbd prepare` (~16.8M tokens = 64 MiB of int32)."""
ROW_FORMATS = ("sbd", "bd3lm")
"""How `sbd prepare` cuts the token stream into rows: `sbd` = [BOS] + L - 1 stream tokens,
`bd3lm` = L raw stream tokens (BD3-LM's OpenWebText rows)."""

LR_SCHEDULES = ("constant", "cosine")
PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class TrainConfig:
    """One training run: optimisation, mix-scale block sizes, noise interval, bookkeeping.

    Defaults are the paper's fine-tuning recipe (BD3-LM optimiser: AdamW, lr 3e-4, no weight
    decay, 2,500 warmup steps, constant schedule, EMA 0.9999; Mix(4, 1024), lambda 0.1).
    `train_config(preset)` swaps in defaults that suit a preset (`tiny` trains on a CPU).
    """

    preset: str = "small"
    """Model preset used when training from scratch (ignored with `init`)."""
    steps: int = 40_000
    """Optimizer steps to run in total (a resumed run continues up to this count)."""
    batch_size: int = 16
    """Rows per process per micro-batch."""
    global_batch: int | None = None
    """Rows per optimizer step over all processes; gradient accumulation makes up the rest.
    Unset: `batch_size` x processes (no accumulation)."""
    lr: float = 3e-4
    """Peak learning rate of AdamW."""
    warmup: int = 2_500
    """Linear warmup steps from 0 to `lr`."""
    lr_schedule: str = "constant"
    """Learning rate after warmup: `constant`, or `cosine` decay to a floor (a fraction of
    `lr`, 0.1 unless set in Python) at `steps`."""
    min_lr_ratio: float = 0.1
    """Floor of the cosine schedule as a fraction of `lr`."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay (BD3-LM: 0)."""
    beta1: float = 0.9
    """AdamW first-moment decay."""
    beta2: float = 0.999
    """AdamW second-moment decay."""
    adam_eps: float = 1e-8
    """AdamW denominator epsilon."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 turns clipping off)."""
    ema: float = 0.9999
    """EMA decay of the weights that are saved, validated and sampled (0 turns EMA off)."""
    ema_warmup: bool = True
    """Use decay min(ema, (1 + n) / (10 + n)) after n updates (as BD3-LM/MDLM), so short
    runs are not dominated by the initial weights."""
    block_small: int = 4
    """Small block size of the mix-scale distribution (or the single block size)."""
    block_large: int = 1024
    """Large block size; a size >= L means one global block (clamped to L)."""
    mix_lambda: float = 0.1
    """Probability of a large-block step: P_B = (1 - lambda) delta(small) + lambda delta(large)."""
    eps_min: float = 1e-3
    """Lower end of the noise interval (mask probability t) of small-block steps."""
    eps_max: float = 1.0
    """Upper end of the noise interval of small-block steps."""
    large_eps_min: float = 1e-3
    """Lower end of the noise interval of large-block steps. Kept wide by default: the
    global block revises drafts with few masked tokens (small t)."""
    large_eps_max: float = 1.0
    """Upper end of the noise interval of large-block steps."""
    clip_search: bool = False
    """At each validation, pick the clipped noise interval that minimises the variance of
    the loss estimate on validation batches (BD3-LM var_min) and train with it."""
    clip_search_batches: int = 100
    """Validation batches (of `batch_size` rows) the clip search scores: BD3-LM's count,
    its first 100 validation batches; fewer when `val_rows` holds fewer rows."""
    resample: bool = False
    """Redraw masks whose realised masked fraction falls outside the noise interval."""
    seed: int = 0
    """Seed of the model init, the data order, the block-size draws and the noise."""
    val_every: int = 1_000
    """Validate every this many steps (0: only at the end)."""
    val_rows: int = 256
    """Validation rows used per evaluation (0: the whole split)."""
    save_every: int = 1_000
    """Write the resume state and the EMA model every this many steps (0: only at the end)."""
    precision: str = "auto"
    """`auto` (bf16 autocast on GPUs, fp32 on CPU), `fp32` or `bf16`."""
    device: str = "auto"
    """`auto`, `cpu` or `cuda` (distributed launches pick the device per process)."""
    compile: bool = False
    """Compile the training forward with torch.compile (inductor, through accelerate);
    the first steps of each block size are slow while it compiles."""
    init: str | None = None
    """Initial weights: an sbd run directory or a BD3-LM/MDLM checkpoint directory."""
    time_conditioning: bool = False
    """Feed the network each row's noise level, min(-log(1 - t), -log eps) of its first
    block (BD3-LM's time conditioning; its default and sbd's is off). With `init`: switches
    conditioning on for a checkpoint trained without it (a checkpoint trained with it keeps it)."""

    def __post_init__(self) -> None:
        check_finite(self)
        one_of = ", ".join
        checks = [
            (self.preset in PRESETS, f"`preset` must be one of {one_of(PRESETS)}"),
            (self.steps >= 1, "`steps` must be >= 1"),
            (self.batch_size >= 1, "`batch_size` must be >= 1"),
            (
                self.global_batch is None or self.global_batch >= self.batch_size,
                "`global_batch` must be >= the per-process `batch_size`",
            ),
            (self.lr > 0, "`lr` (learning rate) must be > 0"),
            (self.warmup >= 0, "`warmup` must be >= 0"),
            (
                self.lr_schedule in LR_SCHEDULES,
                f"`lr_schedule` must be one of {one_of(LR_SCHEDULES)}",
            ),
            (0.0 <= self.min_lr_ratio <= 1.0, "`min_lr_ratio` must lie in [0, 1]"),
            (self.weight_decay >= 0, "`weight_decay` must be >= 0"),
            (
                0 <= self.beta1 < 1 and 0 <= self.beta2 < 1,
                "AdamW `beta1` and `beta2` must lie in [0, 1)",
            ),
            (self.grad_clip >= 0, "`grad_clip` must be >= 0"),
            (self.clip_search_batches >= 1, "`clip_search_batches` must be >= 1"),
            (0.0 <= self.ema < 1.0, "`ema` (EMA decay) must lie in [0, 1)"),
            (
                self.block_small >= 1 and self.block_large >= 1,
                "block sizes (`block` B or `mix` S,L) must be >= 1",
            ),
            (self.block_small <= self.block_large, "`mix` S,L needs S <= L (small block first)"),
            (0.0 <= self.mix_lambda <= 1.0, "`mix_lambda` must lie in [0, 1]"),
            (0.0 < self.eps_min <= self.eps_max <= 1.0, "need 0 < `eps_min` <= `eps_max` <= 1"),
            (
                0.0 < self.large_eps_min <= self.large_eps_max <= 1.0,
                "need 0 < `large_eps_min` <= `large_eps_max` <= 1",
            ),
            (
                self.val_every >= 0 and self.save_every >= 0,
                "`val_every` and `save_every` must be >= 0",
            ),
            (self.val_rows >= 0, "`val_rows` must be >= 0"),
            (self.precision in PRECISIONS, f"`precision` must be one of {one_of(PRECISIONS)}"),
            (self.device in DEVICES, f"`device` must be one of {one_of(DEVICES)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(f"invalid training config: {message}")

    @property
    def block_sizes(self) -> tuple[int, ...]:
        """The distinct block sizes this run can draw (before clamping to L)."""
        if self.mix_lambda == 0.0:
            return (self.block_small,)
        if self.mix_lambda == 1.0:
            return (self.block_large,)
        return tuple(sorted({self.block_small, self.block_large}))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """A saved config; runs of 0.1/0.2 name the LR schedule `schedule`."""
        if "schedule" in data and "lr_schedule" not in data:
            data = {("lr_schedule" if k == "schedule" else k): v for k, v in data.items()}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise UserError(f"unknown training config fields: {', '.join(unknown)}")
        return cls(**data)


TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {  # from scratch on a CPU: see docs/results.md (training on the synthetic default)
        "steps": 1200,
        "batch_size": 32,
        "lr": 2e-3,
        "warmup": 100,
        "eps_min": 0.25,
        "val_every": 200,
        "save_every": 400,
    },
    "small": {},
    "medium": {"batch_size": 8},
}
"""Training defaults per model preset on top of the `TrainConfig` field defaults."""


def train_config(preset_name: str = "tiny", **overrides: Any) -> TrainConfig:
    """A `TrainConfig` with the defaults of a preset, then `overrides` (None means default)."""
    if preset_name not in TRAIN_PRESETS:
        raise UserError(f"unknown preset '{preset_name}' (choose from {', '.join(TRAIN_PRESETS)})")
    values: dict[str, Any] = {"preset": preset_name, **TRAIN_PRESETS[preset_name]}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**values)


# --------------------------------------------------------------------------- sampling
SAMPLING_DTYPES = ("float64", "float32")
DEFAULT_REFRESH = 4
"""Calls between full recomputations of an approximate cache when its refresh is not given."""


def _spec_parts(text: str, name: str) -> list[str]:
    """The `:`-separated arguments after a policy or cache name (`steps:4` -> ["4"])."""
    return [p.strip() for p in text.split(":")[1:]] if text.startswith(name) else []


def _positive(value: str, what: str) -> int:
    """An integer >= 1 written in a spelling, or a UserError naming the setting."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    _check((number >= 1, f"{what} must be an integer >= 1, got {value!r}"))
    return number


def _steps_and_order(text: str, name: str) -> tuple[int | None, bool]:
    """(S, confident) of `name[:S][:confident]`."""
    parts = _spec_parts(text, name)
    confident = bool(parts) and parts[-1] == "confident"
    parts = parts[:-1] if confident else parts
    _check((len(parts) <= 1, f"`reveal` {text!r}: write {name}[:S][:confident]"))
    return (_positive(parts[0], f"`reveal` {name}:S") if parts else None), confident


@dataclass(frozen=True)
class FixedSteps:
    """S calls per block, fixed counts: a sample with r masked positions left after s of
    its calls reveals ceil(r / max(S - s, 1)); random positions (or the most probable)."""

    steps: int | None = None
    """Calls per block S; unset = the block size (one token per call)."""
    confident: bool = False
    """Reveal the most probable positions first instead of a uniform random subset."""

    NAME = "steps"
    SPELLING = "steps[:S][:confident]"
    SUMMARY = "S calls per block, ceil(masked left / calls left) positions each"

    def __post_init__(self) -> None:
        _check((self.steps is None or self.steps >= 1, "`reveal` steps:S needs S >= 1"))

    @classmethod
    def parse(cls, text: str) -> FixedSteps:
        return cls(*_steps_and_order(text, cls.NAME))

    def spelling(self) -> str:
        s = f":{self.steps}" if self.steps is not None else ""
        return f"{self.NAME}{s}{':confident' if self.confident else ''}"

    def params(self) -> dict[str, Any]:
        """The stage entry's keys that record the policy (docs/records.md)."""
        return _reveal_params(self.steps, False, None, "fixed", self.confident)


@dataclass(frozen=True)
class ReferenceSchedule(FixedSteps):
    """BD3-LM's reference schedule over S steps: at step i every masked position is revealed
    with probability (1/S) / t_i; a step that reveals nothing costs no call."""

    NAME = "reference"
    SPELLING = "reference[:S][:confident]"
    SUMMARY = "BD3-LM's reference schedule: a random count at each of S steps"

    def params(self) -> dict[str, Any]:
        return _reveal_params(self.steps, False, None, "reference", self.confident)


@dataclass(frozen=True)
class Threshold:
    """Adaptive calls: each call commits every masked position of the block whose draw has
    probability >= TAU, and always the most confident one."""

    tau: float
    """The probability in (0, 1] a draw needs to be committed."""

    NAME = "threshold"
    SPELLING = "threshold:TAU"
    SUMMARY = "each call commits the draws with probability >= TAU, and at least the best"

    def __post_init__(self) -> None:
        t = self.tau
        _check((math.isfinite(t) and 0.0 < t <= 1.0, f"`threshold` must lie in (0, 1], got {t}"))

    @classmethod
    def parse(cls, text: str) -> Threshold:
        parts = _spec_parts(text, cls.NAME)
        _check((len(parts) == 1, f"`reveal` {text!r}: write threshold:TAU, e.g. threshold:0.9"))
        try:
            tau = float(parts[0])
        except ValueError:
            raise UserError(f"`reveal` {text!r}: TAU must be a number in (0, 1]") from None
        return cls(tau)

    def spelling(self) -> str:
        return f"{self.NAME}:{self.tau:g}"

    def params(self) -> dict[str, Any]:
        return _reveal_params(None, False, self.tau, "fixed", False)


@dataclass(frozen=True)
class FirstHitting:
    """One masked position per call, chosen uniformly (or the most probable one)."""

    confident: bool = False
    """Reveal the most probable position instead of a uniform random one."""

    NAME = "first-hitting"
    SPELLING = "first-hitting"
    SUMMARY = "one uniformly chosen position per call"

    @classmethod
    def parse(cls, text: str) -> FirstHitting:
        parts = _spec_parts(text, cls.NAME)
        _check((parts in ([], ["confident"]), f"`reveal` {text!r}: write first-hitting"))
        return cls(confident=bool(parts))

    def spelling(self) -> str:
        return self.NAME + (":confident" if self.confident else "")

    def params(self) -> dict[str, Any]:
        return _reveal_params(None, True, None, "fixed", self.confident)


def _reveal_params(
    steps: int | None, first: bool, tau: float | None, schedule: str, confident: bool
) -> dict[str, Any]:
    """The five stage-entry keys of a policy, as 0.1/0.2 wrote them."""
    return {
        "steps_per_block": steps,
        "first_hitting": first,
        "threshold": tau,
        "schedule": schedule,
        "unmask": "confident" if confident else "random",
    }


RevealPolicy = FixedSteps | ReferenceSchedule | Threshold | FirstHitting
"""How many positions a sampler call reveals, and which (diffusion/reveal.py runs them)."""
REVEAL_POLICIES: tuple[type, ...] = (FixedSteps, ReferenceSchedule, Threshold, FirstHitting)


@dataclass(frozen=True)
class NoCache:
    """No KV cache: every call recomputes the whole visible window (reference path)."""

    NAME = "none"
    SPELLING = "none"
    SUMMARY = "every call recomputes the whole visible window"

    def spelling(self) -> str:
        return self.NAME

    def params(self) -> dict[str, Any]:
        return _cache_params(False, "exact", None, False)


@dataclass(frozen=True)
class ExactCache:
    """Exact KV cache of earlier blocks; each call recomputes its own block."""

    NAME = "exact"
    SPELLING = "exact"
    SUMMARY = "exact KV cache of earlier blocks, the default"

    def spelling(self) -> str:
        return self.NAME

    def params(self) -> dict[str, Any]:
        return _cache_params(True, "exact", None, False)


@dataclass(frozen=True)
class ApproxCache:
    """Exact cache of earlier blocks; inside the block, calls between refreshes run only the
    positions masked at the previous call and reuse the others' stored keys/values."""

    refresh: int = DEFAULT_REFRESH
    """Every R-th call of a block recomputes every position (1 = the exact cache)."""

    NAME = "approx"
    SPELLING = "approx[:R]"
    SUMMARY = "inside a block, calls between refreshes rerun only the positions masked at the "
    SUMMARY += "previous call; every R-th call reruns all, R = 4 unless given"

    def __post_init__(self) -> None:
        _check((self.refresh >= 1, f"`refresh` must be >= 1, got {self.refresh}"))

    def spelling(self) -> str:
        return f"{self.NAME}:{self.refresh}"

    def params(self) -> dict[str, Any]:
        return _cache_params(True, "approx", self.refresh, False)


@dataclass(frozen=True)
class CapturedCache:
    """The exact cache with the cached call captured at a fixed shape by torch.compile (CUDA
    graphs); CUDA only."""

    NAME = "captured"
    SPELLING = "captured"
    SUMMARY = "the exact cache, its call captured as CUDA graphs by torch.compile (CUDA only)"

    def spelling(self) -> str:
        return self.NAME

    def params(self) -> dict[str, Any]:
        return _cache_params(True, "exact", None, True)


def _cache_params(kv: bool, kind: str, refresh: int | None, compiled: bool) -> dict[str, Any]:
    """The four stage-entry keys of a cache, as 0.1/0.2 wrote them."""
    return {"kv_cache": kv, "cache": kind, "refresh": refresh, "compile": compiled}


CacheKind = NoCache | ExactCache | ApproxCache | CapturedCache
"""Where a call's keys/values come from (diffusion/calls.py runs them)."""
CACHE_KINDS: tuple[type, ...] = (NoCache, ExactCache, ApproxCache, CapturedCache)


def parse_reveal(text: str) -> RevealPolicy:
    """The policy a `--reveal` spelling names: steps[:S][:confident], reference[:S],
    threshold:TAU or first-hitting."""
    name = text.split(":")[0].strip()
    for cls in REVEAL_POLICIES:
        if name == cls.NAME:  # type: ignore[attr-defined]
            return cls.parse(text.strip())  # type: ignore[attr-defined]
    choices = ", ".join(c.SPELLING for c in REVEAL_POLICIES)  # type: ignore[attr-defined]
    raise UserError(f"unknown `reveal` {text!r} (choose from {choices})")


def parse_cache(text: str) -> CacheKind:
    """The cache a `--cache` spelling names: none, exact, approx[:R] or captured."""
    name, *args = [p.strip() for p in text.split(":")]
    if name == ApproxCache.NAME and len(args) <= 1:
        return ApproxCache(_positive(args[0], "`cache` approx:R") if args else DEFAULT_REFRESH)
    for cls in (NoCache, ExactCache, CapturedCache):
        if name == cls.NAME and not args:
            return cls()
    choices = ", ".join(c.SPELLING for c in CACHE_KINDS)  # type: ignore[attr-defined]
    raise UserError(f"unknown `cache` {text!r} (choose from {choices})")


def choices(kinds: tuple[type, ...]) -> str:
    """Each policy's or cache's spelling and summary, for help text and messages."""
    return "; ".join(f"{c.SPELLING} ({c.SUMMARY})" for c in kinds)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class SamplerConfig:
    """How one draft or revise stage samples (validated at creation)."""

    block_size: int
    """Block size B; 0 or >= the sequence length means one block over everything ("full")."""
    reveal: RevealPolicy = FixedSteps()
    """How many masked positions each network call reveals, and which. S defaults to the
    block size (one token per call); positions are random unless confident (the most
    probable first)."""
    cache: CacheKind = ExactCache()
    """Where each network call's keys and values come from."""
    top_p: float = 0.9
    """Nucleus mass in (0, 1]; 1 disables truncation."""
    temperature: float = 1.0
    """Softmax temperature (> 0) of the sampled distribution (not of the confidence)."""
    dtype: str = "float64"
    """Precision of probabilities and the Gumbel draw: float64, or float32 (ablation only)."""
    precision: str = "auto"
    """Arithmetic of the network calls: `auto` (bf16 autocast on GPUs, fp32 on CPU), `fp32`
    (TF32 matmuls on GPUs) or `bf16`; the draw and the confidences stay float64."""

    def __post_init__(self) -> None:
        check_finite(self)
        _check(
            (self.precision in PRECISIONS, f"`precision` must be one of {', '.join(PRECISIONS)}"),
            (self.block_size >= 0, "`block_size` must be >= 1 (or 'full')"),
            (0.0 < self.top_p <= 1.0, f"`top_p` must lie in (0, 1], got {self.top_p}"),
            (self.temperature > 0.0, f"`temperature` must be > 0, got {self.temperature}"),
            (self.dtype in SAMPLING_DTYPES, f"`dtype` must be one of {', '.join(SAMPLING_DTYPES)}"),
            (isinstance(self.reveal, REVEAL_POLICIES), f"not a reveal policy: {self.reveal!r}"),
            (isinstance(self.cache, CACHE_KINDS), f"not a cache kind: {self.cache!r}"),
        )

    def params(self) -> dict[str, Any]:
        """The stage parameters recorded in a sample record (the keys of 0.1/0.2)."""
        r = self.reveal.params()
        out = {k: r[k] for k in ("steps_per_block", "first_hitting", "threshold", "schedule")}
        out.update(top_p=self.top_p, temperature=self.temperature, dtype=self.dtype)
        out.update(unmask=r["unmask"], **self.cache.params())
        return out


@dataclass(frozen=True)
class LegacySampling:
    """The sampling fields of 0.1/0.2, kept as aliases: together they name one reveal policy
    and one cache (`reveal` and `cache` of `SamplerConfig`)."""

    steps_per_block: int | None = None
    """Alias of `reveal` steps:S (or reference:S with `schedule` reference)."""
    first_hitting: bool = False
    """Alias of `reveal` first-hitting."""
    threshold: float | None = None
    """Alias of `reveal` threshold:TAU."""
    schedule: str = "fixed"
    """Alias: `reference` is `reveal` reference[:S]."""
    unmask: str = "random"
    """Alias: `confident` is the `:confident` of `reveal` steps and reference."""
    kv_cache: bool = True
    """Alias: off is `cache` none."""
    cache: str = "exact"
    """Alias: exact or approx (`cache` exact, approx[:R])."""
    refresh: int | None = None
    """Alias of `cache` approx:R."""
    compile: bool = False
    """Alias of `cache` captured."""

    def __post_init__(self) -> None:
        _check(
            (
                self.schedule in ("fixed", "reference"),
                f"unknown `schedule` {self.schedule!r} (fixed, reference)",
            ),
            (self.unmask in ("random", "confident"), "`unmask` must be one of random, confident"),
            (
                self.cache in ("exact", "approx"),
                f"`cache` must be one of exact, approx, got {self.cache!r}",
            ),
        )

    def given(self, fields: tuple[str, ...]) -> list[str]:
        """The `fields` (in order) set away from their defaults."""
        default = LegacySampling()
        return [f for f in fields if getattr(self, f) != getattr(default, f)]

    def reveal(self) -> RevealPolicy:
        """The policy these fields name; two policies at once are refused."""
        named = self.given(("first_hitting", "threshold", "schedule"))
        if self.threshold is not None and self.steps_per_block is not None:
            named.append("steps_per_block")
        _exclusive(named)
        confident = self.unmask == "confident"
        if self.first_hitting:
            return FirstHitting(confident)
        if self.threshold is not None:
            return Threshold(self.threshold)
        if self.schedule == "reference":
            return ReferenceSchedule(self.steps_per_block, confident)
        return FixedSteps(self.steps_per_block, confident)

    def cache_kind(self) -> CacheKind:
        """The cache these fields name; two kinds at once are refused."""
        _check(
            (
                self.refresh is None or self.cache == "approx",
                "`refresh` needs `cache` approx (the exact cache recomputes every call)",
            )
        )
        approx = self.cache == "approx"
        named = [n for n, on in (("kv_cache", not self.kv_cache), ("cache", approx)) if on]
        _exclusive([*named, *self.given(("compile",))])
        if not self.kv_cache:
            return NoCache()
        if approx:
            return ApproxCache(DEFAULT_REFRESH if self.refresh is None else self.refresh)
        return CapturedCache() if self.compile else ExactCache()


REVEAL_ALIASES = ("steps_per_block", "first_hitting", "threshold", "schedule", "unmask")
"""The `LegacySampling` fields that name a reveal policy (the others name a cache)."""


def _exclusive(named: list[str]) -> None:
    """One setting at most among `named` (each picks a policy or a cache)."""
    if len(named) > 1:
        raise UserError(f"`{named[0]}` and `{named[1]}` exclude each other")


LEGACY_ALIASES = (*REVEAL_ALIASES, "kv_cache", "refresh", "compile")
"""The `LegacySampling` fields a caller may still accept beside a `cache` spelling (`cache`
itself is both: exact and approx are spellings of 0.2 and of today)."""


def resolve_sampler(
    block_size: int, reveal: str | None, cache: str, old: dict[str, Any], **values: Any
) -> tuple[SamplerConfig, list[str]]:
    """A `SamplerConfig` from a `reveal` spelling (None = steps), a `cache` spelling and the
    0.2 fields in `old` (`LEGACY_ALIASES`, each at its default or set), and the names of the
    0.2 fields that were set, in order (a caller prints their new spelling). A set 0.2 field
    that names a policy excludes `reveal`; one that names a cache needs `cache` exact or
    approx (`cache` approx with `refresh` R is approx:R)."""
    legacy = LegacySampling(**old)
    aliases = legacy.given(LEGACY_ALIASES)
    if not aliases:
        policy, kind = parse_reveal(reveal or "steps"), parse_cache(cache)
        return SamplerConfig(block_size, policy, kind, **values), []
    policy_aliases = [f for f in aliases if f in REVEAL_ALIASES]
    if reveal is not None and policy_aliases:
        raise UserError(f"`reveal` and `{policy_aliases[0]}` exclude each other")
    policy = parse_reveal(reveal) if reveal is not None else legacy.reveal()
    if len(policy_aliases) < len(aliases):  # a cache alias: cache must be exact or approx
        message = f"`cache` {cache} and `{aliases[-1]}` exclude each other"
        _check((cache in ("exact", "approx"), message))
        kind = dataclasses.replace(legacy, cache=cache).cache_kind()
    else:
        kind = parse_cache(cache)
    return SamplerConfig(block_size, policy, kind, **values), aliases


def with_steps(policy: RevealPolicy, steps: int | None) -> RevealPolicy:
    """The policy with S = `steps` calls per block (a revise stage's own S): fixed steps and
    the reference schedule take it; first hitting has no S; a threshold refuses one."""
    if isinstance(policy, Threshold):
        _check(
            (steps is None, "`reveal` threshold and `revise_steps_per_block` exclude each other")
        )
        return policy
    return dataclasses.replace(policy, steps=steps) if isinstance(policy, FixedSteps) else policy


def legacy_sampler(block_size: int, **fields: Any) -> SamplerConfig:
    """A `SamplerConfig` from the 0.2 field names (steps_per_block, first_hitting, threshold,
    schedule, unmask, kv_cache, cache, refresh, compile) and the others (top_p, ...)."""
    names = {f.name for f in dataclasses.fields(LegacySampling)}
    old = LegacySampling(**{k: fields.pop(k) for k in list(fields) if k in names})
    return SamplerConfig(block_size, reveal=old.reveal(), cache=old.cache_kind(), **fields)


REDRAW_WINDOW = 256
"""The window of BD3-LM's degenerate-sample check (its last 256 tokens)."""
REDRAW_ATTEMPTS = 10
"""BD3-LM's draws per sample at most."""
REDRAW_DEFAULTS = (REDRAW_WINDOW, REDRAW_ATTEMPTS)


@dataclass(frozen=True)
class RedrawConfig:
    """Redraw of degenerate drafts, BD3-LM's rule (off unless `redraw_low_entropy` is set)."""

    redraw_low_entropy: float | None = None
    """Draw a sample again while some block end leaves its last `redraw_window` tokens
    with unigram entropy (nats) below this value (BD3-LM: 4) (default: never)."""
    redraw_window: int = REDRAW_WINDOW
    """Tokens of the entropy window of `redraw_low_entropy` (BD3-LM: 256)."""
    redraw_attempts: int = REDRAW_ATTEMPTS
    """Draws per sample at most (BD3-LM: 10); the last one is kept and flagged."""

    def __post_init__(self) -> None:
        check_finite(self)
        h = self.redraw_low_entropy
        _check(
            (h is None or (math.isfinite(h) and h >= 0), "`redraw_low_entropy` must be >= 0"),
            (self.redraw_window >= 1, "`redraw_window` must be >= 1"),
            (self.redraw_attempts >= 1, "`redraw_attempts` must be >= 1"),
            (
                h is not None or (self.redraw_window, self.redraw_attempts) == REDRAW_DEFAULTS,
                "`redraw_window` and `redraw_attempts` need `redraw_low_entropy` (without it "
                "no draft is redrawn)",
            ),
        )

    @property
    def enabled(self) -> bool:
        return self.redraw_low_entropy is not None


# --------------------------------------------------------------------------- remask
REMASK_STRATEGIES = ("snapshot", "random", "posthoc", "masked")
REMASK_SCOPES = ("sequence", "batch")


DEFAULT_PASSES = 8
"""Passes of the masked remask strategy unless `passes` says otherwise."""


@dataclass(frozen=True)
class RemaskConfig:
    """Parameters of one remask stage (validated at creation)."""

    gamma: float | None = 0.25
    """Fraction of eligible (generated) tokens to remask, in [0, 1]."""
    strategy: str = "snapshot"
    """Score: snapshot (confidence when committed), random, posthoc (one pass over the
    finished draft) or masked (k passes, each token scored while hidden)."""
    scope: str = "sequence"
    """sequence: floor(gamma n) positions per record; batch: the lowest scores pooled over
    the batch."""
    threshold: float | None = None
    """Instead of gamma: remask every eligible position whose score is below this value."""
    passes: int = DEFAULT_PASSES
    """Passes k of the masked strategy (k network calls)."""
    seed: int = 0
    """Seed of the random scores and of tie breaking."""
    precision: str = "auto"
    """Arithmetic of the model strategies' network calls: `auto` (bf16 autocast on GPUs,
    fp32 on CPU), `fp32` or `bf16`; the scores stay float64."""

    def __post_init__(self) -> None:
        check_finite(self)
        _check(
            (self.precision in PRECISIONS, f"`precision` must be one of {', '.join(PRECISIONS)}"),
            (
                self.strategy in REMASK_STRATEGIES,
                f"unknown `strategy` {self.strategy!r} ({', '.join(REMASK_STRATEGIES)})",
            ),
            (
                self.scope in REMASK_SCOPES,
                f"`scope` must be 'sequence' or 'batch', got {self.scope!r}",
            ),
            (
                self.threshold is not None or self.gamma is not None,
                "remask needs `gamma` or `threshold`",
            ),
            (
                self.gamma is None or 0.0 <= self.gamma <= 1.0,
                f"`gamma` must lie in [0, 1], got {self.gamma}",
            ),
            (self.passes >= 1, f"`passes` must be >= 1, got {self.passes}"),
            (
                self.passes == DEFAULT_PASSES or self.strategy == "masked",
                f"`passes` sets the masked strategy's passes: it needs `strategy` masked, "
                f"not {self.strategy}",
            ),
            (
                self.threshold is None or math.isfinite(self.threshold),
                "`threshold` must be a finite number",
            ),
        )

    @property
    def needs_model(self) -> bool:
        return self.strategy in ("posthoc", "masked")

    def params(self) -> dict[str, Any]:
        gamma = self.gamma if self.threshold is None else None  # null: the threshold chose
        out: dict[str, Any] = {"strategy": self.strategy, "gamma": gamma}
        out.update(scope=self.scope, threshold=self.threshold, seed=self.seed)
        if self.strategy == "masked":
            out["passes"] = self.passes
        return out


# --------------------------------------------------------------------------- evaluation
EOS_MODES = ("skip", "cut")


@dataclass
class GenPplOptions:
    """How `sbd eval genppl` judges samples (every field is a CLI flag)."""

    evaluator: str | None = None
    """`oracle`, a transformers causal-LM directory, or an sbd run trained with block 1."""
    data_dir: Path | None = None
    """Data directory (oracle, codec, special ids) when the records' run is not found."""
    eos: str = "skip"
    """EOS rule: `skip` (EOS is context, never scored) or `cut` (sample ends at first EOS)."""
    device: str = "cpu"
    """Device of the judge."""
    batch_size: int = 16
    """Windows (or samples) per judge forward pass."""
    context: int | None = None
    """transformers judge window (default: the model's maximum length)."""
    stride: int = 512
    """transformers judge stride beyond the context (HF perplexity guide)."""
    group: bool = True
    """Report each stage group of a file separately (else one row per file)."""
    floor_samples: int = 1000
    """Fresh true samples for the oracle floor when the manifest has none at this length."""
    seed: int = 0
    """Seed of the oracle floor's samples."""
    allow_partial: bool = False
    """Score a set with fewer records than its draft declared (its summary says `partial`)."""
    low_entropy: float | None = None
    """Count the samples whose last `low_entropy_window` tokens have unigram entropy (nats)
    below this value (default: the redraw threshold their draft recorded, else off)."""
    low_entropy_window: int | None = None
    """Window of `low_entropy` (default: the redraw window their draft recorded, else 256)."""
    precision: str = "auto"
    """Arithmetic of a model judge (sbd or transformers): `auto` (bf16 autocast on GPUs,
    fp32 on CPU), `fp32` or `bf16`; the log-likelihoods come from upcast logits."""

    def __post_init__(self) -> None:
        check_finite(self)
        h, w = self.low_entropy, self.low_entropy_window
        _check(
            (self.precision in PRECISIONS, f"`precision` must be one of {', '.join(PRECISIONS)}"),
            (self.batch_size >= 1, f"`batch_size` must be >= 1, got {self.batch_size}"),
            (self.stride >= 1, f"`stride` must be >= 1, got {self.stride}"),
            (h is None or (math.isfinite(h) and h >= 0), "`low_entropy` must be >= 0"),
            (w is None or w >= 1, "`low_entropy_window` must be >= 1"),
        )


# --------------------------------------------------------------------------- demo
DEMO_GAMMAS = (0.1, 0.25, 0.5)
"""The demo's remask ratios."""


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs; `quick` shrinks every budget (tests and CI)."""

    out: Path = Path("runs/demo")
    """Directory of every demo artifact."""
    seed: int = 0
    """Seed of data, training, sampling and remasking."""
    quick: bool = False
    """A reduced budget: small data, a short training, few samples."""
    fresh: bool = False
    """Rebuild every step instead of reusing finished ones."""
    steps: int | None = None
    """Training steps (default 1200 at 32 rows per step, the tiny preset; quick 120 at 16)."""
    samples: int | None = None
    """Samples per setting (default 256, quick 16)."""
    draft_block: int = 4
    """Draft block size B(1)."""
    tokens_per_call: int = 2
    """Tokens revealed per network call, in the draft and in the revise block."""
    gammas: tuple[float, ...] = DEMO_GAMMAS
    """Remask ratios."""
    strategies: tuple[str, ...] = REMASK_STRATEGIES
    """Remask strategies."""
    device: str = "cpu"
    """Device for training and sampling."""

    def __post_init__(self) -> None:
        check_finite(self)
        _check(
            (
                self.tokens_per_call >= 1 and self.draft_block >= 1,
                "`draft_block` and `tokens_per_call` must be >= 1",
            ),
            (all(0.0 <= g <= 1.0 for g in self.gammas), "`gammas` must lie in [0, 1]"),
            (
                all(s in REMASK_STRATEGIES for s in self.strategies),
                f"`strategies` must be among {', '.join(REMASK_STRATEGIES)}",
            ),
        )

    @property
    def n_steps(self) -> int:
        return self.steps if self.steps is not None else (120 if self.quick else 1200)

    @property
    def n_samples(self) -> int:
        return self.samples if self.samples is not None else (16 if self.quick else 256)

"""Frozen configuration dataclasses, validated at creation.

`ModelConfig` describes the BD3-LM denoiser (it travels inside every checkpoint so a
model can be rebuilt from its file). Training and sampling configurations live beside
it as they are added. This module holds no logic beyond validation and presets.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from sbdcli.errors import UserError


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

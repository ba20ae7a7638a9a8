"""Held-out test perplexity of `sbd eval ppl` (docs/evaluation.md, "Test perplexity").

exp(NELBO) on held-out rows under the block NELBO (`diffusion.loss.block_nelbo`), Monte
Carlo over the antithetic noise draws with a standard error; block size 1 is exact (every
token masked). `check_ppl_inputs` refuses rows that do not fit the model.

Not here: Gen PPL of generated samples (genppl.py) or the NELBO itself (diffusion/loss.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sbdcli.artifacts import read_json
from sbdcli.artifacts.rundir import RunDir
from sbdcli.diffusion.loss import block_nelbo
from sbdcli.diffusion.precision import for_calls, network
from sbdcli.diffusion.precision import resolve as resolve_precision
from sbdcli.errors import UserError
from sbdcli.evaluate.metrics import Advance, VocabInfo, finite


@dataclass
class PplResult:
    """Test perplexity exp(NELBO) with Monte Carlo standard error (NELBO in nats/token)."""

    nelbo: float
    stderr: float
    reps: list[float]
    block_size: int
    tokens: int
    rows: int
    exact: bool
    precision: str = "fp32"

    def to_dict(self) -> dict[str, Any]:
        lo, hi = self.nelbo - 2 * self.stderr, self.nelbo + 2 * self.stderr
        extra = {} if self.precision == "fp32" else {"precision": self.precision}
        return finite(
            {
                "nelbo_per_token": self.nelbo,
                "nelbo_stderr": self.stderr,
                "ppl": math.exp(self.nelbo),
                "ppl_2se": [math.exp(lo), math.exp(hi)],
                "bits_per_token": self.nelbo / math.log(2),
                "mc_reps": self.reps,
                "block_size": self.block_size,
                "tokens": self.tokens,
                "rows": self.rows,
                "exact": self.exact,
                **extra,
            }
        )


def heldout_perplexity(
    model: torch.nn.Module,
    rows: torch.Tensor,
    block_size: int,
    *,
    mc: int = 1,
    batch_size: int = 16,
    seed: int = 0,
    eps_min: float = 1e-3,
    eps_max: float = 1.0,
    t: torch.Tensor | None = None,
    x_t: torch.Tensor | None = None,
    progress: Advance = None,
    precision: str = "fp32",
) -> PplResult:
    """exp(NELBO) of `rows` (N, L) under the block NELBO (docs/evaluation.md).

    NELBO per token = sum of `token_nelbo` over positions 1..L-1 / (N (L - 1)) (position 0,
    BOS or the first raw token of a `bd3lm` row, is never predicted; BD3-LM's `ignore_bos`
    at evaluation). Each of `mc` repetitions draws fresh antithetic
    t in [eps_min, eps_max] per (row, block) from seed + rep; stderr = std / sqrt(mc).
    Block size 1 is evaluated exactly: t = 1 masks every token (weight 1) → the AR NLL.
    `t` ((N, n_blocks) or (N, L)) and `x_t` (N, L) fix the noise instead (one repetition),
    e.g. to reproduce a reference implementation's numbers. `precision`: the network's
    arithmetic (diffusion/precision.py; the NELBO is summed in float64).
    """
    exact = block_size == 1 and t is None and x_t is None
    reps = 1 if exact or t is not None or x_t is not None else mc
    device = next(model.parameters()).device
    precision = resolve_precision(precision, device)
    net = for_calls(model, precision, device)
    values = []
    for rep in range(reps):
        gen = torch.Generator(device=device).manual_seed(seed + rep)
        total, count = 0.0, 0
        for start in range(0, rows.shape[0], batch_size):
            x0 = rows[start : start + batch_size].to(device)
            part = slice(start, start + batch_size)
            tb = None if t is None else t[part].to(device)
            xb = None if x_t is None else x_t[part].to(device)
            if exact:  # every position but BOS masked, weight 1/t = 1: the AR NLL
                tb = torch.ones(x0.shape[0], x0.shape[1], device=device)
                xb = torch.full_like(x0, model.config.mask_id)  # type: ignore[attr-defined]
                xb[:, 0] = x0[:, 0]
            with torch.inference_mode(), network(precision, device):
                out = block_nelbo(
                    net, x0, block_size, generator=gen, eps_min=eps_min, eps_max=eps_max,
                    t=tb, x_t=xb,
                )  # fmt: skip
            total += float(out.token_nelbo[:, 1:].double().sum())
            count += x0.shape[0] * (x0.shape[1] - 1)
            if progress:
                progress(x0.shape[0])
        values.append(total / count)
    arr = np.asarray(values)
    stderr = float(arr.std(ddof=1) / math.sqrt(len(arr))) if len(arr) > 1 else 0.0
    if reps == 1 and not exact:
        stderr = float("nan")
    n = rows.shape[0]
    return PplResult(float(arr.mean()), stderr, values, block_size, count, n, exact, precision)


def _tokenizer_sha(manifest: Path) -> str | None:
    return VocabInfo.from_manifest(read_json(manifest, "manifest"), str(manifest)).tokenizer_sha


def check_ppl_inputs(
    model: torch.nn.Module, run: Path, data_dir: Path, rows: torch.Tensor, block_size: int
) -> None:
    """One-line errors when held-out rows do not fit the model (tokenizer, vocab, length)."""
    cfg = model.config
    theirs = RunDir(run).data_dir / "manifest.json"
    mine = data_dir / "manifest.json"
    if theirs.is_file() and mine.is_file():
        a, b = _tokenizer_sha(theirs), _tokenizer_sha(mine)
        if a and b and a != b:
            raise UserError(
                f"{data_dir} was tokenized with sha256 {b[:12]} but {run} was trained on "
                f"{a[:12]}: different tokenizer"
            )
    top = int(rows.max()) if rows.numel() else 0
    if top >= cfg.vocab_size or bool((rows == cfg.mask_id).any()):
        raise UserError(
            f"{data_dir}: token id {top} does not fit the model's vocabulary "
            f"({cfg.vocab_size}, mask {cfg.mask_id}): different tokenizer"
        )
    length = rows.shape[1]
    if length > cfg.seq_len:
        raise UserError(f"{data_dir}: rows of {length} tokens exceed the model's {cfg.seq_len}")
    if block_size < 1 or (block_size < length and length % block_size):
        raise UserError(f"`block_size` {block_size} must divide the sequence length {length}")

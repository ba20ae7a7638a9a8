"""The metric math of `sbd eval genppl` (docs/evaluation.md, "Which positions are scored"
and "The numbers"):

- **Scored positions** of a sample in model-vocabulary ids (`scored_mask`): positions at or
  after `prompt_len` (BOS is position 0 and never scored), never a special id (BOS/EOS);
  EOS rule `skip` (default, BD3-LM's): EOS tokens stay in the sequence as context but are not
  scored; `cut`: the sample ends at its first generated EOS and nothing after it counts.
- **Gen PPL**: `gen_ppl_per_sample_mean` = mean over samples of exp(NLL_i / n_i), the
  headline (what BD3-LM and MDLM report: each sample's perplexity, averaged), and
  `gen_ppl_corpus` = exp(sum NLL / sum scored tokens) over a group (token-weighted); both
  always reported.
- **Low-entropy samples** (`low_entropy_stats`): how many end in a window whose unigram
  entropy is below a threshold (BD3-LM's degenerate-sample rule, diffusion/degenerate.py).
- **Unigram entropy** (nats) over the scored positions' model-vocabulary ids: the mean over
  samples of each sample's entropy (BD3-LM's definition) and the entropy of the pooled counts.
- **Costs**: NFE and seconds per sample, generated tokens per second.
- `summarize`: one group's judge scores turned into its JSON summary numbers.

It is not a judge (judges.py), not grouping (grouping.py), not tables or plots (report.py)
and it reads no files: special ids come in as a `VocabInfo`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sbdcli.config import EOS_MODES
from sbdcli.diffusion.degenerate import tail_entropy
from sbdcli.errors import UserError
from sbdcli.evaluate.grouping import sampler_settings, short_settings

ENTROPY_OVER = (
    "model-vocabulary ids at scored positions (generated positions after the prompt; "
    "BOS, EOS and MASK excluded; with --eos cut only before the first EOS)"
)
Advance = Callable[[int], None] | None
"""Called with the number of samples (or rows) just finished; None for no progress."""


@dataclass
class VocabInfo:
    """Special ids of the records' model vocabulary (from a data manifest when known)."""

    bos_id: int | None
    eos_id: int | None
    mask_id: int | None
    vocab_size: int | None
    tokenizer_sha: str | None = None
    source: str = "records"

    @property
    def special(self) -> list[int]:
        return [i for i in (self.bos_id, self.eos_id) if i is not None]

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], source: str) -> VocabInfo:
        tok = manifest.get("tokenizer") or {}
        return cls(
            manifest.get("bos_id"),
            manifest.get("eos_id"),
            manifest.get("mask_id"),
            manifest.get("vocab_size"),
            tok.get("sha256") if isinstance(tok, dict) else None,
            source,
        )


def check_eos(eos: str) -> None:
    """Refuse an unknown EOS rule."""
    if eos not in EOS_MODES:
        raise UserError(f"`eos` must be one of {', '.join(EOS_MODES)}")


# --------------------------------------------------------------------------- masks, entropy
def scored_mask(
    tokens: torch.Tensor, prompt_len: torch.Tensor, special_ids: Sequence[int], eos: str = "skip"
) -> torch.Tensor:
    """Which positions are scored: bool (N, L) for tokens (N, L), prompt_len (N,).

    Generated positions (>= max(prompt_len, 1)) that are not special (BOS/EOS); with
    eos="cut" also nothing at or after the first special id in the generated part.
    """
    check_eos(eos)
    pos = torch.arange(tokens.shape[1], device=tokens.device)
    generated = pos[None, :] >= prompt_len.clamp(min=1)[:, None]  # (N, L)
    ids = torch.tensor(sorted(set(special_ids)), dtype=tokens.dtype, device=tokens.device)
    special = torch.isin(tokens, ids) & generated
    mask = generated & ~special
    if eos == "cut":
        mask &= special.cumsum(dim=1) == 0
    return mask


def records_mask(
    records: Sequence[dict[str, Any]], info: VocabInfo, eos: str
) -> tuple[list[list[int]], list[list[bool]]]:
    """Tokens and scored masks of every record (lists; records may differ in length)."""
    toks, masks = [], []
    for rec in records:
        t = torch.tensor(rec["tokens"], dtype=torch.long)[None]
        m = scored_mask(t, torch.tensor([rec["prompt_len"]]), info.special, eos)[0]
        toks.append(rec["tokens"])
        masks.append(m.tolist())
    return toks, masks


def unigram_entropy(ids: Sequence[int] | np.ndarray) -> float:
    """H = -sum_v p_v log p_v (nats) of the empirical unigram distribution of `ids`."""
    _, counts = np.unique(np.asarray(ids), return_counts=True)
    if counts.size == 0:
        return float("nan")
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def entropy_stats(tokens: list[list[int]], masks: list[list[bool]]) -> dict[str, float]:
    """Per-sample mean and pooled unigram entropy over the masked-in ids."""
    kept = [np.asarray(t)[np.asarray(m, dtype=bool)] for t, m in zip(tokens, masks, strict=True)]
    per = [unigram_entropy(k) for k in kept if k.size]
    pooled = np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)
    return {
        "entropy_per_sample_mean": float(np.mean(per)) if per else float("nan"),
        "entropy_pooled": unigram_entropy(pooled),
    }


# --------------------------------------------------------------------------- Gen PPL, costs
def gen_ppl(nll: np.ndarray, ntok: np.ndarray) -> dict[str, float]:
    """Corpus-level exp(sum NLL / sum n) and the mean of per-sample exp(NLL_i / n_i)."""
    nll, ntok = np.asarray(nll, dtype=np.float64), np.asarray(ntok, dtype=np.float64)
    has = ntok > 0
    total = ntok.sum()
    per_token = float(nll.sum() / total) if total > 0 else float("nan")
    per_sample = np.exp(nll[has] / ntok[has])
    return {
        "nll_per_token": per_token,
        "gen_ppl_corpus": math.exp(per_token) if total > 0 else float("nan"),
        "gen_ppl_per_sample_mean": float(per_sample.mean()) if has.any() else float("nan"),
        "tokens_scored": int(total),
        "n_scored": int(has.sum()),
    }


def costs(records: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """NFE and seconds per sample, and generated tokens per second, from the records.

    Seconds are the sum over stages of each stage entry's `seconds` (the sample's share of
    wall-clock); tokens/s = generated tokens (length - prompt_len) over total seconds.
    """
    nfe = float(np.mean([r["nfe"] for r in records]))
    secs = [sum(float(s.get("seconds", 0.0) or 0.0) for s in r["stages"]) for r in records]
    total = float(sum(secs))
    gen_tokens = sum(len(r["tokens"]) - r["prompt_len"] for r in records)
    timed = any("seconds" in s for r in records for s in r["stages"])
    return {
        "nfe_per_sample": nfe,
        "seconds_per_sample": total / len(records) if timed else None,
        "tokens_per_second": gen_tokens / total if timed and total > 0 else None,
    }


def low_entropy_stats(
    records: Sequence[dict[str, Any]], threshold: float, window: int
) -> dict[str, Any]:
    """How many samples end in a low-entropy window (BD3-LM's degenerate-sample rule on the
    finished sample): unigram entropy (nats) of the last `window` model-vocabulary tokens
    below `threshold`; only samples longer than `window` are checked, as in the reference."""
    tails = [tail_entropy(r["tokens"], window) for r in records]
    checked = [h for h in tails if h is not None]
    return {
        "low_entropy": threshold,
        "low_entropy_window": window,
        "n_low_entropy": sum(1 for h in checked if h < threshold),
        "n_low_entropy_checked": len(checked),
    }


def finite(obj: Any) -> Any:
    """Replace NaN/inf by None (recursively) so the object is valid JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite(v) for v in obj]
    return obj


def summarize(
    records: Sequence[dict[str, Any]],
    scores: Scores,
    info: VocabInfo,
    eos: str,
    evaluator: dict[str, Any],
    low_entropy: tuple[float, int] | None = None,
) -> dict[str, Any]:
    """The JSON summary of one group: Gen PPL (both kinds), entropy, costs, settings, n;
    with `low_entropy` (threshold, window) also the count of low-entropy samples."""
    tokens, masks = records_mask(records, info, eos)
    out: dict[str, Any] = {"evaluator": evaluator, "n": len(records)}
    out.update(gen_ppl(scores.nll, scores.ntok))
    out.update(entropy_stats(tokens, masks))
    if low_entropy is not None:
        out.update(low_entropy_stats(records, *low_entropy))
    out["entropy_over"] = ENTROPY_OVER
    out["eos"] = eos
    out.update(costs(records))
    settings = sampler_settings(records)
    out["settings"] = settings
    out["settings_short"] = short_settings(settings)
    if scores.notes:
        out["notes"] = list(scores.notes)
    return finite(out)


@dataclass
class Scores:
    """A judge's output for n samples: summed NLL (nats) and number of scored tokens."""

    nll: np.ndarray  # (n,) float64
    ntok: np.ndarray  # (n,) int64
    notes: list[str] = field(default_factory=list)

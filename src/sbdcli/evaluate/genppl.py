"""Evaluation protocol: Gen PPL with entropy, oracle scoring, block-1 judges, test perplexity.

What `sbd eval` measures, in one place (docs/evaluation.md states the same in prose):
- **Scored positions** of a sample in model-vocabulary ids (`scored_mask`): positions at or
  after `prompt_len` (BOS is position 0 and never scored), never a special id (BOS/EOS);
  EOS rule `skip` (default, BD3-LM's): EOS tokens stay in the sequence as context but are not
  scored; `cut`: the sample ends at its first generated EOS and nothing after it counts.
- **Gen PPL**: `gen_ppl_corpus` = exp(sum NLL / sum scored tokens) over a group, and
  `gen_ppl_per_sample_mean` = mean over samples of exp(NLL_i / n_i); both always reported.
- **Unigram entropy** (nats) over the scored positions' model-vocabulary ids: the mean over
  samples of each sample's entropy (BD3-LM's definition) and the entropy of the pooled counts.
- **Judges**: `OracleJudge` (exact likelihood of the synthetic language), `SbdJudge` (an sbd
  run trained with block size 1: exact autoregressive likelihood in one vectorised pass),
  and `hf_judge.HFJudge` (a transformers causal LM on retokenised text).
- **Test perplexity** (`heldout_perplexity`): exp(NELBO) on held-out rows, Monte Carlo over the
  antithetic noise draws with a standard error; block size 1 is exact (every token masked).
- Grouping records by their stage history, costs and sampler settings, markdown and plots.

It is not a sampler and not a CLI: it never prints; notes for the user are returned.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sbdcli.artifacts import atomic_path, read_json
from sbdcli.config import EOS_MODES, GenPplOptions
from sbdcli.errors import UserError

NOT_SETTINGS = frozenset(
    {"nfe", "seconds", "cache_writes", "seed", "batch_size", "n_masked", "model"}
)
"""Stage-entry keys that are costs, seeds or per-batch/per-record outcomes, not settings:
records that differ only in these belong to the same group."""
ENTROPY_OVER = (
    "model-vocabulary ids at scored positions (generated positions after the prompt; "
    "BOS, EOS and MASK excluded; with --eos cut only before the first EOS)"
)
Progress = Callable[[int], None] | None


# --------------------------------------------------------------------------- records
def parse_model_field(model: str) -> tuple[str, str | None]:
    """Split a record's `model` field "<path>@<sha12>" into (path, sha or None)."""
    path, sep, sha = model.rpartition("@")
    return (path, sha) if sep and path else (model, None)


def run_dir_of(records: Sequence[dict[str, Any]]) -> Path | None:
    """The sbd run directory named by the records' `model` field, if it exists here."""
    paths = {parse_model_field(r["model"])[0] for r in records}
    for raw in sorted(paths):
        p = Path(raw)
        run = p if p.is_dir() else p.parent
        if (run / "data" / "manifest.json").is_file() or (run / "config.json").is_file():
            return run
    return None


def stage_settings(stage: dict[str, Any]) -> dict[str, Any]:
    """A stage entry without its costs and seed: the parameters that define a group."""
    return {
        k: v
        for k, v in stage.items()
        if k not in NOT_SETTINGS
        and not k.endswith("_seconds")
        and isinstance(v, (str, int, float, bool, type(None)))
    }


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def stage_signature(rec: dict[str, Any]) -> str:
    """Human-readable stage history, e.g. `draft(block_size=4, top_p=0.9) → revise(...)`."""
    parts = []
    for stage in rec["stages"]:
        params = stage_settings(stage)
        name = params.pop("name", "?")
        inner = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(params.items()))
        parts.append(f"{name}({inner})")
    return " → ".join(parts) if parts else "(no stages)"


def group_records(records: Sequence[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Records grouped by stage signature, groups in order of first appearance."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        groups.setdefault(stage_signature(rec), []).append(rec)
    return list(groups.items())


def sampler_settings(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Settings carried by a group's records: stage parameters, seeds per stage, length."""
    stages = [dict(stage_settings(s)) for s in records[0]["stages"]]
    for j, entry in enumerate(stages):
        seeds = sorted(
            {r["stages"][j].get("seed") for r in records if j < len(r["stages"])} - {None}
        )
        entry["seeds"] = seeds
    lengths = sorted({len(r["tokens"]) for r in records})
    prompts = sorted({r["prompt_len"] for r in records})
    models = sorted({r["model"] for r in records})
    return {"stages": stages, "length": lengths, "prompt_len": prompts, "model": models}


def short_settings(settings: dict[str, Any]) -> str:
    """One line for tables: `draft B4 p0.9 float64 · remask snapshot γ0.25 · revise B128`."""
    names = {"strategy": "", "block": "B", "block_size": "B", "top_p": "p", "gamma": "γ"}
    names.update(steps_per_block="S", temperature="T")
    out = []
    for st in settings["stages"]:
        bits = [str(st.get("name", "?"))]
        block = "block" if st.get("block") == "full" else "block_size"
        for key in ("strategy", block, "steps_per_block", "gamma", "top_p", "temperature"):
            if st.get(key) is not None and not (key == "temperature" and st[key] == 1.0):
                bits.append(f"{names[key]}{_fmt(st[key])}")
        if st.get("first_hitting"):
            bits.append("first-hitting")
        if st.get("dtype") is not None:
            bits.append(str(st["dtype"]))
        seeds = st.get("seeds") or []
        if seeds:
            bits.append(f"seed {seeds[0]}" + ("…" if len(seeds) > 1 else ""))
        out.append(" ".join(bits))
    return " · ".join(out)


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


# --------------------------------------------------------------------------- masks, entropy
def scored_mask(
    tokens: torch.Tensor, prompt_len: torch.Tensor, special_ids: Sequence[int], eos: str = "skip"
) -> torch.Tensor:
    """Which positions are scored: bool (N, L) for tokens (N, L), prompt_len (N,).

    Generated positions (>= max(prompt_len, 1)) that are not special (BOS/EOS); with
    eos="cut" also nothing at or after the first special id in the generated part.
    """
    if eos not in EOS_MODES:
        raise UserError(f"--eos must be one of {', '.join(EOS_MODES)}")
    pos = torch.arange(tokens.shape[1], device=tokens.device)
    generated = pos[None, :] >= prompt_len.clamp(min=1)[:, None]  # (N, L)
    ids = torch.tensor(sorted(set(special_ids)), dtype=tokens.dtype, device=tokens.device)
    special = torch.isin(tokens, ids) & generated
    mask = generated & ~special
    if eos == "cut":
        mask &= special.cumsum(dim=1) == 0
    return mask


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


# --------------------------------------------------------------------------- aggregation
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


def _finite(obj: Any) -> Any:
    """Replace NaN/inf by None so the object is valid JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


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


def vocab_info(records: Sequence[dict[str, Any]], data_dir: Path | None) -> VocabInfo:
    """Special ids from `--data`, else the records' run data manifest, else BOS = tokens[0]."""
    for base in (data_dir, (run_dir_of(records) or Path("/nonexistent")) / "data"):
        if base is not None and (base / "manifest.json").is_file():
            return VocabInfo.from_manifest(read_json(base / "manifest.json", "manifest"), str(base))
    first = records[0]["tokens"][0] if records[0]["tokens"] else None
    return VocabInfo(first, first, None, None, None, "position 0 of the records")


@dataclass
class Scores:
    """A judge's output for n samples: summed NLL (nats) and number of scored tokens."""

    nll: np.ndarray  # (n,) float64
    ntok: np.ndarray  # (n,) int64
    notes: list[str] = field(default_factory=list)


def summarize(
    records: Sequence[dict[str, Any]],
    scores: Scores,
    info: VocabInfo,
    eos: str,
    evaluator: dict[str, Any],
) -> dict[str, Any]:
    """The JSON summary of one group: Gen PPL (both kinds), entropy, costs, settings, n."""
    tokens, masks = records_mask(records, info, eos)
    out: dict[str, Any] = {"evaluator": evaluator, "n": len(records)}
    out.update(gen_ppl(scores.nll, scores.ntok))
    out.update(entropy_stats(tokens, masks))
    out["entropy_over"] = ENTROPY_OVER
    out["eos"] = eos
    out.update(costs(records))
    settings = sampler_settings(records)
    out["settings"] = settings
    out["settings_short"] = short_settings(settings)
    if scores.notes:
        out["notes"] = list(scores.notes)
    return _finite(out)


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


def stack_by_length(records: Sequence[dict[str, Any]]) -> dict[int, list[int]]:
    """Indices of records grouped by sequence length (so they stack into tensors)."""
    by: dict[int, list[int]] = {}
    for i, rec in enumerate(records):
        by.setdefault(len(rec["tokens"]), []).append(i)
    return by


# --------------------------------------------------------------------------- oracle judge
class OracleJudge:
    """Exact NLL of samples under the synthetic language's true generator.

    Scores x_{prompt_len}..x_{L-1} given the prefix: log p(x) - log p(x_<prompt_len), both
    exact (logsumexp over topics). Every generated position counts (the language has no EOS).
    """

    kind = "oracle"

    def __init__(self, data_dir: Path, manifest: dict[str, Any] | None = None) -> None:
        from sbdcli.data.synthetic import load_oracle

        path = data_dir / "oracle.safetensors"
        if not path.is_file():
            raise UserError(f"no oracle.safetensors in {data_dir}: not a synthetic-language run")
        self.path = path
        self.oracle = load_oracle(path)
        self.manifest = manifest or {}
        self.n_words = self.oracle.vocab  # V content tokens

    def describe(self) -> dict[str, Any]:
        return {"kind": "oracle", "path": str(self.path)}

    def check(self, records: Sequence[dict[str, Any]]) -> None:
        for i, rec in enumerate(records):
            if not rec["tokens"] or rec["tokens"][0] != self.oracle.bos_id:
                raise UserError(
                    f"record {i} (id {rec['id']!r}) does not start with the synthetic "
                    f"language's BOS ({self.oracle.bos_id}): different tokenizer"
                )
            bad = [t for t in rec["tokens"][1:] if not 0 <= t < self.n_words]
            if bad:
                raise UserError(
                    f"record {i} (id {rec['id']!r}): token id {bad[0]} is not a word of the "
                    f"synthetic language (V={self.n_words}); the records come from a "
                    "different tokenizer than this oracle"
                )

    def _loglik(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[1] <= 1:
            return torch.zeros(tokens.shape[0], dtype=torch.float64)
        return self.oracle.log_likelihood(tokens).to(torch.float64)

    def score(self, records: Sequence[dict[str, Any]], progress: Progress = None) -> Scores:
        self.check(records)
        nll = np.zeros(len(records))
        ntok = np.zeros(len(records), dtype=np.int64)
        for length, idx in stack_by_length(records).items():
            tokens = torch.tensor([records[i]["tokens"] for i in idx], dtype=torch.long)
            prompt = torch.tensor([max(records[i]["prompt_len"], 1) for i in idx])
            full = self._loglik(tokens)  # (n,)
            prefix = torch.zeros_like(full)
            for p in prompt.unique().tolist():
                rows = (prompt == p).nonzero().flatten()
                prefix[rows] = self._loglik(tokens[rows, :p])
            nll[idx] = (prefix - full).numpy()
            ntok[idx] = (length - prompt).numpy()
            if progress:
                progress(len(idx))
        return Scores(nll, ntok)

    def floor(self, length: int, n: int = 1000, seed: int = 0) -> dict[str, Any]:
        """Oracle floor: mean NLL per token of true samples of this length, and their entropy.

        Taken from the data manifest when it was measured at this length, else computed from
        n fresh true samples drawn with `seed`.
        """
        ref = _find_dict_with(self.manifest, "nll_per_token") or {}
        ref_len = ref.get("seq_len", self.manifest.get("seq_len"))
        if ref and ref_len == length and ref.get("unigram_entropy") is not None:
            source = f"data manifest ({ref.get('samples', '?')} true samples)"
        else:
            gen = torch.Generator().manual_seed(seed)
            ref = self.oracle.reference_numbers(n, length, gen)
            source = f"{n} fresh true samples (seed {seed})"
        floor = float(ref["nll_per_token"])
        return {
            "oracle_floor_nll_per_token": floor,
            "oracle_floor_ppl": math.exp(floor),
            "oracle_floor_source": source,
            "oracle_true_entropy_per_sample_mean": float(ref["unigram_entropy"]),
        }


def _find_dict_with(obj: Any, key: str) -> dict[str, Any] | None:
    """The first (nested) dict that holds `key`, or None."""
    if isinstance(obj, dict):
        if key in obj:
            return obj
        for value in obj.values():
            found = _find_dict_with(value, key)
            if found is not None:
                return found
    return None


# --------------------------------------------------------------------------- sbd judge
def trained_block_sizes(run: Path) -> list[int] | None:
    """Block sizes an sbd run was trained with (from RUN/config.json), None if unknown."""
    cfg_path = run / "config.json"
    if not cfg_path.is_file():
        return None
    cfg = read_json(cfg_path, "run config")
    train = cfg.get("train") if isinstance(cfg, dict) else None
    if isinstance(cfg, dict) and "block_size" in cfg and "model_type" in cfg:  # BD3-LM HF dir
        return [int(cfg["block_size"])]
    if not isinstance(train, dict) or "block_small" not in train:
        return None
    lam = float(train.get("mix_lambda", 0.0))
    small, large = int(train["block_small"]), int(train.get("block_large", train["block_small"]))
    if lam == 0.0:
        return [small]
    return [large] if lam == 1.0 else sorted({small, large})


class SbdJudge:
    """Exact autoregressive likelihood under an sbd run trained with block size 1.

    One vectorised pass per batch: x_t = every position masked except BOS, x_0 = the
    sample, block size 1 → logits at position i see only x_0[<i] (METHOD §5); SUBS
    log-probabilities (mask logit suppressed) give log p(x_i | x_<i) exactly.
    """

    kind = "sbd"

    def __init__(
        self,
        model: torch.nn.Module,
        info: VocabInfo,
        *,
        run: Path | None = None,
        blocks: list[int] | None = None,
        batch_size: int = 8,
    ) -> None:
        self.model, self.info, self.run, self.blocks = model, info, run, blocks
        self.config = model.config  # type: ignore[attr-defined]
        self.device = next(model.parameters()).device
        self.batch_size = batch_size
        self.notes: list[str] = []
        if self.blocks != [1]:
            what = "unknown block sizes" if self.blocks is None else f"block sizes {self.blocks}"
            self.notes.append(
                f"judge {run} was trained with {what}, not block size 1: its block-1 "
                "likelihood is exact only for a model trained with --block 1"
            )

    @classmethod
    def load(cls, run: Path, device: str = "cpu", batch_size: int = 8) -> SbdJudge:
        """The judge of an sbd run directory (or BD3-LM/MDLM checkpoint directory)."""
        from sbdcli.model.checkpoint import load_model

        model = load_model(str(run), device=device)
        cfg = model.config
        manifest = run / "data" / "manifest.json"
        info = (
            VocabInfo.from_manifest(read_json(manifest, "manifest"), str(run / "data"))
            if manifest.is_file()
            else VocabInfo(cfg.bos_id, cfg.eos_id, cfg.mask_id, cfg.vocab_size)
        )
        return cls(model, info, run=run, blocks=trained_block_sizes(run), batch_size=batch_size)

    def describe(self) -> dict[str, Any]:
        return {"kind": "sbd-block1", "path": str(self.run), "trained_blocks": self.blocks}

    def check(self, records: Sequence[dict[str, Any]], records_info: VocabInfo) -> None:
        """Refuse records of another tokenizer; note when the judge is not a block-1 run."""
        if self.blocks != [1]:
            what = "unknown block sizes" if self.blocks is None else f"block sizes {self.blocks}"
            self.notes.append(
                f"judge {self.run} was trained with {what}, not block size 1: its block-1 "
                "likelihood is exact only for a model trained with --block 1"
            )
        mine, theirs = self.info.tokenizer_sha, records_info.tokenizer_sha
        if mine and theirs and mine != theirs:
            raise UserError(
                f"the records' run used tokenizer sha256 {theirs[:12]}, the judge {self.run} "
                f"was trained with {mine[:12]}: a block-1 judge must share the tokenizer"
            )
        vocab, mask = self.config.vocab_size, self.config.mask_id
        for i, rec in enumerate(records):
            bad = [t for t in rec["tokens"] if not 0 <= t < vocab or t == mask]
            if bad:
                raise UserError(
                    f"record {i} (id {rec['id']!r}): token id {bad[0]} is not a token of the "
                    f"judge {self.run} (vocab {vocab}, mask {mask}): different tokenizer"
                )
            if len(rec["tokens"]) > self.config.seq_len:
                raise UserError(
                    f"record {i}: length {len(rec['tokens'])} exceeds the judge's trained "
                    f"length {self.config.seq_len}"
                )

    @torch.inference_mode()
    def token_logprobs(self, x0: torch.Tensor) -> torch.Tensor:
        """log p(x0_i | x0_<i) for every position i >= 1: (B, L) float32 (position 0 = 0)."""
        from sbdcli.diffusion.loss import subs_log_probs

        x_t = torch.full_like(x0, self.config.mask_id)
        x_t[:, 0] = x0[:, 0]
        logits = self.model.train_logits(x_t, x0, 1)  # (B, L, V)
        logp = subs_log_probs(logits, x_t, self.config.mask_id)
        out = logp.gather(-1, x0[..., None])[..., 0]  # (B, L)
        out[:, 0] = 0.0
        return out

    def score(
        self, records: Sequence[dict[str, Any]], eos: str = "skip", progress: Progress = None
    ) -> Scores:
        nll = np.zeros(len(records))
        ntok = np.zeros(len(records), dtype=np.int64)
        for _, idx in stack_by_length(records).items():
            for start in range(0, len(idx), self.batch_size):
                rows = idx[start : start + self.batch_size]
                x0 = torch.tensor([records[i]["tokens"] for i in rows], device=self.device)
                prompt = torch.tensor([records[i]["prompt_len"] for i in rows], device=self.device)
                mask = scored_mask(x0, prompt, self.info.special, eos)
                lp = self.token_logprobs(x0).double()
                nll[rows] = (-(lp * mask)).sum(1).cpu().numpy()
                ntok[rows] = mask.sum(1).cpu().numpy()
                if progress:
                    progress(len(rows))
        return Scores(nll, ntok, list(self.notes))


# --------------------------------------------------------------------------- test perplexity
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

    def to_dict(self) -> dict[str, Any]:
        lo, hi = self.nelbo - 2 * self.stderr, self.nelbo + 2 * self.stderr
        return _finite(
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
    progress: Progress = None,
) -> PplResult:
    """exp(NELBO) of `rows` (N, L) under the block NELBO (METHOD §5).

    NELBO per token = sum of `token_nelbo` over positions 1..L-1 / (N (L - 1)) (BOS is never
    predicted; BD3-LM's `ignore_bos`). Each of `mc` repetitions draws fresh antithetic
    t in [eps_min, eps_max] per (row, block) from seed + rep; stderr = std / sqrt(mc).
    Block size 1 is evaluated exactly: t = 1 masks every token (weight 1) → the AR NLL.
    `t` ((N, n_blocks) or (N, L)) and `x_t` (N, L) fix the noise instead (one repetition),
    e.g. to reproduce a reference implementation's numbers.
    """
    from sbdcli.diffusion.loss import block_nelbo

    exact = block_size == 1 and t is None and x_t is None
    reps = 1 if exact or t is not None or x_t is not None else mc
    device = next(model.parameters()).device
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
            with torch.inference_mode():
                out = block_nelbo(
                    model, x0, block_size, generator=gen, eps_min=eps_min, eps_max=eps_max,
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
    return PplResult(float(arr.mean()), stderr, values, block_size, count, rows.shape[0], exact)


def check_ppl_inputs(
    model: torch.nn.Module, run: Path, data_dir: Path, rows: torch.Tensor, block_size: int
) -> None:
    """One-line errors when held-out rows do not fit the model (tokenizer, vocab, length)."""
    cfg = model.config
    theirs = run / "data" / "manifest.json"
    mine = data_dir / "manifest.json"
    if theirs.is_file() and mine.is_file():
        a = VocabInfo.from_manifest(read_json(theirs, "manifest"), str(theirs)).tokenizer_sha
        b = VocabInfo.from_manifest(read_json(mine, "manifest"), str(mine)).tokenizer_sha
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
        raise UserError(f"block size {block_size} must divide the sequence length {length}")


# --------------------------------------------------------------------------- tables, plots
COLUMNS = (
    ("name", "file / group"),
    ("n", "n"),
    ("gen_ppl_corpus", "Gen PPL (corpus)"),
    ("gen_ppl_per_sample_mean", "Gen PPL (mean/sample)"),
    ("nll_per_token", "NLL/tok"),
    ("oracle_floor_nll_per_token", "oracle floor (NLL/tok)"),
    ("entropy_per_sample_mean", "entropy"),
    ("nfe_per_sample", "NFE"),
    ("seconds_per_sample", "s/sample"),
    ("tokens_per_second", "tok/s"),
    ("settings_short", "settings"),
)


def cell(value: Any) -> str:
    """Format one table cell: floats with 4 significant digits, None as a dash."""
    if value is None:
        return "–"
    if isinstance(value, float):
        if abs(value) >= 1e6:
            return f"{value:.3e}"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:#.4g}".rstrip(".")
    return str(value)


def table_rows(summaries: Sequence[dict[str, Any]]) -> list[list[str]]:
    """Rows of cells (in COLUMNS order), only columns some summary has."""
    cols = visible_columns(summaries)
    return [[cell(s.get(key)) for key, _ in cols] for s in summaries]


def visible_columns(summaries: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(k, h) for k, h in COLUMNS if any(s.get(k) is not None for s in summaries)]


def markdown_table(summaries: Sequence[dict[str, Any]]) -> str:
    """The summary table as GitHub markdown (for docs/)."""
    cols = visible_columns(summaries)
    lines = [
        "| " + " | ".join(h for _, h in cols) + " |",
        "|" + "|".join("---" for _ in cols) + "|",
    ]
    for row in table_rows(summaries):
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    evaluator = summaries[0].get("evaluator", {}) if summaries else {}
    lines.append("")
    lines.append(
        f"Evaluator: {evaluator.get('kind', '?')} {evaluator.get('path', '')}".rstrip()
        + f"; EOS rule: {summaries[0].get('eos') if summaries else '?'}; entropy in nats over "
        + ENTROPY_OVER
        + "."
    )
    return "\n".join(lines) + "\n"


def plot_genppl(summaries: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Gen PPL (corpus) against NFE and against seconds per sample, entropy annotated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for ax, key, label in (
        (axes[0], "nfe_per_sample", "NFE per sample"),
        (axes[1], "seconds_per_sample", "seconds per sample"),
    ):
        _plot_axis(ax, summaries, key, label)
    floor = next((s["oracle_floor_ppl"] for s in summaries if s.get("oracle_floor_ppl")), None)
    for ax in axes:
        if floor:
            ax.axhline(floor, color="grey", ls="--", lw=1, label="oracle floor")
        ax.set_yscale("log")
        ax.margins(x=0.2, y=0.15)
    axes[0].legend(fontsize=7, loc="best")
    ev = summaries[0].get("evaluator", {}) if summaries else {}
    fig.suptitle(
        f"Gen PPL under {ev.get('kind', '?')} {Path(str(ev.get('path', ''))).name} "
        "(H = unigram entropy per sample, nats)",
        fontsize=10,
    )
    fmt = Path(path).suffix.lstrip(".") or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=130)
    plt.close(fig)


def _plot_axis(ax: Any, summaries: Sequence[dict[str, Any]], key: str, label: str) -> None:
    for i, s in enumerate(summaries):
        x, y = s.get(key), s.get("gen_ppl_corpus")
        if x is None or y is None:
            continue
        ax.scatter([x], [y], color=f"C{i % 10}", label=f"[{i + 1}] {s.get('name', '')}"[:70])
        ent = s.get("entropy_per_sample_mean")
        note = f"[{i + 1}] H={ent:.2f}" if ent is not None else f"[{i + 1}]"
        ax.annotate(note, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel(label)
    ax.set_ylabel("Gen PPL (corpus-level)")
    ax.grid(alpha=0.3)


# --------------------------------------------------------------------------- driver
def _oracle_dir(records: Sequence[dict[str, Any]], data_dir: Path | None) -> Path | None:
    for base in (data_dir, (run_dir_of(records) or Path("/nonexistent")) / "data"):
        if base is not None and (base / "oracle.safetensors").is_file():
            return base
    return None


def _is_sbd_model(path: Path) -> bool:
    """An sbd run directory, an sbd model.safetensors, or a BD3-LM/MDLM HF directory."""
    if path.is_file():
        return path.suffix == ".safetensors"
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        return (path / "model.safetensors").is_file()
    cfg = read_json(cfg_path, "config")
    if not isinstance(cfg, dict):
        return False
    if "model_type" in cfg:
        return str(cfg["model_type"]).lower() in ("bd3lm", "mdlm")
    return "model" in cfg


def make_judge(opts: GenPplOptions, records: Sequence[dict[str, Any]], info: VocabInfo) -> Any:
    """Resolve `--evaluator` (or its default) to a judge object; UserError when impossible."""
    spec = opts.evaluator
    oracle_dir = _oracle_dir(records, opts.data_dir)
    if spec is None:
        if oracle_dir is None:
            raise UserError(
                "--evaluator is required: these records do not come from a run trained on the "
                "synthetic language (give a transformers causal-LM directory, an sbd run "
                "trained with --block 1, or 'oracle' with --data DIR)"
            )
        spec = "oracle"
    if spec == "oracle":
        if oracle_dir is None:
            model = records[0]["model"]
            raise UserError(
                f"--evaluator oracle: no oracle.safetensors found via the records' model "
                f"'{model}'; pass --data DIR of the synthetic language"
            )
        manifest = oracle_dir / "manifest.json"
        meta = read_json(manifest, "manifest") if manifest.is_file() else {}
        return OracleJudge(oracle_dir, meta)
    path = Path(spec)
    if not path.exists():
        raise UserError(f"evaluator {spec}: not 'oracle' and no such file or directory")
    if _is_sbd_model(path):
        judge = SbdJudge.load(path if path.is_dir() else path.parent, opts.device, opts.batch_size)
        judge.check(records, info)
        return judge
    from sbdcli.evaluate.hf_judge import HFJudge

    return HFJudge(
        path,
        device=opts.device,
        batch_size=opts.batch_size,
        context=opts.context,
        stride=opts.stride,
        codec=_records_codec(records, opts.data_dir),
        special_ids=info.special,
        eos=opts.eos,
    )


def _records_codec(records: Sequence[dict[str, Any]], data_dir: Path | None) -> Any:
    """The codec of the records' run (or --data), None when neither is reachable."""
    from sbdcli.data import load_codec

    for base in (data_dir, (run_dir_of(records) or Path("/nonexistent")) / "data"):
        if base is not None and (base / "manifest.json").is_file():
            return load_codec(base)
    return None


def check_finished(records: Sequence[dict[str, Any]], info: VocabInfo) -> list[str]:
    """Refuse samples that still hold [MASK]; note remasked-but-unrevised records."""
    if info.mask_id is not None:
        for i, rec in enumerate(records):
            if info.mask_id in rec["tokens"]:
                pos = rec["tokens"].index(info.mask_id)
                raise UserError(
                    f"record {i} (id {rec['id']!r}) holds [MASK] at position {pos}: "
                    "not a finished sample"
                )
    pending = sum(1 for r in records if r["masked"])
    if not pending:
        return []
    return [
        f"{pending} records still list masked positions (remask without revise): "
        "their current tokens were scored"
    ]


def evaluate_sets(
    sets: Sequence[tuple[str, list[dict[str, Any]]]],
    opts: GenPplOptions,
    progress: Progress = None,
) -> list[dict[str, Any]]:
    """Judge every (name, records) set; one summary per file, or per stage group of a file."""
    if opts.eos not in EOS_MODES:
        raise UserError(f"--eos must be one of {', '.join(EOS_MODES)}")
    every = [r for _, recs in sets for r in recs]
    if not every:
        raise UserError("no records to evaluate (empty input)")
    info = vocab_info(every, opts.data_dir)
    notes = check_finished(every, info)
    judge = make_judge(opts, every, info)
    summaries = []
    for name, recs in sets:
        groups = group_records(recs) if opts.group else [("all stages", recs)]
        for label, grp in groups:
            if isinstance(judge, OracleJudge):
                scores = judge.score(grp, progress)
            elif isinstance(judge, SbdJudge):
                scores = judge.score(grp, opts.eos, progress)
            else:
                scores = judge.score(grp, progress)
            summary = {"file": name, "group": label}
            summary["name"] = name if len(groups) == 1 else f"{name} · {label}"
            scores.notes = [*scores.notes, *notes]
            summary.update(summarize(grp, scores, info, opts.eos, judge.describe()))
            if isinstance(judge, OracleJudge):
                length = max(len(r["tokens"]) for r in grp)
                summary.update(judge.floor(length, opts.floor_samples, opts.seed))
            summaries.append(summary)
    return summaries

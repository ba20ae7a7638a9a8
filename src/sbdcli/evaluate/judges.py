"""Judges of `sbd eval genppl`: the `Judge` protocol, its `Scores`, and two of its judges.

- `Judge`: what the driver (genppl.py) asks of every judge: `check` the records before any
  scoring, `score` a group of records into `Scores`, `describe` itself for the summary,
  `extras` (numbers only it can add, e.g. the oracle floor) and its `notes` for the user.
- `OracleJudge`: exact likelihood under the synthetic language's true generator.
- `SbdJudge`: an sbd run trained with block size 1: exact autoregressive likelihood in one
  vectorised pass (docs/evaluation.md, "The block-1 judge").

The third judge, a transformers causal LM, is hf_judge.HFJudge. Choosing a judge from
`--evaluator` is the driver's (genppl.make_judge). Not here: the metric math (metrics.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from sbdcli.artifacts import read_json
from sbdcli.artifacts.records import group_by_length
from sbdcli.artifacts.rundir import RunDir
from sbdcli.config import GenPplOptions
from sbdcli.data.synthetic import load_oracle
from sbdcli.diffusion.loss import subs_log_probs
from sbdcli.diffusion.precision import for_calls, network
from sbdcli.diffusion.precision import resolve as resolve_precision
from sbdcli.errors import UserError
from sbdcli.evaluate.metrics import Advance, Scores, VocabInfo, scored_mask
from sbdcli.model import load_model


@runtime_checkable
class Judge(Protocol):
    """Every judge of `sbd eval genppl` (oracle, sbd block-1 run, transformers causal LM)."""

    kind: str
    notes: list[str]
    """Remarks for the user; each `score` result carries them."""

    def check(self, records: Sequence[dict[str, Any]], info: VocabInfo) -> None:
        """Refuse (UserError) records the judge cannot score, before anything is scored."""
        ...

    def score(self, records: Sequence[dict[str, Any]], progress: Advance = None) -> Scores:
        """Summed NLL and scored-token count of every record (one group)."""
        ...

    def describe(self) -> dict[str, Any]:
        """The summary's `evaluator` object."""
        ...

    def extras(self, records: Sequence[dict[str, Any]], opts: GenPplOptions) -> dict[str, Any]:
        """Numbers only this judge can add to a group's summary ({} for most)."""
        ...


# --------------------------------------------------------------------------- oracle judge
class OracleJudge:
    """Exact NLL of samples under the synthetic language's true generator.

    Scores x_{prompt_len}..x_{L-1} given the prefix: log p(x) - log p(x_<prompt_len), both
    exact (logsumexp over topics). Every generated position counts (the language has no EOS).
    """

    kind = "oracle"

    def __init__(self, data_dir: Path, manifest: dict[str, Any] | None = None) -> None:
        path = data_dir / "oracle.safetensors"
        if not path.is_file():
            raise UserError(f"no oracle.safetensors in {data_dir}: not a synthetic-language run")
        self.path = path
        self.oracle = load_oracle(path)
        self.manifest = manifest or {}
        self.n_words = self.oracle.vocab  # V content tokens
        self.notes: list[str] = []

    def describe(self) -> dict[str, Any]:
        return {"kind": "oracle", "path": str(self.path)}

    def check(self, records: Sequence[dict[str, Any]], info: VocabInfo) -> None:
        """Nothing up front: `score` checks each group's words (record numbers per group)."""

    def check_words(self, records: Sequence[dict[str, Any]]) -> None:
        """Refuse records that are not sentences of the synthetic language."""
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

    def score(self, records: Sequence[dict[str, Any]], progress: Advance = None) -> Scores:
        self.check_words(records)
        nll = np.zeros(len(records))
        ntok = np.zeros(len(records), dtype=np.int64)
        for length, idx in group_by_length(records).items():
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
        return Scores(nll, ntok, list(self.notes))

    def extras(self, records: Sequence[dict[str, Any]], opts: GenPplOptions) -> dict[str, Any]:
        """The oracle floor at the group's (longest) length."""
        length = max(len(r["tokens"]) for r in records)
        return self.floor(length, opts.floor_samples, opts.seed)

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
class SbdJudge:
    """Exact autoregressive likelihood under an sbd run trained with block size 1.

    One vectorised pass per batch: x_t = every position masked except BOS, x_0 = the
    sample, block size 1 → logits at position i see only x_0[<i] (docs/evaluation.md, "The
    block-1 judge"); SUBS log-probabilities (mask logit suppressed) give log p(x_i | x_<i)
    exactly. Positions are scored by the EOS rule `eos` (metrics.scored_mask).
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
        eos: str = "skip",
        precision: str = "fp32",
    ) -> None:
        self.model, self.info, self.run, self.blocks = model, info, run, blocks
        self.config = model.config  # type: ignore[attr-defined]
        self.device = next(model.parameters()).device
        self.precision = resolve_precision(precision, self.device)
        self.batch_size, self.eos = batch_size, eos
        self.notes: list[str] = []
        if self.blocks != [1]:
            self.notes.append(self._block_note())

    @classmethod
    def load(
        cls,
        run: Path,
        device: str = "cpu",
        batch_size: int = 8,
        eos: str = "skip",
        precision: str = "fp32",
    ) -> SbdJudge:
        """The judge of an sbd run directory (or BD3-LM/MDLM checkpoint directory)."""
        model = load_model(str(run), device=device)
        cfg = model.config
        rundir = RunDir(run)
        manifest = rundir.data_dir / "manifest.json"
        info = (
            VocabInfo.from_manifest(read_json(manifest, "manifest"), str(rundir.data_dir))
            if manifest.is_file()
            else VocabInfo(cfg.bos_id, cfg.eos_id, cfg.mask_id, cfg.vocab_size)
        )
        blocks = rundir.trained_block_sizes()
        kw = {"batch_size": batch_size, "eos": eos, "precision": precision}
        return cls(model, info, run=run, blocks=blocks, **kw)  # type: ignore[arg-type]

    def describe(self) -> dict[str, Any]:
        out = {"kind": "sbd-block1", "path": str(self.run), "trained_blocks": self.blocks}
        if self.precision != "fp32":  # absent: fp32
            out["precision"] = self.precision
        return out

    def _block_note(self) -> str:
        what = "unknown block sizes" if self.blocks is None else f"block sizes {self.blocks}"
        return (
            f"judge {self.run} was trained with {what}, not block size 1: its block-1 "
            "likelihood is exact only for a model trained with --block 1"
        )

    def check(self, records: Sequence[dict[str, Any]], info: VocabInfo) -> None:
        """Refuse records of another tokenizer; note when the judge is not a block-1 run."""
        mine, theirs = self.info.tokenizer_sha, info.tokenizer_sha
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

    def extras(self, records: Sequence[dict[str, Any]], opts: GenPplOptions) -> dict[str, Any]:
        return {}

    @torch.inference_mode()
    def token_logprobs(self, x0: torch.Tensor) -> torch.Tensor:
        """log p(x0_i | x0_<i) for every position i >= 1: (B, L) float32 (position 0 = 0)."""
        x_t = torch.full_like(x0, self.config.mask_id)
        x_t[:, 0] = x0[:, 0]
        net = for_calls(self.model, self.precision, self.device)
        with network(self.precision, self.device):
            logits = net.train_logits(x_t, x0, 1)  # (B, L, V)
        logp = subs_log_probs(logits, x_t, self.config.mask_id)
        out = logp.gather(-1, x0[..., None])[..., 0]  # (B, L)
        out[:, 0] = 0.0
        return out

    def score(self, records: Sequence[dict[str, Any]], progress: Advance = None) -> Scores:
        nll = np.zeros(len(records))
        ntok = np.zeros(len(records), dtype=np.int64)
        for _, idx in group_by_length(records).items():
            for start in range(0, len(idx), self.batch_size):
                rows = idx[start : start + self.batch_size]
                x0 = torch.tensor([records[i]["tokens"] for i in rows], device=self.device)
                prompt = torch.tensor([records[i]["prompt_len"] for i in rows], device=self.device)
                mask = scored_mask(x0, prompt, self.info.special, self.eos)
                lp = self.token_logprobs(x0).double()
                nll[rows] = (-(lp * mask)).sum(1).cpu().numpy()
                ntok[rows] = mask.sum(1).cpu().numpy()
                if progress:
                    progress(len(rows))
        return Scores(nll, ntok, list(self.notes))

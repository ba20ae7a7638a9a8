"""The lm-evaluation-harness model `sbd`: an sbd run answering lm-eval's three request types.

- `loglikelihood(context, continuation)`: minus the block NELBO of the continuation with the
  context clean (`sbdcli.evaluate.likelihood`): a lower bound on log p, estimated with K
  (`mc`) Monte Carlo draws shared by all requests with the same context (common random
  numbers), exact for block size 1; `is_greedy` is the denoiser's argmax rule.
- `loglikelihood_rolling(text)`: the same bound over lm-eval's disjoint rolling windows of
  the model's length: the test-perplexity bound of `sbd eval ppl`, summed in nats.
- `generate_until(context, gen_kwargs)`: `sbd draft` (and, with `revise=True`, remask and
  revise) with the command line's defaults on the prompt, cut at the first stop string;
  requests are batched by sequence length and each draws from a generator keyed by its
  own text, so an answer does not depend on the batch or on lm-eval's order.

Model arguments (lm-eval's `--model_args k=v,...`): `pretrained` (the run), `block`
(likelihood block size; default the run's smallest trained block), `mc` (K, default 16),
`estimator` (`count`, default, or `time`: evaluate/likelihood.py), `seed`, `draft_block`
(4), `reveal` (a `--reveal` spelling, e.g. `steps:2`; default `steps`), `steps_per_block`
(the 0.2 name: `steps_per_block=S` is `reveal=steps:S`), `top_p`, `revise` (false),
`gamma` (0.25), `revise_block` (`full`). Importing this module registers the model with
lm-eval.

Not here: the likelihood math (evaluate/likelihood.py), task loading and the results
(run.py), printing (cli/).
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from sbdcli.artifacts.rundir import RunDir
from sbdcli.config import FixedSteps, RemaskConfig, RevealPolicy, SamplerConfig, parse_reveal
from sbdcli.errors import UserError
from sbdcli.evaluate.likelihood import ESTIMATORS, ContinuationScore, continuation_scores
from sbdcli.pipeline import (
    Prompt,
    StagePlan,
    generate_batch,
    load_model_ref,
    parse_block,
    resolve_device,
)

DEFAULT_MC = 16
"""Monte Carlo draws per loglikelihood request when `mc` is not given."""
DEFAULT_MAX_GEN = 256
"""Generated tokens when a generate_until request names no `max_gen_toks` (lm-eval's)."""


MODEL_ARGS = ("block", "mc", "draft_block", "steps_per_block", "reveal", "top_p", "revise",
              "gamma", "revise_block", "estimator")  # fmt: skip
"""The model arguments `sbd eval harness --model-arg` sets (the rest have flags of their own)."""


def _as(kind: type, name: str, value: Any) -> Any:
    """A model argument (lm-eval passes them as text) as an int or a finite float."""
    try:
        out = kind(value)
    except (TypeError, ValueError):
        out = None
    if out is None or (isinstance(out, float) and not math.isfinite(out)):
        what = "an integer" if kind is int else "a finite number"
        raise UserError(f"model arg {name}={value}: expected {what}")
    return out


def _flag(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")


def _draft_reveal(reveal: str | None, steps_per_block: int | str | None) -> RevealPolicy:
    """The draft's reveal policy from `reveal` or its 0.2 name `steps_per_block`."""
    if reveal is not None and steps_per_block is not None:
        raise UserError("model args `reveal` and `steps_per_block` exclude each other")
    if reveal is not None:
        return parse_reveal(str(reveal))
    return FixedSteps(
        None if steps_per_block is None else _as(int, "steps_per_block", steps_per_block)
    )


@register_model("sbd")
class SbdLM(LM):
    """An sbd run as an lm-eval model (module docstring)."""

    def __init__(
        self,
        pretrained: str = "runs/latest",
        device: str = "auto",
        batch_size: int | str = 16,
        block: int | None = None,
        mc: int = DEFAULT_MC,
        seed: int = 0,
        draft_block: int = 4,
        steps_per_block: int | None = None,
        reveal: str | None = None,
        top_p: float | None = None,
        revise: bool | str = False,
        gamma: float = 0.25,
        revise_block: str = "full",
        estimator: str = "count",
        **unused: Any,
    ) -> None:
        super().__init__()
        self.ref = load_model_ref(pretrained, resolve_device(str(device or "auto")))
        if self.ref.codec is None:
            raise UserError(f"{pretrained}: no tokenizer (data/manifest.json); lm-eval sends text")
        self.cfg = self.ref.model.config
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 16
        self.block = _as(int, "block", block) if block is not None else _small_block(pretrained)
        self.mc, self.seed = _as(int, "mc", mc), _as(int, "seed", seed)
        if self.mc < 1 or self.block < 1:
            raise UserError("model args `mc` and `block` must be >= 1")
        if estimator not in ESTIMATORS:
            raise UserError(f"model arg `estimator` {estimator!r}: one of {', '.join(ESTIMATORS)}")
        tc = bool(self.cfg.time_conditioning)
        self.estimator = "exact" if self.block == 1 else "time" if tc else str(estimator)
        extra = {} if top_p is None else {"top_p": _as(float, "top_p", top_p)}
        policy = _draft_reveal(reveal, steps_per_block)
        draft_block = _as(int, "draft_block", draft_block)
        self.draft_cfg = SamplerConfig(block_size=draft_block, reveal=policy, **extra)
        revise_stage = StagePlan(
            RemaskConfig(gamma=_as(float, "gamma", gamma), seed=self.seed),
            SamplerConfig(block_size=parse_block(str(revise_block)), **extra),
            self.seed,
        )
        self.plan = [revise_stage] if _flag(revise) else []
        self.last_scores: list[ContinuationScore] = []
        """The estimates behind the last `loglikelihood` call (for standard errors)."""

    # ------------------------------------------------------------------ tokens
    def _encode(self, text: str) -> list[int]:
        return list(self.ref.codec.encode(text)) if text else []

    def _bos(self) -> int:
        return self.cfg.bos_id if self.cfg.bos_id is not None else self.cfg.mask_id

    def _pair(self, context: str, continuation: str) -> tuple[list[int], int]:
        """BOS + context + continuation ids and the context length; the context is cut on
        the left (after BOS) when the pair exceeds the model's length."""
        whole = self._encode(context + continuation)
        ctx = self._encode(context)
        if whole[: len(ctx)] != ctx:  # a tokenizer that merges across the boundary
            whole = ctx + self._encode(continuation)
        cont = whole[len(ctx) :]
        if not cont:
            raise UserError(f"empty continuation after the context {context[-40:]!r}")
        room = self.cfg.seq_len - 1 - len(cont)
        if room < 0:
            raise UserError(
                f"a continuation of {len(cont)} tokens exceeds the model's {self.cfg.seq_len}"
            )
        ctx = ctx[len(ctx) - room :] if room < len(ctx) else ctx
        return [self._bos(), *ctx, *cont], 1 + len(ctx)

    # ------------------------------------------------------------------ likelihood
    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[Any]:
        pairs = [self._pair(*req.args) for req in requests]
        groups: dict[str, list[int]] = defaultdict(list)
        for i, req in enumerate(requests):
            groups[req.args[0]].append(i)
        scores: list[ContinuationScore | None] = [None] * len(requests)
        for context, members in groups.items():
            found = continuation_scores(
                self.ref.model,
                [pairs[i][0] for i in members],
                [pairs[i][1] for i in members],
                self.block,
                mc=self.mc,
                generator=self._generator("loglikelihood", context),
                batch_size=self.batch_size,
                estimator=self._form(),
            )
            for i, score in zip(members, found, strict=True):
                scores[i] = score
        self.last_scores = [s for s in scores if s is not None]
        out = [(s.loglik, s.greedy) for s in self.last_scores]
        for req, value in zip(requests, out, strict=True):
            self.cache_hook.add_partial("loglikelihood", req.args, value)
        return out

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        out = []
        for req in requests:
            (text,) = req.args
            windows = get_rolling_token_windows(
                token_list=self._encode(text),
                prefix_token=self._bos(),
                max_seq_len=self.cfg.seq_len - 1,  # + the context token = the model's length
                context_len=1,
            )
            total = 0.0
            for ctx, cont in map(make_disjoint_window, windows):
                gen = self._generator("rolling", text)
                (score,) = continuation_scores(
                    self.ref.model, [[*ctx, *cont]], [len(ctx)], self.block, mc=self.mc,
                    generator=gen, batch_size=self.batch_size, estimator=self._form(),
                )  # fmt: skip
                total += score.loglik
            out.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
        return out

    def _form(self) -> str:
        """The Monte Carlo form continuation_scores draws (moot when exact)."""
        return "count" if self.estimator == "exact" else self.estimator

    def _generator(self, kind: str, key: str) -> torch.Generator:
        """A generator keyed by seed, request kind and text: the same request always draws
        the same noise, whatever else is in the batch."""
        digest = hashlib.sha256(f"{self.seed}\0{kind}\0{key}".encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))

    # ------------------------------------------------------------------ generation
    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        jobs = [self._job(*req.args) for req in requests]
        by_length: dict[int, list[int]] = defaultdict(list)
        for i, job in enumerate(jobs):
            by_length[job.length].append(i)
        out: list[str] = [""] * len(requests)
        for length, members in by_length.items():
            for lo in range(0, len(members), self.batch_size):
                part = members[lo : lo + self.batch_size]
                for i, text in zip(part, self._generate(length, [jobs[i] for i in part]),
                                   strict=True):  # fmt: skip
                    out[i] = text
        for req, text in zip(requests, out, strict=True):
            self.cache_hook.add_partial("generate_until", req.args, text)
        return out

    def _job(self, context: str, kwargs: dict[str, Any] | None) -> _GenJob:
        """The prompt (BOS + the context, cut on the left to leave room), the sequence
        length and the stop strings of one generate_until request."""
        kwargs = dict(kwargs or {})
        until = kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        max_gen = max(1, int(kwargs.get("max_gen_toks", DEFAULT_MAX_GEN)))
        ctx = self._encode(context)
        keep = max(0, self.cfg.seq_len - 1 - min(max_gen, self.cfg.seq_len // 2))
        ctx = ctx[len(ctx) - keep :] if len(ctx) > keep else ctx
        prompt = [self._bos(), *ctx]
        length = min(self.cfg.seq_len, len(prompt) + max_gen)
        # the record id keys the sampler's generator: the same request draws the same
        # sample whatever batch it is in and whatever order lm-eval sends it in
        rid = hashlib.sha256(f"{context}\0{length}".encode()).hexdigest()[:16]
        return _GenJob(Prompt(rid, prompt), length, until)

    def _generate(self, length: int, jobs: list[_GenJob]) -> list[str]:
        """Draft (and revise) one batch of prompts of a common length; texts cut at the
        first EOS and the first stop string."""
        stop = self.cfg.eos_id is not None
        records = generate_batch(self.ref, [j.prompt for j in jobs], length, self.draft_cfg,
                                 self.seed, self.plan, stop_at_eos=stop)  # fmt: skip
        texts = []
        for job, rec in zip(jobs, records, strict=True):
            end = int(rec.get("stop", -1))  # the EOS position, -1 when none was generated
            tokens = rec["tokens"][len(job.prompt.tokens) : end if end >= 0 else None]
            texts.append(_cut(self.ref.codec.decode(tokens, skip_special=True), job.until))
        return texts


@dataclass
class _GenJob:
    """One generate_until request, ready for the sampler."""

    prompt: Prompt
    length: int
    until: list[str]


def _cut(text: str, until: list[str]) -> str:
    """The text before the first occurrence of any stop string."""
    for s in until:
        if s:
            text = text.split(s, 1)[0]
    return text


def _small_block(pretrained: str) -> int:
    """The run's smallest trained block size (4 when the run does not say)."""
    try:
        blocks = RunDir(pretrained).trained_block_sizes()
    except (OSError, UserError):
        blocks = []
    return min(blocks) if blocks else 4

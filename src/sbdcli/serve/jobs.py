"""A validated completion request as the sampler sees it: a `Job`.

`make_job` turns a `CompletionRequest` into the prompts, length, draft configuration and
K-stage plan that `sbd generate` would build from the same settings as flags (cli/sample.py
is the reference; the two must agree: tests/test_serve_jobs.py, test_serve_batcher.py and
test_serve_app.py check it record for record).
Record ids: a seeded request's rows are named as `sbd generate --prompts` names the prompt
of a one-line prompts file (`p1`, or `p1-<j>` with n > 1; `sbd.id` replaces `p1`), so that
the command reproduces the request exactly; an unseeded request's rows are named after its
completion id, and its seed is drawn when its batch starts. `Job.key` is what requests must
share to run in one batch: everything but the prompts, the ids, n and the seed.

`make_edit_job` turns an `EditRequest` into an `EditJob`: the text encoded as `sbd edit`
encodes it (pipeline/encode.py) and the edit's plan (`pipeline.edit.make_plan`); edits
with the same plan share a batch (a text longer than the trained length, revised in
windows, runs with texts of its own length only).

Not here: the queue and the batch runner (batcher.py), HTTP (app.py).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from sbdcli import pipeline as pl
from sbdcli.artifacts.records import Record
from sbdcli.config import (
    LEGACY_ALIASES,
    ApproxCache,
    ExactCache,
    RemaskConfig,
    SamplerConfig,
    resolve_sampler,
    with_steps,
)
from sbdcli.diffusion.sampler import check_compile
from sbdcli.errors import UserError
from sbdcli.pipeline import encode as enc
from sbdcli.pipeline.edit import EditPlan, make_plan
from sbdcli.pipeline.prompts import Prompt, parse_prompt
from sbdcli.serve.schemas import ApiError, CompletionRequest, EditRequest

MAX_STOP = 4
"""OpenAI's limit on stop sequences."""

LEGACY_KEYS = tuple(k for k in LEGACY_ALIASES if k != "compile")
"""`sbd` options of 0.2 that name a reveal policy or a cache (beside `reveal` and `cache`)."""


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_n: int = 8
    max_length: int = 0
    """Longest sequence (prompt + max_tokens) in tokens; 0 = the model's trained length."""


@dataclass
class Job:
    """One request, ready to sample: its rows and the settings its batch shares."""

    prompts: list[Prompt]
    prompt_len: int
    length: int
    draft_cfg: SamplerConfig
    plan: list[pl.StagePlan]
    stop_at_eos: bool
    seed: int | None
    stop: list[str] = field(default_factory=list)

    @property
    def key(self) -> tuple[Any, ...]:
        """Requests with equal keys run in one batch (their records do not interact); the
        seed is not part of it: every row is drawn with its own request's seed."""
        plan = tuple(pl.StagePlan(_reseed(s.remask, 0), s.revise, 0) for s in self.plan)
        return (self.length, self.draft_cfg, plan, self.stop_at_eos)

    @property
    def rows(self) -> int:
        return len(self.prompts)

    def with_seed(self, seed: int) -> Job:
        """This job with its seed decided (an unseeded request's, drawn when it runs)."""
        plan = [pl.StagePlan(_reseed(s.remask, seed), s.revise, seed) for s in self.plan]
        return Job(self.prompts, self.prompt_len, self.length, self.draft_cfg, plan,
                   self.stop_at_eos, seed, self.stop)  # fmt: skip


def _reseed(cfg: RemaskConfig, seed: int) -> RemaskConfig:
    values = {**cfg.__dict__, "seed": seed}
    return RemaskConfig(**values)


FIELD_NAMES = {
    "gamma": "sbd.gammas",
    "top_p": "top_p",
    "temperature": "temperature",
    "block_size": "sbd.stages",
}
"""The request field of each config field whose name differs from `sbd.<field>`."""


def _name(config_field: str) -> str:
    return FIELD_NAMES.get(config_field, f"sbd.{config_field}")


def _config_error(exc: UserError) -> ApiError:
    """A config message (it names `fields`) as a 400 naming the request's fields."""
    message = str(exc)
    found = re.search(r"`(\w+)`", message)
    param = _name(found.group(1)) if found else "sbd"
    return ApiError(400, re.sub(r"`(\w+)`", lambda m: _name(m.group(1)), message), param=param)


def _configs(req: CompletionRequest, seed: int) -> tuple[SamplerConfig, list[pl.StagePlan]]:
    """The draft configuration and the revise plan, exactly as `sbd generate` builds them."""
    o = req.sbd
    stages = o.stages if isinstance(o.stages, str) else ",".join(str(s) for s in o.stages)
    gammas = o.gammas
    if isinstance(gammas, list):
        gammas = ",".join(str(g) for g in gammas)
    try:
        draft_block, revise_stages = pl.parse_stages(stages, str(gammas))
    except UserError as exc:
        param = "sbd.gammas" if "gammas" in str(exc) else "sbd.stages"
        raise ApiError(400, str(exc).replace("--", "sbd."), param=param) from None
    if o.revise_steps_per_block is not None and o.threshold is not None:
        raise ApiError(400, "sbd.threshold and sbd.revise_steps_per_block exclude each other",
                       param="sbd.threshold")  # fmt: skip
    old: dict[str, Any] = {k: getattr(o, k) for k in LEGACY_KEYS}
    if old["threshold"] is not None:
        old["threshold"] = float(old["threshold"])
    values = {"dtype": o.dtype, "top_p": float(req.top_p), "temperature": float(req.temperature)}
    try:
        cfg, _ = resolve_sampler(draft_block, o.reveal, o.cache, old, **values)
        # approx is a revise setting: a draft block's call runs <= 2B positions
        exact = ExactCache() if isinstance(cfg.cache, ApproxCache) else cfg.cache
        draft_cfg = dataclasses.replace(cfg, cache=exact)
        revise_policy = with_steps(cfg.reveal, o.revise_steps_per_block)
        plan = [
            pl.StagePlan(
                RemaskConfig(gamma=g, seed=seed, strategy=o.strategy, passes=o.passes),
                dataclasses.replace(cfg, block_size=blk, reveal=revise_policy),
                seed,
            )
            for g, blk in revise_stages
        ]
    except UserError as exc:
        raise _config_error(exc) from None
    return draft_cfg, plan


def _prompt(req: CompletionRequest, ref: pl.ModelRef) -> list[int]:
    """The prompt's ids, BOS first, as `sbd generate --prompts` reads them."""
    obj: dict[str, Any] = (
        {"prompt": req.prompt} if isinstance(req.prompt, str) else {"prompt_tokens": req.prompt}
    )
    if isinstance(req.prompt, str) and req.prompt == "":
        obj = {"prompt_tokens": []}
    try:
        return parse_prompt(obj, ref, "prompt")
    except UserError as exc:
        raise ApiError(400, str(exc), param="prompt") from None


def _stops(req: CompletionRequest) -> list[str]:
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stops) > MAX_STOP or any(s == "" for s in stops):
        raise ApiError(400, f"stop: at most {MAX_STOP} non-empty strings", param="stop")
    return stops


def make_job(req: CompletionRequest, ref: pl.ModelRef, limits: Limits, name: str) -> Job:
    """Validate a request against the model and the limits; `name`: its completion id."""
    if req.n > limits.max_n:
        raise ApiError(400, f"n must be <= {limits.max_n} (the server's limit)", param="n")
    trained = ref.model.config.seq_len
    max_length = limits.max_length or trained
    tokens = _prompt(req, ref)
    room = max_length - len(tokens)
    if room < 1:
        raise ApiError(400, f"the prompt has {len(tokens)} tokens; the model's length limit is "
                       f"{max_length}", param="prompt")  # fmt: skip
    max_tokens = room if req.max_tokens is None else req.max_tokens
    if max_tokens > room:
        raise ApiError(400, f"max_tokens must be <= {room} (the model's length limit "
                       f"{max_length} minus the prompt's {len(tokens)} tokens)",
                       param="max_tokens")  # fmt: skip
    if req.sbd.stop_at_eos and ref.model.config.eos_id is None:
        raise ApiError(400, "this model's vocabulary has no EOS token", param="sbd.stop_at_eos")
    draft_cfg, plan = _configs(req, req.seed or 0)
    try:
        check_compile(draft_cfg, next(ref.model.parameters()).device)
    except UserError as exc:
        raise _config_error(exc) from None
    base = req.sbd.id or ("p1" if req.seed is not None else name)
    ids = [base] if req.n == 1 else [f"{base}-{j}" for j in range(req.n)]
    prompts = [Prompt(i, list(tokens)) for i in ids]
    length = len(tokens) + max_tokens
    return Job(prompts, len(tokens), length, draft_cfg, plan, req.sbd.stop_at_eos, req.seed,
               _stops(req))  # fmt: skip


@dataclass
class EditJob:
    """One edit request: its encoded record and the plan its batch shares."""

    records: list[Record]
    plan: EditPlan
    windowed: int
    """The text's length when it is revised in windows (longer than the trained length),
    else 0: windowed texts share a batch only with texts of their length."""

    @property
    def key(self) -> tuple[Any, ...]:
        """Edits with equal keys run in one batch; each text keeps its own seed."""
        remask = None if self.plan.remask is None else _reseed(self.plan.remask, 0)
        return ("edit", dataclasses.replace(self.plan, remask=remask, seed=0), self.windowed)

    @property
    def seed(self) -> int:
        return self.plan.seed

    @property
    def prompt_len(self) -> int:
        """Where the edited text starts (BOS and the fixed prompt before it)."""
        return self.records[0]["prompt_len"]

    @property
    def rows(self) -> int:
        return len(self.records)


_EDIT_FIELDS = ("gamma", "strategy", "block", "passes", "temperature", "top_p")


def _edit_param(message: str) -> str:
    """The request field an edit settings message is about (`--gamma`, `strategy`, ...)."""
    for name in _EDIT_FIELDS:
        if name in message:
            return name
    return "gamma"


def make_edit_job(req: EditRequest, ref: pl.ModelRef) -> EditJob:
    """Encode the request's text for the model and check its plan (400s naming the field)."""
    remask = {"gamma": req.gamma, "strategy": req.strategy, "passes": req.passes}
    sampling = {"top_p": float(req.top_p), "temperature": float(req.temperature)}
    try:
        sampler = SamplerConfig(block_size=pl.parse_block(str(req.block)), **sampling)
        plan = make_plan(remask, req.infill, sampler, req.seed)
    except UserError as exc:
        message = str(exc).replace("--", "")
        raise ApiError(400, message, param=_edit_param(message)) from None
    if plan.remask is not None and plan.remask.strategy not in enc.SCORE_STRATEGIES:
        raise ApiError(400, f"strategy must be one of {', '.join(enc.SCORE_STRATEGIES)}",
                       param="strategy")  # fmt: skip
    item = enc.TextItem(req.id, req.text, req.prompt)
    try:
        target = enc.target_from_model(ref)
        records = enc.encode_records([item], target, req.mask_token, not req.allow_normalize)
        if plan.remask is None:
            enc.check_revisable(records)
    except UserError as exc:
        param = "prompt" if "prompt" in str(exc) else "text"
        raise ApiError(400, str(exc), param=param) from None
    length = len(records[0]["tokens"])
    return EditJob(records, plan, length if length > target.seq_len else 0)

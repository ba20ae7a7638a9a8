"""Record-level stages of the sampler pipeline: draft, remask, revise and the K-stage schedule.

Each stage takes and returns sample records (ARCHITECTURE §4) batch by batch, so the CLI
streams: `draft_batch` makes a batch of new records; `remask_batch` and `revise_batch`
turn a batch of records into the next one, appending a stage entry (name, parameters,
cost {nfe, seconds}) and accumulating `nfe`. `generate_batch` chains them in one process
and produces exactly the records the piped commands produce with the same seeds: every
random draw comes from a generator keyed by (seed, stage name, stage index, record id)
(`sampler.make_generator`), never from batch position.

Record fields written beyond the required ones: `confidence_nucleus` and `step` (per
token, see sampler.py), `scores` (remask), `stop` (draft with stop-at-EOS). A stage's
`seconds` is its batch's wall-clock time divided by the batch's number of records.

Models: `modelref.py` (the draft's default is -m, $SBD_MODEL, ./runs/latest; later stages
default to the model named in the records).

Not here: the sampling math (sampler.py, remask.py) and any printing (cli/sample.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from sbdcli.artifacts import read_jsonl, validate_record
from sbdcli.config import RemaskConfig, SamplerConfig
from sbdcli.diffusion import remask as rm
from sbdcli.diffusion import sampler as sp
from sbdcli.errors import UserError
from sbdcli.pipeline.modelref import (  # re-exported: the pipeline's public API
    ModelCache,
    ModelRef,
    default_model_path,
    load_model_ref,
    resolve_device,
)

__all__ = [
    "ModelCache",
    "ModelRef",
    "Prompt",
    "RemaskConfig",
    "StagePlan",
    "batched",
    "check_records",
    "default_model_path",
    "draft_batch",
    "draft_prompts",
    "generate_batch",
    "load_model_ref",
    "parse_stages",
    "read_prompts",
    "remask_batch",
    "resolve_device",
    "revise_batch",
]

Progress = Callable[[int], None] | None


# --------------------------------------------------------------------------- inputs
@dataclass
class Prompt:
    """A fixed prefix: record id and tokens (BOS first)."""

    id: str
    tokens: list[int] = field(default_factory=list)


def read_prompts(path: str, ref: ModelRef) -> list[Prompt]:
    """Prompts JSONL: `prompt` (text, needs a tokenizer) or `prompt_tokens`; optional `id`."""
    cfg = ref.model.config
    bos = cfg.bos_id if cfg.bos_id is not None else cfg.mask_id
    prompts = []
    for line, obj in enumerate(read_jsonl(path), start=1):
        if "prompt_tokens" in obj:
            toks = obj["prompt_tokens"]
            if not isinstance(toks, list) or not all(isinstance(t, int) for t in toks):
                raise UserError(f"{path}:{line}: 'prompt_tokens' must be a list of integers")
        elif isinstance(obj.get("prompt"), str):
            if ref.codec is None:
                raise UserError(f"{path}:{line}: text prompts need the model's tokenizer")
            toks = ref.codec.encode(obj["prompt"])
        else:
            raise UserError(f"{path}:{line}: expected a 'prompt' or 'prompt_tokens' field")
        toks = toks if toks[:1] == [bos] else [bos, *toks]
        bad = [t for t in toks if not 0 <= t < cfg.vocab_size or t == cfg.mask_id]
        if bad:
            raise UserError(f"{path}:{line}: token id {bad[0]} is not a valid prompt token")
        rid = obj.get("id")
        prompts.append(Prompt(str(rid) if rid is not None else f"p{line}", toks))
    if not prompts:
        raise UserError(f"{path}: no prompts")
    return prompts


def batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive lists of `size` items (the last may be shorter)."""
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# --------------------------------------------------------------------------- draft
def draft_prompts(
    ref: ModelRef, n: int | None, seed: int, prompts: list[Prompt] | None
) -> list[Prompt]:
    """The prompts a draft samples: n bare-BOS prompts, or n samples per given prompt."""
    cfg = ref.model.config
    if prompts is None:
        bos = cfg.bos_id if cfg.bos_id is not None else cfg.mask_id
        return [Prompt(f"s{seed}-{i}", [bos]) for i in range(16 if n is None else n)]
    per = 1 if n is None else n
    if per == 1:
        return prompts
    return [Prompt(f"{p.id}-{j}", p.tokens) for p in prompts for j in range(per)]


def _stage(name: str, nfe: int, seconds: float, **params: Any) -> dict[str, Any]:
    return {"name": name, **params, "nfe": nfe, "seconds": round(seconds, 6)}


def draft_batch(
    ref: ModelRef,
    prompts: list[Prompt],
    length: int,
    cfg: SamplerConfig,
    seed: int,
    *,
    stop_at_eos: bool = False,
    progress: Progress = None,
) -> list[dict[str, Any]]:
    """Draft one batch of records (stage index 0)."""
    start = time.perf_counter()
    model = ref.model
    eos = model.config.eos_id if stop_at_eos else None
    if stop_at_eos and eos is None:
        raise UserError("--stop-at-eos: this model's vocabulary has no EOS token")
    gens = [sp.make_generator(seed, "draft", 0, p.id, ref.device) for p in prompts]
    out = sp.draft(
        model, [p.tokens for p in prompts], length, cfg, gens, eos_id=eos, progress=progress
    )
    seconds = (time.perf_counter() - start) / len(prompts)
    block = length if cfg.block_size <= 0 else min(cfg.block_size, length)
    records = []
    for i, p in enumerate(prompts):
        end = int(out.stop[i]) + 1 if int(out.stop[i]) >= 0 else length
        tokens = out.tokens[i, :end].tolist()
        nfe = int(out.nfe[i])
        params = {"block_size": block, "length": length, **cfg.params(), "seed": seed}
        stage = _stage("draft", nfe, seconds, **params, model=ref.id, batch_size=len(prompts))
        rec = {
            "id": p.id,
            "tokens": tokens,
            "confidence": out.confidence[i, :end].tolist(),
            "confidence_nucleus": out.confidence_nucleus[i, :end].tolist(),
            "step": out.step[i, :end].tolist(),
            "masked": [],
            "prompt_len": len(p.tokens),
            "nfe": nfe,
            "stages": [stage],
            "text": ref.decode(tokens),
            "model": ref.id,
        }
        if stop_at_eos:
            rec["stop"] = int(out.stop[i])
        records.append(rec)
    return records


# --------------------------------------------------------------------------- validation
def check_records(
    records: list[dict[str, Any]], ref: ModelRef | None, first_index: int = 0
) -> list[dict[str, Any]]:
    """Validate records (ARCHITECTURE §4) against the model's vocabulary; fill optional fields."""
    vocab = ref.model.config.vocab_size if ref is not None else None
    for j, rec in enumerate(records):
        validate_record(rec, first_index + j, vocab)
        n = len(rec["tokens"])
        if len(rec.get("confidence_nucleus", [])) != n:
            rec["confidence_nucleus"] = list(rec["confidence"])
        if len(rec.get("step", [])) != n:
            rec["step"] = [0] * n
    return records


def _groups_by_length(records: list[dict[str, Any]]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for j, rec in enumerate(records):
        groups.setdefault(len(rec["tokens"]), []).append(j)
    return groups


# --------------------------------------------------------------------------- remask
def _model_scores(
    records: list[dict[str, Any]], ref: ModelRef, cfg: RemaskConfig
) -> tuple[list[torch.Tensor], list[int]]:
    """Post-hoc or masked scores for every record, batched per sequence length."""
    scores: list[Any] = [None] * len(records)
    calls = [0] * len(records)
    for length, idx in _groups_by_length(records).items():
        tokens = torch.tensor([records[j]["tokens"] for j in idx], device=ref.device)
        if cfg.strategy == "posthoc":
            s, c = rm.posthoc_scores(ref.model, tokens), torch.ones(len(idx), dtype=torch.long)
        else:
            elig = torch.stack([rm.eligible_mask(length, records[j]["prompt_len"]) for j in idx])
            s, c = rm.masked_scores(ref.model, tokens, elig, cfg.passes)
        for row, j in enumerate(idx):
            scores[j], calls[j] = s[row], int(c[row])
    return scores, calls


def remask_batch(
    records: list[dict[str, Any]], cfg: RemaskConfig, ref: ModelRef | None = None
) -> list[dict[str, Any]]:
    """Set `masked` (and `scores`) of a batch of validated records; tokens stay untouched."""
    start = time.perf_counter()
    if cfg.needs_model and ref is None:
        raise UserError(f"the {cfg.strategy} strategy needs a model (-m RUN)")
    gens = [sp.make_generator(cfg.seed, "remask", len(r["stages"]), r["id"]) for r in records]
    ties = [
        torch.rand(len(r["tokens"]), generator=g, dtype=torch.float64)
        for r, g in zip(records, gens, strict=True)
    ]
    elig = [rm.eligible_mask(len(r["tokens"]), r["prompt_len"]) for r in records]
    calls = [0] * len(records)
    if cfg.strategy == "snapshot":
        scores = [torch.tensor(r["confidence"], dtype=torch.float64) for r in records]
    elif cfg.strategy == "random":
        scores = [
            torch.rand(len(r["tokens"]), generator=g, dtype=torch.float64)
            for r, g in zip(records, gens, strict=True)
        ]
    else:
        assert ref is not None
        scores, calls = _model_scores(records, ref, cfg)
    if cfg.threshold is not None:
        chosen = [
            rm.select_threshold(s, e, cfg.threshold) for s, e in zip(scores, elig, strict=True)
        ]
    elif cfg.scope == "batch":
        chosen = rm.select_batch(scores, elig, float(cfg.gamma or 0.0), ties)
    else:
        chosen = [
            rm.select_lowest(s, e, float(cfg.gamma or 0.0), t)
            for s, e, t in zip(scores, elig, ties, strict=True)
        ]
    seconds = (time.perf_counter() - start) / len(records)
    extra = {"model": ref.id} if cfg.needs_model and ref is not None else {}
    out = []
    for rec, s, e, pos, c in zip(records, scores, elig, chosen, calls, strict=True):
        new = dict(rec)
        new["scores"] = s.masked_fill(~e, 1.0).tolist()
        new["masked"] = pos
        new["nfe"] = rec["nfe"] + c
        stage = _stage("remask", c, seconds, **cfg.params(), n_masked=len(pos), **extra)
        new["stages"] = [*rec["stages"], stage]
        out.append(new)
    return out


# --------------------------------------------------------------------------- revise
def revise_batch(
    records: list[dict[str, Any]],
    ref: ModelRef,
    cfg: SamplerConfig,
    seed: int,
    *,
    progress: Progress = None,
) -> list[dict[str, Any]]:
    """Regenerate exactly the `masked` positions of a batch of validated records."""
    start = time.perf_counter()
    out: list[Any] = [None] * len(records)
    for length, idx in _groups_by_length(records).items():
        group = [records[j] for j in idx]
        tokens = torch.tensor([r["tokens"] for r in group], device=ref.device)
        masked = torch.zeros(len(group), length, dtype=torch.bool, device=ref.device)
        for row, r in enumerate(group):
            masked[row, r["masked"]] = True
        gens = [
            sp.make_generator(seed, "revise", len(r["stages"]), r["id"], ref.device) for r in group
        ]
        offset = torch.tensor([r["nfe"] for r in group])
        res = sp.revise(ref.model, tokens, masked, cfg, gens, step_offset=offset, progress=progress)
        for row, j in enumerate(idx):
            out[j] = _revised(records[j], res, row)
    seconds = (time.perf_counter() - start) / len(records)
    for rec in out:
        length = len(rec["tokens"])
        block = length if cfg.block_size <= 0 else min(cfg.block_size, length)
        params = {"block": "full" if block >= length else block, "block_size": block}
        stage = _stage(
            "revise",
            rec.pop("_nfe"),
            seconds,
            **params,
            **cfg.params(),
            seed=seed,
            n_masked=rec.pop("_n_masked"),
            model=ref.id,
            batch_size=len(records),
        )
        rec["stages"] = [*rec["stages"], stage]
        rec["text"] = ref.decode(rec["tokens"])
    return out


def _revised(rec: dict[str, Any], res: sp.FillResult, row: int) -> dict[str, Any]:
    """A copy of `rec` with its masked positions taken from row `row` of `res`."""
    new = dict(rec)
    pos = rec["masked"]
    tokens, conf = list(rec["tokens"]), list(rec["confidence"])
    conf_n, step = list(rec["confidence_nucleus"]), list(rec["step"])
    t, c = res.tokens[row].tolist(), res.confidence[row].tolist()
    cn, st = res.confidence_nucleus[row].tolist(), res.step[row].tolist()
    for p in pos:
        tokens[p], conf[p], conf_n[p], step[p] = t[p], c[p], cn[p], st[p]
    nfe = int(res.nfe[row])
    new.update(tokens=tokens, confidence=conf, confidence_nucleus=conf_n, step=step)
    new.update(masked=[], nfe=rec["nfe"] + nfe, _nfe=nfe, _n_masked=len(pos))
    return new


# --------------------------------------------------------------------------- K stages
def parse_stages(stages: str, gammas: str) -> tuple[int, list[tuple[float, int]]]:
    """'4,full' + '0.25' -> (draft block 4, [(gamma 0.25, revise block 0 = full)])."""
    parts = [s.strip() for s in stages.split(",") if s.strip()]
    values = [s.strip() for s in gammas.split(",") if s.strip()]
    if len(parts) < 1:
        raise UserError("--stages needs at least the draft block size")
    blocks = [parse_block(s) for s in parts]
    if len(values) == 1 and len(blocks) > 2:
        values = values * (len(blocks) - 1)
    if len(values) != len(blocks) - 1:
        raise UserError(f"--gammas needs {len(blocks) - 1} values (one per revise stage)")
    try:
        gs = [float(v) for v in values]
    except ValueError:
        raise UserError(f"--gammas must be numbers, got {gammas!r}") from None
    if blocks[0] == 0:
        raise UserError("the draft block (first of --stages) must be a number")
    return blocks[0], list(zip(gs, blocks[1:], strict=True))


def parse_block(text: str) -> int:
    """'full' -> 0 (one block over the whole sequence), else a positive integer."""
    if text == "full":
        return 0
    try:
        value = int(text)
    except ValueError:
        raise UserError(f"block size must be an integer or 'full', got {text!r}") from None
    if value < 1:
        raise UserError(f"block size must be >= 1, got {value}")
    return value


@dataclass(frozen=True)
class StagePlan:
    """One revise stage of a K-stage schedule: how to remask, then how to revise."""

    remask: RemaskConfig
    revise: SamplerConfig
    seed: int = 0


def generate_batch(
    ref: ModelRef,
    prompts: list[Prompt],
    length: int,
    draft_cfg: SamplerConfig,
    seed: int,
    plan: list[StagePlan],
    *,
    stop_at_eos: bool = False,
    progress: Progress = None,
) -> list[dict[str, Any]]:
    """Draft, then remask + revise per stage of `plan`, in one process with one model."""
    records = draft_batch(
        ref, prompts, length, draft_cfg, seed, stop_at_eos=stop_at_eos, progress=progress
    )
    for stage in plan:
        records = remask_batch(records, stage.remask, ref)
        records = revise_batch(records, ref, stage.revise, stage.seed, progress=progress)
    return records

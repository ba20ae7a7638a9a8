"""Record-level stages of the sampler pipeline: draft, remask and revise a batch of records.

Each stage takes and returns sample records (docs/records.md) batch by batch, so the CLI
streams: `draft_batch` makes a batch of new records; `remask_batch` and `revise_batch` turn
a batch of records into the next one, appending a stage entry (name, parameters, cost {nfe,
seconds}) and accumulating `nfe`. `check_records` validates records read from a stream
before a stage sees them; `batched` cuts a stream into batches. Every random draw comes from
a generator keyed by (seed, stage name, stage index, record id) (`sampler.make_generator`),
never from batch position, so a record's result does not depend on its batch. A stage takes
one seed for the batch or one per record (`Seeds`: records drawn with different seeds share
a batch, as the server batches requests). A stage's `seconds` is its batch's wall-clock time
divided by the batch's number of records. With a `RedrawConfig` the draft draws degenerate
records again (BD3-LM's low-entropy rule, diffusion/degenerate.py). A live consumer (the
server) watches the draft and revise stages call by call: `on_call` gets every network
call's `CallEvent`, `on_engine` every stepping engine with the records its rows are (it may
cancel rows; a cancelled row's record keeps [MASK] where nothing was committed).

Not here: the sampling math (diffusion/sampler.py, diffusion/remask.py), prompts
(prompts.py), the K-stage plan (plans.py) and any printing (cli/).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import torch

import sbdcli.pipeline.encode as enc
from sbdcli.artifacts.records import (
    ModelIds,
    Record,
    StageEntry,
    group_by_length,
    validate_record,
)
from sbdcli.config import RedrawConfig, RemaskConfig, SamplerConfig
from sbdcli.diffusion import remask as rm
from sbdcli.diffusion import sampler as sp
from sbdcli.diffusion import windows as win
from sbdcli.diffusion.degenerate import is_degenerate
from sbdcli.diffusion.precision import stage_entry as precision_entry
from sbdcli.errors import UserError
from sbdcli.pipeline.modelref import ModelRef
from sbdcli.pipeline.prompts import Prompt

OnCall = Callable[[sp.CallEvent], None] | None
"""Called with the `CallEvent` of every network call (a progress display, a live view), or
None."""
OnEngine = Callable[[sp.FillEngine, list[int]], None] | None
"""Called with each stepping engine before it runs and the input indices of its rows (row j
is record or prompt `rows[j]` of the stage's input): a live view maps events to records and
may `cancel` rows. None: nobody watches."""

Seeds = int | Sequence[int]
"""One seed for every record of a batch, or one per record (in the batch's order)."""

T = TypeVar("T")


def per_record(seed: Seeds, n: int) -> list[int]:
    """The seed of each of `n` records: `seed` for all, or the sequence's n seeds."""
    if isinstance(seed, int):
        return [seed] * n
    seeds = [int(s) for s in seed]
    if len(seeds) != n:
        raise ValueError(f"{len(seeds)} seeds for {n} records")
    return seeds


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of `size` items (the last may be shorter)."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _stage(name: str, nfe: int, seconds: float, **params: Any) -> StageEntry:
    """A stage entry: name, parameters in order, then the cost (nfe, seconds)."""
    return cast(StageEntry, {"name": name, **params, "nfe": nfe, "seconds": round(seconds, 6)})


def _block_size(cfg: SamplerConfig, length: int) -> int:
    """The block size a stage really uses on sequences of `length` (0 = one block)."""
    return length if cfg.block_size <= 0 else min(cfg.block_size, length)


# --------------------------------------------------------------------------- draft
def draft_batch(
    ref: ModelRef,
    prompts: list[Prompt],
    length: int,
    cfg: SamplerConfig,
    seed: Seeds,
    *,
    stop_at_eos: bool = False,
    on_call: OnCall = None,
    n_records: int | None = None,
    redraw: RedrawConfig | None = None,
    on_engine: OnEngine = None,
) -> list[Record]:
    """Draft one batch of records (stage index 0).

    `n_records`: how many records the whole draft writes (default: this batch's), recorded
    in the stage entry so that a later stage or `sbd eval` can tell a cut input.
    `redraw`: draw degenerate records again (`_draw_until_diverse`; default off).
    """
    start = time.perf_counter()
    model = ref.model
    eos = model.config.eos_id if stop_at_eos else None
    if stop_at_eos and eos is None:
        raise UserError("`stop_at_eos`: this model's vocabulary has no EOS token")
    seeds = per_record(seed, len(prompts))
    gens = [
        sp.make_generator(z, "draft", 0, p.id, ref.device)
        for z, p in zip(seeds, prompts, strict=True)
    ]

    def sample(idx: list[int]) -> list[Record]:
        """Draft prompts `idx` with their own generators (each stream continues)."""
        toks = [prompts[i].tokens for i in idx]
        sub = [gens[i] for i in idx]
        engine = sp.draft_engine(model, toks, length, cfg, sub, eos_id=eos)
        if on_engine is not None:
            on_engine(engine, idx)
        out = engine.run(on_call)
        recs = [_draft_record(ref, prompts[i], out, row, length) for row, i in enumerate(idx)]
        if stop_at_eos:
            for row, rec in enumerate(recs):
                rec["stop"] = int(out.stop[row])
        return recs

    redraw = redraw or RedrawConfig()
    records, tallies = _draw_until_diverse(sample, len(prompts), redraw, _block_size(cfg, length))
    seconds = (time.perf_counter() - start) / len(prompts)
    params = {"block_size": _block_size(cfg, length), "length": length, **cfg.params()}
    params.update(precision_entry(cfg.precision, ref.device))
    params.update(seed=seeds[0], model=ref.id, **_vocab_ids(ref))
    params.update(n_records=len(prompts) if n_records is None else n_records)
    params.update(batch_size=len(prompts))
    for rec, tally, z in zip(records, tallies, seeds, strict=True):
        extra = tally.params(redraw) if redraw.enabled else {}
        rec["nfe"] += tally.nfe
        rec["stages"] = [_stage("draft", rec["nfe"], seconds, **{**params, "seed": z}, **extra)]
    return records


@dataclass
class _RedrawTally:
    """One record's redraws: how many, the calls of its discarded drafts, still degenerate."""

    redraws: int = 0
    nfe: int = 0
    low_entropy: bool = False

    def params(self, redraw: RedrawConfig) -> dict[str, Any]:
        """The draft entry's redraw keys (docs/records.md)."""
        out: dict[str, Any] = {
            "redraw_low_entropy": redraw.redraw_low_entropy,
            "redraw_window": redraw.redraw_window,
            "redraw_attempts": redraw.redraw_attempts,
            "redraws": self.redraws,
            "redraw_nfe": self.nfe,
        }
        if self.low_entropy:
            out["low_entropy"] = True
        return out


def _draw_until_diverse(
    sample: Callable[[list[int]], list[Record]], n: int, redraw: RedrawConfig, block: int
) -> tuple[list[Record], list[_RedrawTally]]:
    """Draft all n records, then draw the degenerate ones again (BD3-LM's rule, per record).

    A record is degenerate when `degenerate.is_degenerate` holds for its tokens; it is drawn
    again from its own generator, which continues where its previous draft left it, so the
    result depends only on (seed, record id), never on the batch. After
    `redraw_attempts` draws the last one is kept (its tally says `low_entropy`).
    """
    records = sample(list(range(n)))
    tallies = [_RedrawTally() for _ in range(n)]
    if not redraw.enabled:
        return records, tallies
    h, window = float(redraw.redraw_low_entropy or 0.0), redraw.redraw_window

    def bad(i: int) -> bool:
        return is_degenerate(records[i]["tokens"], h, window, block)

    todo = [i for i in range(n) if bad(i)]
    for _ in range(redraw.redraw_attempts - 1):
        if not todo:
            break
        for i, rec in zip(todo, sample(todo), strict=True):
            tallies[i].redraws += 1
            tallies[i].nfe += records[i]["nfe"]
            records[i] = rec
        todo = [i for i in todo if bad(i)]
    for i in todo:
        tallies[i].low_entropy = True
    return records, tallies


def _vocab_ids(ref: ModelRef) -> dict[str, int | None]:
    """The drafting model's vocabulary, as the draft entry records it."""
    cfg = ref.model.config
    return {"vocab_size": cfg.vocab_size, "mask_id": cfg.mask_id, "bos_id": cfg.bos_id}


def model_ids(ref: ModelRef) -> ModelIds:
    """What records processed with `ref` must agree with (see `validate_record`)."""
    cfg = ref.model.config
    return ModelIds(ref.id, cfg.vocab_size, cfg.mask_id, cfg.bos_id)


def _draft_record(ref: ModelRef, p: Prompt, out: sp.FillResult, i: int, length: int) -> Record:
    """Row `i` of a draft as a record (cut after its EOS when it stopped), stages still empty."""
    end = int(out.stop[i]) + 1 if int(out.stop[i]) >= 0 else length
    tokens = out.tokens[i, :end].tolist()
    return {
        "id": p.id,
        "tokens": tokens,
        "confidence": out.confidence[i, :end].tolist(),
        "confidence_nucleus": out.confidence_nucleus[i, :end].tolist(),
        "step": out.step[i, :end].tolist(),
        "masked": [],
        "prompt_len": len(p.tokens),
        "nfe": int(out.nfe[i]),
        "stages": [],
        "text": ref.decode(tokens),
        "model": ref.id,
    }


# --------------------------------------------------------------------------- validation
def check_records(
    records: list[Record], ref: ModelRef | None, first_index: int = 0
) -> list[Record]:
    """Validate records (docs/records.md) against the model's vocabulary; fill optional fields.

    With a model, records whose draft entry names another vocabulary are refused, and so
    is a [MASK] at a position that is kept. `confidence_nucleus` (a copy of `confidence`)
    and `step` (zeros) are filled in, in place, where they are missing or do not have one
    value per token.
    """
    ids = model_ids(ref) if ref is not None else None
    for j, rec in enumerate(records):
        validate_record(rec, first_index + j, model=ids)
        if ref is not None:
            _check_length(rec, ref, first_index + j)
            _check_no_kept_mask(rec, ref, first_index + j)
            enc.check_tokenizer(rec, ref, first_index + j)
        n = len(rec["tokens"])
        if len(rec.get("confidence_nucleus", [])) != n:
            rec["confidence_nucleus"] = list(rec["confidence"])
        if len(rec.get("step", [])) != n:
            rec["step"] = [0] * n
    return records


def _check_length(rec: Record, ref: ModelRef, index: int) -> None:
    """A record may be at most `MAX_LENGTH_FACTOR` x the model's trained length (the reach of
    the sliding and centred windows, the same rule as `sbd encode`)."""
    seq_len = ref.model.config.seq_len
    limit = enc.MAX_LENGTH_FACTOR * seq_len
    if len(rec["tokens"]) > limit:
        raise UserError(
            f"record {index} (id {rec['id']!r}): {len(rec['tokens'])} tokens, more than "
            f"{enc.MAX_LENGTH_FACTOR} x the model's trained length {seq_len} ({limit})"
        )


def _check_no_kept_mask(rec: Record, ref: ModelRef, index: int) -> None:
    """A [MASK] id may stand only at positions to regenerate (and first, for a model
    without BOS, where it stands in for BOS)."""
    cfg = ref.model.config
    first = 1 if cfg.bos_id is None else 0
    masked = set(rec["masked"])
    for pos in range(first, len(rec["tokens"])):
        if rec["tokens"][pos] == cfg.mask_id and pos not in masked:
            raise UserError(
                f"record {index} (id {rec['id']!r}): [MASK] at position {pos}, which is not "
                "in 'masked' (a record must hold real tokens wherever it is not regenerated)"
            )


# --------------------------------------------------------------------------- remask
def _model_scores(
    records: list[Record], ref: ModelRef, cfg: RemaskConfig
) -> tuple[list[torch.Tensor], list[int]]:
    """Post-hoc or masked scores for every record, batched per sequence length (in windows
    beyond the trained length, diffusion/windows.py)."""
    scores: list[Any] = [None] * len(records)
    calls = [0] * len(records)
    for length, idx in group_by_length(records).items():
        tokens = torch.tensor([records[j]["tokens"] for j in idx], device=ref.device)
        elig = torch.stack([rm.eligible_mask(length, records[j]["prompt_len"]) for j in idx])
        s, c = win.scores(ref.model, tokens, elig, cfg.strategy, cfg.passes, cfg.precision)
        for row, j in enumerate(idx):
            scores[j], calls[j] = s[row], int(c[row])
    return scores, calls


def _remask_scores(
    records: list[Record], cfg: RemaskConfig, ref: ModelRef | None, gens: list[Any]
) -> tuple[list[torch.Tensor], list[int]]:
    """Each record's score per position under `cfg.strategy`, and the calls it cost."""
    free = [0] * len(records)  # snapshot and random scores cost no network call
    if cfg.strategy == "snapshot":
        return [torch.tensor(r["confidence"], dtype=torch.float64) for r in records], free
    if cfg.strategy == "random":
        scores = [
            torch.rand(len(r["tokens"]), generator=g, dtype=torch.float64)
            for r, g in zip(records, gens, strict=True)
        ]
        return scores, free
    assert ref is not None
    return _model_scores(records, ref, cfg)


def _select(
    scores: list[torch.Tensor],
    elig: list[torch.Tensor],
    ties: list[torch.Tensor],
    cfg: RemaskConfig,
) -> list[list[int]]:
    """The positions to remask: below the threshold, or the lowest gamma per record or batch."""
    if cfg.threshold is not None:
        return [rm.select_threshold(s, e, cfg.threshold) for s, e in zip(scores, elig, strict=True)]
    if cfg.scope == "batch":
        return rm.select_batch(scores, elig, float(cfg.gamma or 0.0), ties)
    return [
        rm.select_lowest(s, e, float(cfg.gamma or 0.0), t)
        for s, e, t in zip(scores, elig, ties, strict=True)
    ]


def remask_batch(
    records: list[Record],
    cfg: RemaskConfig,
    ref: ModelRef | None = None,
    seeds: Sequence[int] | None = None,
) -> list[Record]:
    """Set `masked` (and `scores`) of a batch of validated records; tokens stay untouched.

    `seeds`: one per record in place of `cfg.seed` (which seeds them all by default).
    """
    start = time.perf_counter()
    if cfg.needs_model and ref is None:
        raise UserError(f"the {cfg.strategy} strategy needs a model (-m RUN)")
    enc.refuse_snapshot(records, cfg.strategy)
    zs = per_record(cfg.seed if seeds is None else seeds, len(records))
    gens = [
        sp.make_generator(z, "remask", len(r["stages"]), r["id"])
        for z, r in zip(zs, records, strict=True)
    ]
    ties = [  # drawn before any random scores, from the same generators
        torch.rand(len(r["tokens"]), generator=g, dtype=torch.float64)
        for r, g in zip(records, gens, strict=True)
    ]
    elig = [rm.eligible_mask(len(r["tokens"]), r["prompt_len"]) for r in records]
    held = enc.hold_markers(records, elig)  # unfilled markers: always masked, never scored
    scores, calls = _remask_scores(records, cfg, ref, gens)
    chosen = [sorted({*p, *h}) for p, h in zip(_select(scores, elig, ties, cfg), held, strict=True)]
    seconds = (time.perf_counter() - start) / len(records)
    extra = {}
    if cfg.needs_model and ref is not None:
        extra = {**precision_entry(cfg.precision, ref.device), "model": ref.id}
    out = []
    for rec, s, e, pos, c, z in zip(records, scores, elig, chosen, calls, zs, strict=True):
        new = rec.copy()
        new["scores"] = s.masked_fill(~e, 1.0).tolist()
        new["masked"] = pos
        new["nfe"] = rec["nfe"] + c
        params = {**cfg.params(), "seed": z}
        stage = _stage("remask", c, seconds, **params, n_masked=len(pos), **extra)
        new["stages"] = [*rec["stages"], stage]
        out.append(new)
    return out


# --------------------------------------------------------------------------- revise
@dataclass
class _Revision:
    """A revised record and what its revise stage entry reports: calls and positions redone."""

    record: Record
    nfe: int
    n_masked: int
    replaced: dict[str, list[Any]]


def revise_batch(
    records: list[Record],
    ref: ModelRef,
    cfg: SamplerConfig,
    seed: Seeds,
    *,
    on_call: OnCall = None,
    on_engine: OnEngine = None,
) -> list[Record]:
    """Regenerate exactly the `masked` positions of a batch of validated records."""
    start = time.perf_counter()
    enc.check_revisable(records)
    seeds = per_record(seed, len(records))
    revised: dict[int, _Revision] = {}
    for idx in group_by_length(records).values():
        group = [(records[j], seeds[j]) for j in idx]
        watch = _within(on_engine, idx)
        revised.update(zip(idx, _revise_group(group, ref, cfg, on_call, watch), strict=True))
    seconds = (time.perf_counter() - start) / len(records)
    out = []
    for rev, z in zip((revised[j] for j in range(len(records))), seeds, strict=True):
        rec, length = rev.record, len(rev.record["tokens"])
        block = _block_size(cfg, length)
        params = {"block": "full" if block >= length else block, "block_size": block}
        params.update(cfg.params(), **precision_entry(cfg.precision, ref.device))
        params.update(seed=z, n_masked=rev.n_masked, **rev.replaced)
        params.update(model=ref.id)
        stage = _stage("revise", rev.nfe, seconds, **params, batch_size=len(records))
        rec["stages"] = [*rec["stages"], stage]
        rec["text"] = ref.decode(rec["tokens"])
        out.append(rec)
    return out


def _within(on_engine: OnEngine, idx: list[int]) -> OnEngine:
    """`on_engine` for one group of a batch: its rows named by their index in the batch."""
    if on_engine is None:
        return None
    watch = on_engine
    return lambda engine, rows: watch(engine, [idx[r] for r in rows])


def _revise_group(
    seeded: list[tuple[Record, int]],
    ref: ModelRef,
    cfg: SamplerConfig,
    on_call: OnCall,
    on_engine: OnEngine = None,
) -> list[_Revision]:
    """Revise records of one length (each with its seed) together: one tensor."""
    group = [r for r, _ in seeded]
    length = len(group[0]["tokens"])
    tokens = torch.tensor([r["tokens"] for r in group], device=ref.device)
    masked = torch.zeros(len(group), length, dtype=torch.bool, device=ref.device)
    for row, r in enumerate(group):
        masked[row, r["masked"]] = True
    gens = [
        sp.make_generator(z, "revise", len(r["stages"]), r["id"], ref.device) for r, z in seeded
    ]
    offset = torch.tensor([r["nfe"] for r in group])
    if _block_size(cfg, length) >= length > ref.model.config.seq_len:  # centred windows
        res = win.revise(ref.model, tokens, masked, cfg, gens, step_offset=offset, progress=on_call)
    else:
        engine = sp.revise_engine(ref.model, tokens, masked, cfg, gens, step_offset=offset)
        if on_engine is not None:
            on_engine(engine, list(range(len(group))))
        res = engine.run(on_call)
    return [_revised(r, res, row) for row, r in enumerate(group)]


def _revised(rec: Record, res: sp.FillResult, row: int) -> _Revision:
    """A copy of `rec` with its masked positions taken from row `row` of `res`."""
    new = rec.copy()
    pos = rec["masked"]
    tokens, conf = list(rec["tokens"]), list(rec["confidence"])
    conf_n, step = list(rec["confidence_nucleus"]), list(rec["step"])
    t, c = res.tokens[row].tolist(), res.confidence[row].tolist()
    cn, st = res.confidence_nucleus[row].tolist(), res.step[row].tolist()
    for p in pos:
        tokens[p], conf[p], conf_n[p], step[p] = t[p], c[p], cn[p], st[p]
    nfe = int(res.nfe[row])
    new.update(tokens=tokens, confidence=conf, confidence_nucleus=conf_n, step=step)
    new.update(masked=[], nfe=rec["nfe"] + nfe)
    replaced = {  # what the positions held before: `sbd show` diffs against the draft
        "positions": list(pos),
        "replaced": [rec["tokens"][p] for p in pos],
        "replaced_confidence": [rec["confidence"][p] for p in pos],
    }
    return _Revision(new, nfe, len(pos), replaced)

"""`sbd edit` in one process: encoded records -> remask (unless infilling) -> revise.

`make_plan` checks an edit's settings (the options of `sbd edit`, or a request of
`POST /v1/sbd/edit`). `edit_batch` runs on a batch exactly what `sbd remask ... |
sbd revise ...` runs on it with the same seeds (the records validated before each stage,
as each piped command does), so the edited records, and their texts, are the pipe's
(`on_masked` shows a live consumer the positions to revise). `edit_texts` is the whole of
`sbd edit` for texts already read (encode, then `edit_batch` batch by batch): the library
entry point of a caller that gets texts from elsewhere. `edited_text` is
what `sbd edit` prints per record and `text_diff` the unified diff it prints with `--diff`.

Not here: reading texts from files (encode.py), the stages (stages.py), printing (cli/).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sbdcli.artifacts.records import Record
from sbdcli.config import DEFAULT_PASSES, RemaskConfig, SamplerConfig
from sbdcli.data.markers import DEFAULT_MARKER
from sbdcli.errors import UserError
from sbdcli.pipeline.encode import TextItem, encode_records, target_from_model
from sbdcli.pipeline.modelref import ModelRef
from sbdcli.pipeline.stages import (
    OnCall,
    OnEngine,
    batched,
    check_records,
    remask_batch,
    revise_batch,
)


@dataclass(frozen=True)
class EditPlan:
    """How to edit: the remask (None: fill only the texts' markers), the revise, its seed."""

    remask: RemaskConfig | None
    sampler: SamplerConfig
    seed: int


OnMasked = Callable[[list[Record]], None] | None
"""Called with a batch's records once their positions to revise are set (after the
remask, or as encoded when infilling), before the revise starts."""


def make_plan(
    remask_opts: dict[str, Any], infill: bool, sampler: SamplerConfig, seed: int
) -> EditPlan:
    """The plan of `sbd edit`: `remask_opts` (gamma, strategy, passes; strategy masked by
    default) or `infill` instead of a gamma, and the revise's sampler."""
    opts = dict(remask_opts)
    if infill == (opts.get("gamma") is not None):
        raise UserError("pass --gamma G (revise the weakest tokens) or --infill (fill the markers)")
    if infill and (opts.get("strategy") or opts.get("passes", DEFAULT_PASSES) != DEFAULT_PASSES):
        raise UserError("--strategy and --passes choose what to remask: --infill remasks nothing")
    opts["strategy"] = opts.get("strategy") or "masked"
    if opts["strategy"] == "snapshot":
        raise UserError(
            "--strategy snapshot needs a draft's confidence; use masked, posthoc or random"
        )
    remask = None if infill else RemaskConfig(**opts, seed=seed)
    return EditPlan(remask, sampler, seed)


def edit_batch(
    records: list[Record],
    ref: ModelRef,
    plan: EditPlan,
    *,
    on_call: OnCall = None,
    on_engine: OnEngine = None,
    on_masked: OnMasked = None,
    seeds: Sequence[int] | None = None,
) -> list[Record]:
    """Remask (when planned) and revise a batch of encoded records with one model.

    `on_call` sees every network call of the revise and `on_engine` its stepping engine
    (to stream or cancel it), as `revise_batch` hands them on; `on_masked` the records
    with their positions to revise. `seeds`: one per record in place of `plan.seed`.
    """
    seeds = [plan.seed] * len(records) if seeds is None else list(seeds)
    check_records(records, ref)
    if plan.remask is not None:
        records = check_records(remask_batch(records, plan.remask, ref, seeds), ref)
    if on_masked is not None:
        on_masked(records)
    return revise_batch(records, ref, plan.sampler, seeds, on_call=on_call, on_engine=on_engine)


@dataclass(frozen=True)
class Edited:
    """One edited text: the text as given (with its prompt, decoded), the edited record."""

    before: str
    record: Record

    @property
    def after(self) -> str:
        return edited_text(self.record)


def edit_texts(
    items: Sequence[TextItem],
    ref: ModelRef,
    plan: EditPlan,
    *,
    marker: str = DEFAULT_MARKER,
    exact: bool = True,
    batch_size: int = 16,
    on_call: OnCall = None,
    on_engine: OnEngine = None,
    on_batch: Callable[[int], None] | None = None,
) -> list[Edited]:
    """Encode `items` for `ref`'s model and edit them, `batch_size` records at a time.

    Every text is encoded (and any bad one refused with a `UserError`) before the first
    network call. `on_batch(n)` is told after each batch of n records.
    """
    records = encode_records(items, target_from_model(ref), marker, exact)
    before = {i.id: r["text"] if i.prompt else i.text for i, r in zip(items, records, strict=True)}
    done: list[Edited] = []
    for batch in batched(records, batch_size):
        out = edit_batch(batch, ref, plan, on_call=on_call, on_engine=on_engine)
        done.extend(Edited(before[r["id"]], r) for r in out)
        if on_batch is not None:
            on_batch(len(batch))
    return done


def edited_text(rec: Record) -> str:
    """The record's text as edited (prompt included, decoded without BOS)."""
    return rec["text"]


def text_diff(before: str, after: str, name: str) -> str:
    """A unified diff (line by line) of one text before and after editing; '' if unchanged."""
    a = before.splitlines(keepends=True)
    b = after.splitlines(keepends=True)
    lines = difflib.unified_diff(a, b, f"{name} (before)", f"{name} (edited)", lineterm="\n")
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)

"""`sbd edit` in one process: encoded records -> remask (unless infilling) -> revise.

`make_plan` checks an edit's settings (the options of `sbd edit`, or a request of
`POST /v1/sbd/edit`). `edit_batch` runs on a batch exactly what `sbd remask ... | sbd
revise ...` runs on it with the same seeds (the records validated before each stage, as
each piped command does), so the edited records, and their texts, are the pipe's; a live
consumer (the server) sees the positions to revise (`on_masked`) and every revise call
(`progress`, `on_engine`). `edited_text` is what `sbd edit` prints per record and
`text_diff` the unified diff it prints with `--diff`.

Not here: reading and encoding the texts (encode.py), the stages (stages.py), printing (cli/).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sbdcli.artifacts.records import Record
from sbdcli.config import RemaskConfig, SamplerConfig
from sbdcli.errors import UserError
from sbdcli.pipeline.modelref import ModelRef
from sbdcli.pipeline.plans import parse_block
from sbdcli.pipeline.stages import (
    OnCall,
    OnEngine,
    check_records,
    remask_batch,
    revise_batch,
)

OnMasked = Callable[[list[Record]], None] | None
"""Called with the batch's records once their positions to revise are set (after the
remask, or as encoded when infilling), before the revise starts."""


@dataclass(frozen=True)
class EditPlan:
    """How to edit: the remask (None: fill only the texts' markers), the revise, its seed."""

    remask: RemaskConfig | None
    sampler: SamplerConfig
    seed: int


def make_plan(
    remask_opts: dict[str, Any], infill: bool, block: str, sampling: dict[str, Any], seed: int
) -> EditPlan:
    """The plan of `sbd edit`: `remask_opts` (gamma, strategy, passes; strategy masked by
    default), `infill` instead of a gamma, the revise block ("full" or B) and its
    `sampling` options (top_p, temperature)."""
    opts = dict(remask_opts)
    if infill == (opts.get("gamma") is not None):
        raise UserError("pass --gamma G (revise the weakest tokens) or --infill (fill the markers)")
    opts["strategy"] = opts.get("strategy") or "masked"
    if opts["strategy"] == "snapshot":
        raise UserError(
            "--strategy snapshot needs a draft's confidence; use masked, posthoc or random"
        )
    remask = None if infill else RemaskConfig(**opts, seed=seed)
    return EditPlan(remask, SamplerConfig(block_size=parse_block(block), **sampling), seed)


def edit_batch(
    records: list[Record],
    ref: ModelRef,
    plan: EditPlan,
    progress: OnCall = None,
    *,
    on_masked: OnMasked = None,
    on_engine: OnEngine = None,
) -> list[Record]:
    """Remask (when planned) and revise a batch of encoded records with one model."""
    check_records(records, ref)
    if plan.remask is not None:
        records = check_records(remask_batch(records, plan.remask, ref), ref)
    if on_masked is not None:
        on_masked(records)
    return revise_batch(
        records, ref, plan.sampler, plan.seed, on_call=progress, on_engine=on_engine
    )


def edited_text(rec: Record) -> str:
    """The record's text as edited (prompt included, decoded without BOS)."""
    return rec["text"]


def text_diff(before: str, after: str, name: str) -> str:
    """A unified diff (line by line) of one text before and after editing; '' if unchanged."""
    a = before.splitlines(keepends=True)
    b = after.splitlines(keepends=True)
    lines = difflib.unified_diff(a, b, f"{name} (before)", f"{name} (edited)", lineterm="\n")
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)

"""`sbd edit` in one process: encoded records -> remask (unless infilling) -> revise.

`edit_batch` runs on a batch exactly what `sbd remask ... | sbd revise ...` runs on it with
the same seeds (the records validated before each stage, as each piped command does), so
the edited records, and their texts, are the pipe's. `edited_text` is what `sbd edit`
prints per record and `text_diff` the unified diff it prints with `--diff`.

Not here: reading and encoding the texts (encode.py), the stages (stages.py), printing (cli/).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from sbdcli.artifacts.records import Record
from sbdcli.config import RemaskConfig, SamplerConfig
from sbdcli.pipeline.modelref import ModelRef
from sbdcli.pipeline.stages import Progress, check_records, remask_batch, revise_batch


@dataclass(frozen=True)
class EditPlan:
    """How to edit: the remask (None: fill only the texts' markers), the revise, its seed."""

    remask: RemaskConfig | None
    sampler: SamplerConfig
    seed: int


def edit_batch(
    records: list[Record], ref: ModelRef, plan: EditPlan, progress: Progress = None
) -> list[Record]:
    """Remask (when planned) and revise a batch of encoded records with one model."""
    check_records(records, ref)
    if plan.remask is not None:
        records = check_records(remask_batch(records, plan.remask, ref), ref)
    return revise_batch(records, ref, plan.sampler, plan.seed, progress=progress)


def edited_text(rec: Record) -> str:
    """The record's text as edited (prompt included, decoded without BOS)."""
    return rec["text"]


def text_diff(before: str, after: str, name: str) -> str:
    """A unified diff (line by line) of one text before and after editing; '' if unchanged."""
    a = before.splitlines(keepends=True)
    b = after.splitlines(keepends=True)
    lines = difflib.unified_diff(a, b, f"{name} (before)", f"{name} (edited)", lineterm="\n")
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)

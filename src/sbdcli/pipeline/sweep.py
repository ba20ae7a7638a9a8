"""Whole sample sets: draft n samples, remask and revise a set of drafts, reuse a finished file.

What it is: the loop every comparison of sampler settings runs for each setting (`sbd demo`,
and the study and the frontier under experiments/): all batches of a set through
`draft_batch`, or through `remask_batch` then `revise_batch`, written to one records file;
`finished` reads a file back only when it holds exactly the expected number of records, so
an interrupted run redoes the set it was writing and reuses every other.
What it is not: a command (cli/), judging (evaluate/), or a choice of settings (the caller
names each setting and its file).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sbdcli.artifacts import Record, read_records, write_records
from sbdcli.config import RemaskConfig, SamplerConfig
from sbdcli.errors import UserError
from sbdcli.pipeline.modelref import ModelRef
from sbdcli.pipeline.prompts import draft_prompts
from sbdcli.pipeline.stages import batched, draft_batch, remask_batch, revise_batch

BATCH = 64
"""Records per sampler call unless the caller says otherwise."""


def finished(path: Path, n: int) -> list[Record] | None:
    """The records of `path` when it is a readable records file of exactly `n`, else None."""
    if not path.is_file():
        return None
    try:
        records = list(read_records(str(path)))
    except UserError:  # a cut or damaged file is redone, not reused
        return None
    return records if len(records) == n else None


def draft_set(
    ref: ModelRef, n: int, seed: int, cfg: SamplerConfig, batch: int = BATCH
) -> list[Record]:
    """Draft `n` unconditional samples of the model's length, `batch` at a time."""
    length = ref.model.config.seq_len
    prompts = draft_prompts(ref, n, seed, None)
    records: list[Record] = []
    for part in batched(prompts, batch):
        records.extend(draft_batch(ref, part, length, cfg, seed, n_records=len(prompts)))
    return records


def revise_set(
    ref: ModelRef,
    drafts: list[Record],
    remask: RemaskConfig,
    cfg: SamplerConfig,
    seed: int,
    batch: int = BATCH,
) -> list[Record]:
    """Remask every draft with `remask`, then revise it with `cfg` (the drafts are kept)."""
    records: list[Record] = []
    for part in batched(drafts, batch):
        remasked = remask_batch([dict(r) for r in part], remask, ref)
        records.extend(revise_batch(remasked, ref, cfg, seed))
    return records


def reuse_or_write(
    path: Path, n: int, make: Callable[[], list[Record]], fresh: bool = False
) -> tuple[list[Record], bool]:
    """(records, reused): the `n` records of a finished `path` (unless `fresh`), else the
    records `make()` returns, written to `path` first."""
    found = None if fresh else finished(path, n)
    if found is not None:
        return found, True
    records = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_records(records, str(path))
    return records, False

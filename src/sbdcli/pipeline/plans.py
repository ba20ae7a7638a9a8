"""The K-stage plan of `sbd generate`: parsing it, and running it in one process.

`parse_stages` turns the command-line block list and gammas ('4,full' + '0.25') into a
draft block size and one (gamma, revise block) pair per revise stage; `parse_block` reads
one block size ('full' or a positive integer). `StagePlan` is one revise stage (how to
remask, then how to revise); `generate_batch` drafts and then applies every stage of a
plan to a batch, producing exactly the records of the piped commands with the same seeds
(docs/sampling.md, "Reproducibility").

Not here: the stages themselves (stages.py) or option parsing beyond these two strings (cli/).
"""

from __future__ import annotations

from dataclasses import dataclass

from sbdcli.artifacts.records import Record
from sbdcli.config import RedrawConfig, RemaskConfig, SamplerConfig
from sbdcli.errors import UserError
from sbdcli.pipeline.modelref import ModelRef
from sbdcli.pipeline.prompts import Prompt
from sbdcli.pipeline.stages import OnCall, draft_batch, remask_batch, revise_batch


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
    """One revise stage of a K-stage plan: how to remask, then how to revise."""

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
    on_call: OnCall = None,
    n_records: int | None = None,
    redraw: RedrawConfig | None = None,
) -> list[Record]:
    """Draft, then remask + revise per stage of `plan`, in one process with one model.

    `n_records`, `redraw`: the records the whole command writes and the redraw of
    degenerate drafts (see `draft_batch`).
    """
    records = draft_batch(
        ref,
        prompts,
        length,
        draft_cfg,
        seed,
        stop_at_eos=stop_at_eos,
        on_call=on_call,
        n_records=n_records,
        redraw=redraw,
    )
    for stage in plan:
        records = remask_batch(records, stage.remask, ref)
        records = revise_batch(records, ref, stage.revise, stage.seed, on_call=on_call)
    return records

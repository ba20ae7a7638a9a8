"""`sbd draft`, `sbd remask`, `sbd revise`, `sbd generate`: the sampler as a Unix pipeline.

    sbd draft | sbd remask --gamma 0.25 | sbd revise

Records stream as JSONL (stdin/stdout by default, `-i/-o` for files, `.safetensors` for a
bundle); each command processes `--batch-size` records at a time and writes them as soon
as they are done, so the next stage starts on the first batch. Thin commands: flags are
parsed here, the work is in `sbdcli.pipeline`; progress goes to stderr. Under `torchrun`
or `accelerate launch` the batches are dealt out to the processes (`sbdcli.distributed`)
and process 0 writes the records in order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from sbdcli.artifacts.files import check_output_path
from sbdcli.cli._app import app, console, term
from sbdcli.cli.options import (
    BatchOpt,
    DeviceOpt,
    InputOpt,
    ModelOpt,
    OutputOpt,
    SeedOpt,
    config_options,
)
from sbdcli.cli.progress import counting
from sbdcli.cli.sampling import (
    EosOpt,
    LengthOpt,
    NOpt,
    PromptOpt,
    PromptsOpt,
    check_captured,
    print_note,
    sampler_config,
    sampler_options,
)
from sbdcli.config import (
    ApproxCache,
    ExactCache,
    RedrawConfig,
    RemaskConfig,
    SamplerConfig,
    with_steps,
)
from sbdcli.errors import UserError

MAX_LENGTH_FACTOR = 16
"""Longest --length, in multiples of the trained length (longer samples slide a window)."""

redraw_options = config_options(
    "redraw_opts", RedrawConfig, ("redraw_low_entropy", "redraw_window", "redraw_attempts")
)
"""The degenerate-draft redraw (BD3-LM's rule) of `draft` and `generate`."""


# --------------------------------------------------------------------------- helpers
def _check_batch(batch_size: int) -> None:
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")


def _draft_setup(
    model: str | None,
    device: str,
    n: int | None,
    length: int | None,
    prompts: str | None,
    seed: int,
    block: int,
    texts: list[str] | None = None,
) -> tuple[Any, list[Any], int]:
    """Load the model and the prompts and check them before any work starts."""
    from sbdcli import pipeline as pl

    pl.check_record_count(n)  # before the model loads or a work list is built
    if texts and prompts:
        raise UserError("--prompt and --prompts exclude each other: give texts or one file")
    ref = pl.load_model_ref(pl.default_model_path(model), device)
    length = ref.model.config.seq_len if length is None else length
    if length < 2:
        raise UserError(f"--length must be >= 2, got {length}")
    if length > MAX_LENGTH_FACTOR * ref.model.config.seq_len:
        raise UserError(
            f"--length {length} is more than {MAX_LENGTH_FACTOR} x the model's trained length "
            f"{ref.model.config.seq_len}"
        )
    if length > ref.model.config.seq_len and block > ref.model.config.seq_len:
        raise UserError(f"--block {block} exceeds the model's trained length for sliding")
    given = pl.read_prompts(prompts, ref) if prompts else None
    given = pl.text_prompts(texts, ref) if texts else given
    plist = pl.draft_prompts(ref, n, seed, given)
    for p in plist:
        if len(p.tokens) > length:
            raise UserError(f"prompt {p.id!r} has {len(p.tokens)} tokens; --length is {length}")
    return ref, plist, length


def _read_batches(path: str, batch_size: int) -> Iterator[list[dict[str, Any]]]:
    """Records from JSONL (lazily) or a bundle, in batches; empty input is an error."""
    import sys

    from sbdcli.artifacts import read_records
    from sbdcli.pipeline import batched

    if path == "-" and sys.stdin.isatty():
        raise UserError("no input: pipe records in (sbd draft | ...) or pass -i FILE")
    empty = True
    for batch in batched(read_records(path, validate=False), batch_size):
        empty = False
        yield batch
    if empty:
        raise UserError("no input records (pipe records in or pass -i FILE)")


def _batch_model(models: Any, batch: list[dict[str, Any]]) -> Any:
    """The one model a batch of records is processed with."""
    if models.explicit:
        return models.get(models.explicit)
    names = {r.get("model") for r in batch}
    if len(names) > 1:
        raise UserError("the records name different models; pass -m to choose one")
    return models.for_record(batch[0])


@dataclass(frozen=True)
class Drafting:
    """What `draft` and `generate` sample: prompts, length, the draft and the K-stage plan
    (empty for a bare draft)."""

    ref: Any
    prompts: list[Any]
    length: int
    cfg: SamplerConfig
    seed: int
    plan: list[Any]
    stop_at_eos: bool
    redraw: RedrawConfig | None = None

    def batch(self, prompts: list[Any], on_call: Any) -> list[dict[str, Any]]:
        from sbdcli import pipeline as pl

        return pl.generate_batch(
            self.ref,
            prompts,
            self.length,
            self.cfg,
            self.seed,
            self.plan,
            stop_at_eos=self.stop_at_eos,
            on_call=on_call,
            n_records=len(self.prompts),
            redraw=self.redraw,
        )


def _processes(device: str, output: str, input: str | None = None) -> str:
    """Join the launch's processes (torchrun / accelerate launch) if any; with several,
    -i/-o must be files; the device this process samples on."""
    from sbdcli import distributed as dist

    world = dist.world()
    dist.require_files(world, input=input, output=output)
    return dist.device_for(device, world)


def _writer(output: str) -> Any:
    """The record writer of process 0; the other processes of a launch write nothing."""
    import contextlib

    from sbdcli import distributed as dist
    from sbdcli.artifacts import RecordWriter

    return RecordWriter(output) if dist.world().main else contextlib.nullcontext()


def _write_drafts(what: str, output: str, batch_size: int, job: Drafting) -> None:
    """Draft-like commands: every batch of prompts drafted (and revised), records written.

    Under a launch of P processes batch k is drafted by process k mod P (sbdcli.distributed).
    """
    from sbdcli import distributed as dist
    from sbdcli import pipeline as pl

    world, batches = dist.world(), list(pl.batched(job.prompts, batch_size))
    dist.check_enough(world, len(batches), len(job.prompts), "batches")
    with _writer(output) as writer, counting(what, len(job.prompts)) as (done, on_call):
        for recs in dist.map_ordered(lambda b: job.batch(b, on_call), batches, world):
            for rec in recs:
                writer.write(rec)
            done(len(recs))


def _rewrite_records(what: str, input: str, output: str, batch_size: int, run: Any) -> None:
    """Record-to-record commands: `run(batch, first_index, on_call)` per batch of records.

    An input that ends with fewer records than its draft declared is written as it is,
    with one warning on stderr. Under a launch of P processes every process reads the
    input and batch k is run by process k mod P (sbdcli.distributed).
    """
    from sbdcli import distributed as dist
    from sbdcli.artifacts.records import DraftTally

    world, tally, seen = dist.world(), DraftTally(), [0, 0]  # batches, records read

    def numbered() -> Iterator[tuple[int, list[dict[str, Any]]]]:
        for batch in _read_batches(input, batch_size):
            yield seen[1], batch
            seen[0], seen[1] = seen[0] + 1, seen[1] + len(batch)

    with _writer(output) as writer, counting(what, None) as (done, on_call):
        for recs in dist.map_ordered(lambda u: run(u[1], u[0], on_call), numbered(), world):
            for rec in recs:
                writer.write(rec)
                tally.add(rec)
            done(len(recs))
        dist.check_enough(world, seen[0], seen[1], "batches")
    _warn_partial(what, tally)


def _warn_partial(what: str, tally: Any) -> None:
    """One stderr line when the input held fewer records than their drafts declared."""
    short = tally.shortfall()
    if short is not None:
        console.print(
            f"[bold yellow]sbd: warning:[/] {term(what)}: the input ended after {short[0]} of the "
            f"{short[1]} records its draft declared (a cut or partial input?)",
            highlight=False,
            soft_wrap=True,
        )


# --------------------------------------------------------------------------- draft
@app.command()
@sampler_options
@redraw_options
def draft(
    model: ModelOpt = None,
    n: NOpt = None,
    length: LengthOpt = None,
    block: Annotated[int, typer.Option("--block", help="Draft block size B.")] = 4,
    prompts: PromptsOpt = None,
    prompt: PromptOpt = None,
    stop_at_eos: EosOpt = False,
    seed: SeedOpt = 0,
    batch_size: BatchOpt = 16,
    device: DeviceOpt = "auto",
    output: OutputOpt = "-",
    sampling: dict[str, Any] | None = None,
    aliases: dict[str, Any] | None = None,
    redraw_opts: dict[str, Any] | None = None,
) -> None:
    """Stage 1: block-by-block sampling with an exact KV cache; records snapshot confidence.

    Example: sbd draft -n 64 --reveal steps:2 | sbd remask --gamma 0.25 | sbd revise
    """

    _check_batch(batch_size)
    check_output_path(output)
    device = _processes(device, output)
    if block < 1:
        raise UserError(f"--block must be >= 1, got {block}")
    cfg, note = sampler_config(block, sampling, aliases)
    check_captured(cfg, device)
    redraw = RedrawConfig(**(redraw_opts or {}))
    ref, plist, length = _draft_setup(model, device, n, length, prompts, seed, block, prompt)
    print_note(note)

    job = Drafting(ref, plist, length, cfg, seed, [], stop_at_eos, redraw)
    _write_drafts("draft", output, batch_size, job)


# --------------------------------------------------------------------------- remask
def _remask_config(values: dict[str, Any], seed: int) -> RemaskConfig:
    """RemaskConfig from the options; without --gamma and --threshold, gamma's default."""
    if values["gamma"] is None and values["threshold"] is None:
        values = {k: v for k, v in values.items() if k != "gamma"}
    return RemaskConfig(**values, seed=seed)


@app.command()
@config_options(
    "remask_opts",
    RemaskConfig,
    ("gamma", "strategy", "scope", "threshold", "passes", "precision"),
    optional=("gamma",),
    help_suffix=lambda f: (
        f"(default {RemaskConfig.gamma} unless --threshold)" if f == "gamma" else ""
    ),
)
def remask(
    model: ModelOpt = None,
    seed: SeedOpt = 0,
    batch_size: BatchOpt = 16,
    device: DeviceOpt = "auto",
    input: InputOpt = "-",
    output: OutputOpt = "-",
    remask_opts: dict[str, Any] | None = None,
) -> None:
    """Choose the least trusted tokens: sets the masked positions and scores, keeps the tokens.

    Example: sbd draft -n 64 | sbd remask --strategy snapshot --gamma 0.25 | sbd revise
    """
    from sbdcli import pipeline as pl

    _check_batch(batch_size)
    check_output_path(output)
    device = _processes(device, output, input)
    cfg = _remask_config(dict(remask_opts or {}), seed)
    models = pl.ModelCache(model, device)

    def run(batch: list[dict[str, Any]], first: int, _: Any) -> list[dict[str, Any]]:
        ref = _batch_model(models, batch) if cfg.needs_model else None
        pl.check_records(batch, ref, first)
        return pl.remask_batch(batch, cfg, ref)

    _rewrite_records("remask", input, output, batch_size, run)


# --------------------------------------------------------------------------- revise
@app.command()
@sampler_options
def revise(
    model: ModelOpt = None,
    block: Annotated[
        str,
        typer.Option("--block", help="Revise block size B, or 'full' (one bidirectional block)."),
    ] = "full",
    seed: SeedOpt = 0,
    batch_size: BatchOpt = 16,
    device: DeviceOpt = "auto",
    input: InputOpt = "-",
    output: OutputOpt = "-",
    sampling: dict[str, Any] | None = None,
    aliases: dict[str, Any] | None = None,
) -> None:
    """Regenerate exactly the masked positions, everything else fixed and visible.

    Example: sbd draft -n 64 | sbd remask --gamma 0.25 | sbd revise --block full --cache approx:4
    """
    from sbdcli import pipeline as pl

    _check_batch(batch_size)
    check_output_path(output)
    device = _processes(device, output, input)
    cfg, note = sampler_config(pl.parse_block(block), sampling, aliases)
    check_captured(cfg, device)
    models = pl.ModelCache(model, device)
    print_note(note)

    def run(batch: list[dict[str, Any]], first: int, on_call: Any) -> list[dict[str, Any]]:
        ref = _batch_model(models, batch)
        pl.check_records(batch, ref, first)
        return pl.revise_batch(batch, ref, cfg, seed, on_call=on_call)

    _rewrite_records("revise", input, output, batch_size, run)


# --------------------------------------------------------------------------- generate
@app.command()
@sampler_options
@redraw_options
@config_options("remask_opts", RemaskConfig, ("strategy", "passes"))
def generate(
    model: ModelOpt = None,
    stages: Annotated[
        str,
        typer.Option(
            "--stages", help="Block sizes per stage: draft first, e.g. 4,full or 4,64,full."
        ),
    ] = "4,full",
    gammas: Annotated[
        str,
        typer.Option("--gammas", help="Remask ratio per revise stage (one value = all stages)."),
    ] = "0.25",
    n: NOpt = None,
    length: LengthOpt = None,
    revise_steps_per_block: Annotated[
        int | None,
        typer.Option(
            "--revise-steps-per-block",
            help="Calls per revise block.",
            show_default="one token per call",
        ),
    ] = None,
    prompts: PromptsOpt = None,
    prompt: PromptOpt = None,
    stop_at_eos: EosOpt = False,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of every stage (as --seed on each piped command).")
    ] = 0,
    batch_size: BatchOpt = 16,
    device: DeviceOpt = "auto",
    output: OutputOpt = "-",
    sampling: dict[str, Any] | None = None,
    aliases: dict[str, Any] | None = None,
    remask_opts: dict[str, Any] | None = None,
    redraw_opts: dict[str, Any] | None = None,
) -> None:
    """Draft, then remask + revise per stage, in one process (same records as the pipe).

    Example: sbd generate -n 64 --stages 4,64,full --gammas 0.5,0.25 -o revised.jsonl
    """
    from sbdcli import pipeline as pl

    _check_batch(batch_size)
    check_output_path(output)
    device = _processes(device, output)
    draft_block, revise_stages = pl.parse_stages(stages, gammas)
    cfg, note = sampler_config(draft_block, sampling, aliases)
    revise_policy = with_steps(cfg.reveal, revise_steps_per_block)
    # --cache approx is a revise setting here: a draft block's call runs <= 2B positions
    exact = ExactCache() if isinstance(cfg.cache, ApproxCache) else cfg.cache
    draft_cfg = dataclasses.replace(cfg, cache=exact)
    check_captured(draft_cfg, device)
    redraw = RedrawConfig(**(redraw_opts or {}))
    plan = [
        pl.StagePlan(
            RemaskConfig(gamma=gamma, seed=seed, precision=cfg.precision, **(remask_opts or {})),
            dataclasses.replace(cfg, block_size=blk, reveal=revise_policy),
            seed,
        )
        for gamma, blk in revise_stages
    ]
    ref, plist, length = _draft_setup(model, device, n, length, prompts, seed, draft_block, prompt)
    print_note(note)

    job = Drafting(ref, plist, length, draft_cfg, seed, plan, stop_at_eos, redraw)
    _write_drafts("generate", output, batch_size, job)

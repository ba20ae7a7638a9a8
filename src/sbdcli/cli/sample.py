"""`sbd draft`, `sbd remask`, `sbd revise`, `sbd generate`: the sampler as a Unix pipeline.

    sbd draft | sbd remask --gamma 0.25 | sbd revise

Records stream as JSONL (stdin/stdout by default, `-i/-o` for files, `.safetensors` for a
bundle); each command processes `--batch-size` records at a time and writes them as soon
as they are done, so the next stage starts on the first batch. Thin commands: flags are
parsed here, the work is in `sbdcli.pipeline`; progress goes to stderr.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Annotated, Any

import typer

from sbdcli.cli._app import InputOpt, OutputOpt, app, console
from sbdcli.errors import UserError

ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Run directory or checkpoint (draft default: $SBD_MODEL, else ./runs/latest; "
        "later stages default to the model named in the records).",
    ),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of this stage's random draws.")]
BatchOpt = Annotated[
    int, typer.Option("--batch-size", help="Records processed (and written) together.")
]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="cpu, cuda, or auto (cuda when available).")
]
StepsOpt = Annotated[
    int | None,
    typer.Option(
        "--steps-per-block",
        help="Network calls per block; a call reveals ceil(remaining / steps left). "
        "Default: the block size (one token per call).",
    ),
]
FirstHitOpt = Annotated[
    bool,
    typer.Option("--first-hitting", help="Reveal one uniformly chosen masked position per call."),
]
TopPOpt = Annotated[
    float,
    typer.Option("--top-p", help="Nucleus mass; the token crossing it is excluded (BD3-LM)."),
]
TempOpt = Annotated[float, typer.Option("--temperature", help="Softmax temperature (> 0).")]
DtypeOpt = Annotated[
    str,
    typer.Option(
        "--sampling-dtype", help="float64 (default), or float32 as a recorded ablation only."
    ),
]
UnmaskOpt = Annotated[
    str,
    typer.Option(
        "--unmask", help="Which masked positions a call reveals: random (uniform) or confident."
    ),
]
NoCacheOpt = Annotated[
    bool,
    typer.Option("--no-kv-cache", help="Recompute the whole prefix at every call (reference)."),
]


# --------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def _progress(what: str, total: int | None) -> Iterator[tuple[Any, Any]]:
    """A live bar on stderr; yields (advance samples by n, count one network call)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        f"[bold]{what}",
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("samples"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
    task = bar.add_task(what, total=total, rate="")
    calls, start = [0], time.perf_counter()

    def on_call(n: int) -> None:
        calls[0] += n
        rate = calls[0] / max(time.perf_counter() - start, 1e-9)
        bar.update(task, rate=f"{calls[0]} calls, {rate:.1f} calls/s")

    with bar:
        yield (lambda n: bar.advance(task, n)), on_call


def _block(text: str) -> int:
    from sbdcli.pipeline import parse_block

    return parse_block(text)


def _sampler_cfg(
    block: int,
    steps: int | None,
    first_hitting: bool,
    top_p: float,
    temperature: float,
    dtype: str,
    unmask: str,
    no_kv_cache: bool,
) -> Any:
    from sbdcli.config import SamplerConfig

    return SamplerConfig(
        block_size=block,
        steps_per_block=steps,
        first_hitting=first_hitting,
        top_p=top_p,
        temperature=temperature,
        dtype=dtype,
        unmask=unmask,
        kv_cache=not no_kv_cache,
    )


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
) -> tuple[Any, list[Any], int]:
    """Load the model and the prompts and check them before any work starts."""
    from sbdcli import pipeline as pl

    if n is not None and n < 1:
        raise UserError(f"-n must be >= 1, got {n}")
    ref = pl.load_model_ref(pl.default_model_path(model), device)
    length = ref.model.config.seq_len if length is None else length
    if length < 2:
        raise UserError(f"--length must be >= 2, got {length}")
    if length > ref.model.config.seq_len and block > ref.model.config.seq_len:
        raise UserError(f"--block {block} exceeds the model's trained length for sliding")
    given = pl.read_prompts(prompts, ref) if prompts else None
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


# --------------------------------------------------------------------------- draft
@app.command()
def draft(
    model: ModelOpt = None,
    n: Annotated[
        int | None,
        typer.Option("-n", help="Samples (default 16), or samples per prompt (default 1)."),
    ] = None,
    length: Annotated[
        int | None,
        typer.Option("--length", help="Tokens per sample incl. BOS (default: trained length)."),
    ] = None,
    block: Annotated[int, typer.Option("--block", help="Draft block size B.")] = 4,
    steps_per_block: StepsOpt = None,
    first_hitting: FirstHitOpt = False,
    top_p: TopPOpt = 0.9,
    temperature: TempOpt = 1.0,
    sampling_dtype: DtypeOpt = "float64",
    unmask: UnmaskOpt = "random",
    no_kv_cache: NoCacheOpt = False,
    prompts: Annotated[
        str | None,
        typer.Option(
            "--prompts", help="JSONL of prompts: 'prompt' (text) or 'prompt_tokens', opt. 'id'."
        ),
    ] = None,
    stop_at_eos: Annotated[
        bool,
        typer.Option(
            "--stop-at-eos",
            help="Stop a sample after the block in which it generates EOS; cut after the EOS.",
        ),
    ] = False,
    seed: SeedOpt = 0,
    batch_size: BatchOpt = 16,
    device: DeviceOpt = "auto",
    output: OutputOpt = "-",
) -> None:
    """Stage 1: block-by-block sampling with an exact KV cache; records snapshot confidence."""
    from sbdcli import pipeline as pl
    from sbdcli.artifacts import RecordWriter

    _check_batch(batch_size)
    if block < 1:
        raise UserError(f"--block must be >= 1, got {block}")
    cfg = _sampler_cfg(
        block,
        steps_per_block,
        first_hitting,
        top_p,
        temperature,
        sampling_dtype,
        unmask,
        no_kv_cache,
    )
    ref, plist, length = _draft_setup(model, device, n, length, prompts, seed, block)
    with RecordWriter(output) as writer, _progress("draft", len(plist)) as (done, on_call):
        for batch in pl.batched(plist, batch_size):
            records = pl.draft_batch(
                ref, batch, length, cfg, seed, stop_at_eos=stop_at_eos, progress=on_call
            )
            for rec in records:
                writer.write(rec)
            done(len(batch))


# --------------------------------------------------------------------------- remask
@app.command()
def remask(
    gamma: Annotated[
        float | None,
        typer.Option("--gamma", help="Fraction of eligible tokens to remask, in [0, 1]."),
    ] = None,
    strategy: Annotated[
        str,
        typer.Option("--strategy", help="snapshot | random | posthoc | masked (k passes)."),
    ] = "snapshot",
    scope: Annotated[
        str,
        typer.Option(
            "--scope", help="sequence: floor(gamma n) per record; batch: pooled per batch."
        ),
    ] = "sequence",
    threshold: Annotated[
        float | None,
        typer.Option("--threshold", help="Instead of gamma: remask every score below C."),
    ] = None,
    passes: Annotated[
        int, typer.Option("--passes", help="Passes k of the masked strategy (k calls).")
    ] = 8,
    model: ModelOpt = None,
    seed: SeedOpt = 0,
    batch_size: BatchOpt = 16,
    device: DeviceOpt = "auto",
    input: InputOpt = "-",
    output: OutputOpt = "-",
) -> None:
    """Choose the least trusted tokens: sets `masked` and `scores`, leaves `tokens` untouched."""
    from sbdcli import pipeline as pl
    from sbdcli.artifacts import RecordWriter

    _check_batch(batch_size)
    if gamma is None and threshold is None:
        gamma = 0.25
    cfg = pl.RemaskConfig(gamma, strategy, scope, threshold, passes, seed)
    models = pl.ModelCache(model, device)
    first = 0
    with RecordWriter(output) as writer, _progress("remask", None) as (done, _):
        for batch in _read_batches(input, batch_size):
            ref = _batch_model(models, batch) if cfg.needs_model else None
            pl.check_records(batch, ref, first)
            for rec in pl.remask_batch(batch, cfg, ref):
                writer.write(rec)
            first += len(batch)
            done(len(batch))


# --------------------------------------------------------------------------- revise
@app.command()
def revise(
    model: ModelOpt = None,
    block: Annotated[
        str,
        typer.Option("--block", help="Revise block size B, or 'full' (one bidirectional block)."),
    ] = "full",
    steps_per_block: StepsOpt = None,
    first_hitting: FirstHitOpt = False,
    top_p: TopPOpt = 0.9,
    temperature: TempOpt = 1.0,
    sampling_dtype: DtypeOpt = "float64",
    unmask: UnmaskOpt = "random",
    no_kv_cache: NoCacheOpt = False,
    seed: SeedOpt = 0,
    batch_size: BatchOpt = 16,
    device: DeviceOpt = "auto",
    input: InputOpt = "-",
    output: OutputOpt = "-",
) -> None:
    """Regenerate exactly the `masked` positions, everything else fixed and visible."""
    from sbdcli import pipeline as pl
    from sbdcli.artifacts import RecordWriter

    _check_batch(batch_size)
    cfg = _sampler_cfg(
        _block(block),
        steps_per_block,
        first_hitting,
        top_p,
        temperature,
        sampling_dtype,
        unmask,
        no_kv_cache,
    )
    models = pl.ModelCache(model, device)
    first = 0
    with RecordWriter(output) as writer, _progress("revise", None) as (done, on_call):
        for batch in _read_batches(input, batch_size):
            ref = _batch_model(models, batch)
            pl.check_records(batch, ref, first)
            for rec in pl.revise_batch(batch, ref, cfg, seed, progress=on_call):
                writer.write(rec)
            first += len(batch)
            done(len(batch))


# --------------------------------------------------------------------------- generate
@app.command()
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
    strategy: Annotated[
        str, typer.Option("--strategy", help="Remask strategy of every revise stage.")
    ] = "snapshot",
    passes: Annotated[int, typer.Option("--passes", help="Passes k of the masked strategy.")] = 8,
    n: Annotated[
        int | None, typer.Option("-n", help="Samples (default 16), or samples per prompt.")
    ] = None,
    length: Annotated[
        int | None, typer.Option("--length", help="Tokens per sample (default: trained length).")
    ] = None,
    steps_per_block: StepsOpt = None,
    revise_steps_per_block: Annotated[
        int | None,
        typer.Option(
            "--revise-steps-per-block", help="Calls per revise block (default: one token per call)."
        ),
    ] = None,
    first_hitting: FirstHitOpt = False,
    top_p: TopPOpt = 0.9,
    temperature: TempOpt = 1.0,
    sampling_dtype: DtypeOpt = "float64",
    unmask: UnmaskOpt = "random",
    no_kv_cache: NoCacheOpt = False,
    prompts: Annotated[
        str | None, typer.Option("--prompts", help="JSONL of prompts (as for draft).")
    ] = None,
    stop_at_eos: Annotated[bool, typer.Option("--stop-at-eos", help="As for draft.")] = False,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of every stage (as --seed on each piped command).")
    ] = 0,
    batch_size: BatchOpt = 16,
    device: DeviceOpt = "auto",
    output: OutputOpt = "-",
) -> None:
    """Draft, then remask + revise per stage, in one process (same records as the pipe)."""
    from sbdcli import pipeline as pl
    from sbdcli.artifacts import RecordWriter

    _check_batch(batch_size)
    draft_block, schedule = pl.parse_stages(stages, gammas)
    common = (first_hitting, top_p, temperature, sampling_dtype, unmask, no_kv_cache)
    draft_cfg = _sampler_cfg(draft_block, steps_per_block, *common)
    plan = [
        pl.StagePlan(
            pl.RemaskConfig(gamma, strategy, "sequence", None, passes, seed),
            _sampler_cfg(blk, revise_steps_per_block, *common),
            seed,
        )
        for gamma, blk in schedule
    ]
    ref, plist, length = _draft_setup(model, device, n, length, prompts, seed, draft_block)
    with RecordWriter(output) as writer, _progress("generate", len(plist)) as (done, on_call):
        for batch in pl.batched(plist, batch_size):
            records = pl.generate_batch(
                ref,
                batch,
                length,
                draft_cfg,
                seed,
                plan,
                stop_at_eos=stop_at_eos,
                progress=on_call,
            )
            for rec in records:
                writer.write(rec)
            done(len(batch))

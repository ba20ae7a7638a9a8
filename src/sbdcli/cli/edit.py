"""`sbd encode` and `sbd edit`: a person's own text into the pipeline, and back out edited.

    sbd encode notes.txt -m RUN | sbd remask --strategy masked --gamma 0.1 | sbd revise
    sbd edit notes.txt -m RUN --gamma 0.1 --diff
    sbd edit story.txt -m RUN --infill --whole -o story-filled.txt

Thin commands: flags are parsed here, the work is in `sbdcli.pipeline` (encode.py,
edit.py). Every text is read and encoded before anything is written, so a bad text fails
the command with one line and no output. Progress goes to stderr.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from sbdcli.artifacts.files import check_output_path, is_json_document
from sbdcli.cli._app import app, emit
from sbdcli.cli.options import (
    BatchOpt,
    DeviceOpt,
    ModelOpt,
    OutputOpt,
    SeedOpt,
    config_options,
)
from sbdcli.cli.progress import counting
from sbdcli.cli.sampling import check_captured, print_note, sampler_config, sampler_options
from sbdcli.config import RemaskConfig, SamplerConfig
from sbdcli.errors import UserError

FileArg = Annotated[
    str, typer.Argument(help="Texts to read: a file, or - (stdin).", show_default=False)
]
FormatOpt = Annotated[
    str,
    typer.Option(
        "--format",
        help="lines (one text per line), jsonl ('text', optional 'prompt' and 'id'), whole "
        "(the file is one text), or auto (jsonl for *.jsonl, else lines).",
    ),
]
WholeOpt = Annotated[bool, typer.Option("--whole", help="The whole input is one text.")]
MarkerOpt = Annotated[
    str,
    typer.Option(
        "--mask-token", help="Mask marker in the text ([MASK] and [MASK:n] for n tokens)."
    ),
]
NormalizeOpt = Annotated[
    bool,
    typer.Option(
        "--allow-normalize",
        help="Accept a text the tokenizer does not reproduce byte for byte (edit its version).",
    ),
]


def _format(path: str, fmt: str, whole: bool) -> str:
    if whole:
        if fmt not in ("auto", "whole"):
            raise UserError(f"--whole and --format {fmt} exclude each other")
        return "whole"
    if fmt == "auto":
        return "jsonl" if path.endswith(".jsonl") or is_json_document(path) else "lines"
    return fmt


def _encode(path: str, fmt: str, target: Any, marker: str, exact: bool) -> list[Any]:
    from sbdcli.pipeline import encode as enc

    return enc.encode_records(enc.read_texts(path, fmt), target, marker, exact)


# --------------------------------------------------------------------------- encode
@app.command()
def encode(
    file: FileArg = "-",
    model: ModelOpt = None,
    data: Annotated[
        str | None, typer.Option("--data", help="Data directory whose tokenizer to use.")
    ] = None,
    fmt: FormatOpt = "auto",
    whole: WholeOpt = False,
    mask_token: MarkerOpt = "[MASK]",
    allow_normalize: NormalizeOpt = False,
    device: DeviceOpt = "cpu",
    output: OutputOpt = "-",
) -> None:
    """Texts become sample records: [MASK] markers become positions for sbd revise to fill.

    Example: sbd encode notes.txt -m runs/latest | sbd remask --strategy masked --gamma 0.1
    | sbd revise
    """
    from sbdcli import pipeline as pl
    from sbdcli.artifacts import write_records
    from sbdcli.pipeline import encode as enc

    check_output_path(output)
    if (model is None) == (data is None):
        raise UserError("pass exactly one of -m RUN (a model) or --data DIR (its tokenizer)")
    if data is not None:
        target = enc.target_from_data(data)
    else:
        target = enc.target_from_model(pl.load_model_ref(pl.default_model_path(model), device))
    records = _encode(file, _format(file, fmt, whole), target, mask_token, not allow_normalize)
    write_records(records, output)


# --------------------------------------------------------------------------- edit
def _plan(remask_opts: dict[str, Any], infill: bool, sampler: SamplerConfig, seed: int) -> Any:
    from sbdcli.pipeline.edit import make_plan

    return make_plan(remask_opts, infill, sampler, seed)


def _write_outputs(
    output: str, text: str, records_out: str | None, records: list[Any], shown: str | None
) -> None:
    """Files first, stdout last: `--records` is written while `-o` is still a temporary, so
    a failed write leaves neither file and prints nothing; then `shown` (the texts or the
    diff) goes to stdout (`emit`: control characters visible on a terminal)."""
    import contextlib

    from sbdcli.artifacts import write_records
    from sbdcli.artifacts.files import atomic_file

    with contextlib.ExitStack() as stack:
        if output != "-":
            stack.enter_context(atomic_file(output)).write(text)
        if records_out is not None:
            write_records(records, records_out)
    if shown is not None:
        emit(shown)


def _render(records: list[Any], fmt: str, output: str) -> str:
    """The edited texts: one per line, JSON Lines {id, text} (one JSON list of them for a
    `.json` output), or the whole text."""
    import json

    from sbdcli.pipeline.edit import edited_text

    if fmt == "whole":
        return edited_text(records[0])
    if fmt == "jsonl":
        objs = [{"id": r["id"], "text": edited_text(r)} for r in records]
        if is_json_document(output):
            return json.dumps(objs, indent=1) + "\n"
        return "".join(json.dumps(o) + "\n" for o in objs)
    return "".join(edited_text(r).replace("\n", " ") + "\n" for r in records)


@app.command()
@config_options(
    "remask_opts",
    RemaskConfig,
    ("gamma", "strategy", "passes"),
    optional=("gamma", "strategy"),
    help_suffix=lambda f: {"strategy": "(default masked)", "gamma": "(or --infill)"}.get(f, ""),
)
@sampler_options
def edit(
    file: FileArg = "-",
    model: ModelOpt = None,
    infill: Annotated[
        bool, typer.Option("--infill", help="Only fill the texts' [MASK] markers (no remask).")
    ] = False,
    block: Annotated[
        str,
        typer.Option("--block", help="Revise block size B, or 'full' (one bidirectional block)."),
    ] = "full",
    fmt: FormatOpt = "auto",
    whole: WholeOpt = False,
    mask_token: MarkerOpt = "[MASK]",
    allow_normalize: NormalizeOpt = False,
    diff: Annotated[
        bool,
        typer.Option("--diff", help="Print a unified diff of each text (stdout) instead of it."),
    ] = False,
    records_out: Annotated[
        str | None,
        typer.Option("--records", help="Also write the edited records (JSONL or .safetensors)."),
    ] = None,
    seed: SeedOpt = 0,
    batch_size: BatchOpt = 16,
    device: DeviceOpt = "auto",
    output: OutputOpt = "-",
    remask_opts: dict[str, Any] | None = None,
    sampling: dict[str, Any] | None = None,
    aliases: dict[str, Any] | None = None,
) -> None:
    """Encode, remask, revise: text in, edited text out (the pipe's result, same seeds).

    Example: sbd edit notes.txt -m runs/latest --gamma 0.1 --diff
    """
    from sbdcli import pipeline as pl
    from sbdcli.pipeline import encode as enc
    from sbdcli.pipeline.edit import edit_texts, text_diff

    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    for path in (output, records_out or "-"):
        check_output_path(path)
    if records_out == "-" and (output == "-" or diff):
        raise UserError(
            "--records - and the edited texts (or --diff) would share stdout: name a file"
        )
    cfg, note = sampler_config(pl.parse_block(block), sampling, aliases)
    check_captured(cfg, device)
    plan = _plan(dict(remask_opts or {}), infill, cfg, seed)
    ref = pl.load_model_ref(pl.default_model_path(model), device)
    print_note(note)
    fmt = _format(file, fmt, whole)
    items = enc.read_texts(file, fmt)
    with counting("edit", len(items)) as (done, on_call):
        edited = edit_texts(
            items,
            ref,
            plan,
            marker=mask_token,
            exact=not allow_normalize,
            batch_size=batch_size,
            on_call=on_call,
            on_batch=done,
        )
    done_records = [e.record for e in edited]
    text = _render(done_records, fmt, output)
    shown = text if output == "-" else None
    if diff:
        name = "stdin" if file == "-" else Path(file).name
        shown = "".join(text_diff(e.before, e.after, f"{name}:{e.record['id']}") for e in edited)
    _write_outputs(output, text, records_out, done_records, shown)

"""`sbd prepare`: build a data directory from the synthetic language or a text corpus.

Thin client of `sbdcli.data`: checks which flags go together, shows a progress bar with
throughput and ETA on stderr, and prints a summary table. No tokenization logic here.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    ProgressColumn,
    Task,
)
from rich.table import Table
from rich.text import Text

from sbdcli.artifacts.files import check_output_dir
from sbdcli.cli._app import app, console
from sbdcli.cli.progress import progress_bar
from sbdcli.cli.tables import render_table
from sbdcli.config import DEFAULT_SHARD_TOKENS
from sbdcli.errors import UserError

SYNTHETIC_FLAGS = ("num_train", "num_val", "oracle_samples", "vocab", "topics", "fanout", "alpha")
SYNTHETIC_FLAGS += ("eps",)
TEXT_FLAGS = ("tokenizer", "val_docs", "val_fraction", "max_docs", "workers", "row_format")


# --------------------------------------------------------------------------- progress
def _human(value: float, unit: str) -> str:
    if unit != "bytes":
        return f"{value:,.0f} {unit}"
    for scale, name in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if value >= scale:
            return f"{value / scale:.1f} {name}"
    return f"{value:.0f} B"


class _Amount(ProgressColumn):
    """Done / total and throughput, in the task's unit (bytes or docs)."""

    def render(self, task: Task) -> Text:
        unit = task.fields.get("unit", "docs")
        done = _human(task.completed, unit)
        total = f" / {_human(task.total, unit)}" if task.total else ""
        speed = f"  {_human(task.speed or 0.0, unit)}/s"
        return Text(done + total + speed, style="progress.data.speed")


class RichProgress:
    """`sbdcli.data.prepare.PrepareReporter` drawn with rich on stderr (only on a terminal)."""

    def __init__(self) -> None:
        self.bar = progress_bar(amount=_Amount(), spinner=True)
        self.task: Any = None

    def start(self, phase: str, total: int | None, unit: str) -> None:
        if self.task is not None:
            self.bar.update(self.task, visible=False)
        self.task = self.bar.add_task(phase, total=total, unit=unit)

    def advance(self, n: int) -> None:
        self.bar.advance(self.task, n)

    def __enter__(self) -> RichProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.stop()


# --------------------------------------------------------------------------- summary
def summary_table(manifest: dict[str, Any], out: Path | str) -> Table:
    """The short end-of-run table: rows, tokens, vocabulary, oracle floor."""
    rows = []
    for key in ("rows", "tokens", "documents"):
        values = manifest[key]
        rows.append((key, f"{values['train']:,}", f"{values['val']:,}"))
    if "dropped_tokens" in manifest:
        d = manifest["dropped_tokens"]
        rows.append(("dropped tail", f"{d['train']:,}", f"{d['val']:,}"))
    tok = manifest["tokenizer"]
    specials = f"bos {manifest['bos_id']}, eos {manifest['eos_id']}, mask {manifest['mask_id']}"
    rows.append(("tokenizer", f"{tok['kind']}, vocab {manifest['vocab_size']:,}", specials))
    fmt = manifest.get("row_format", "sbd")
    layout = "[BOS] + L-1 tokens" if fmt == "sbd" else "L raw tokens (BD3-LM OpenWebText)"
    rows.append(("seq_len", str(manifest["seq_len"]), f"rows: {fmt}, {layout}"))
    if "oracle" in manifest:
        o = manifest["oracle"]
        floor = f"{o['nll_per_token']:.4f} ± {o['nll_per_token_stderr']:.4f} nats/token"
        rows.append(("oracle floor", floor, f"{o['samples']:,} samples"))
        rows.append(("true unigram H", f"{o['unigram_entropy']:.3f} nats/row", ""))
    seconds = manifest.get("seconds") or 0.0
    total = manifest["tokens"]["train"] + manifest["tokens"]["val"]
    rate = f"{total / seconds:,.0f} tokens/s" if seconds > 0 else ""
    rows.append(("time", f"{seconds:.1f} s", rate))
    return render_table(f"data written to {out}", ("", "train", "val"), rows)


# --------------------------------------------------------------------------- the command
def command_line(ctx: typer.Context) -> str:
    """The command as the user gave it (explicit flags only), for the manifest."""
    parts = ["sbd", *ctx.command_path.split()[1:]]
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name or "")
        if source is None or source.name not in ("COMMANDLINE", "ENVIRONMENT"):
            continue
        flag, value = param.opts[0], ctx.params[param.name or ""]
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, bool):
                parts += [flag] if v else (getattr(param, "secondary_opts", None) or [])[:1]
            else:
                parts += [flag, str(v)]
    return shlex.join(parts)


def _explicit(ctx: typer.Context, names: tuple[str, ...]) -> list[str]:
    given = []
    for name in names:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name == "COMMANDLINE":
            given.append("--" + name.replace("_", "-"))
    return given


def _choose_source(ctx: typer.Context, p: dict[str, Any]) -> str:
    """Which source the flags name; reject flags that belong to another kind of source."""
    named = [k for k in ("synthetic", "text", "jsonl", "dataset") if p[k]]
    if len(named) > 1:
        raise UserError("choose one source: " + ", ".join("--" + k for k in named))
    kind = named[0] if named else "synthetic"
    if kind == "synthetic" and p["synthetic"] not in (None, "topic-markov"):
        raise UserError(f"unknown synthetic language '{p['synthetic']}' (known: topic-markov)")
    wrong = _explicit(ctx, TEXT_FLAGS if kind == "synthetic" else SYNTHETIC_FLAGS)
    if kind != "text":
        wrong += _explicit(ctx, ("doc_sep",))
    if kind not in ("jsonl", "dataset"):
        wrong += _explicit(ctx, ("field",))
    if kind != "dataset":
        wrong += _explicit(ctx, ("name", "split", "streaming"))
    if wrong:
        raise UserError(f"{', '.join(wrong)} does not apply to --{kind}")
    if p["val_docs"] is not None and p["val_fraction"] is not None:
        raise UserError("give --val-docs or --val-fraction, not both")
    return kind


def _open_source(kind: str, p: dict[str, Any]) -> Any:
    from sbdcli.data.sources import HFDataset, JsonlFiles, TextFiles

    if kind == "text":
        return TextFiles(p["text"], p["doc_sep"])
    if kind == "jsonl":
        return JsonlFiles(p["jsonl"], p["field"])
    return HFDataset(p["dataset"], p["name"], p["split"], p["field"], p["streaming"])


@app.command()
def prepare(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", help="Data directory to write.")] = Path("data"),
    synthetic: Annotated[
        str | None,
        typer.Option("--synthetic", help="Embedded language: topic-markov (the default source)."),
    ] = None,
    text: Annotated[
        list[str] | None,
        typer.Option(
            "--text",
            help="Text file, folder or glob; repeat the flag for more. Split by --doc-sep.",
        ),
    ] = None,
    jsonl: Annotated[
        list[str] | None,
        typer.Option("--jsonl", help="JSONL file (one document per line); repeat for more."),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset",
            help="datasets.load_dataset name (hub, e.g. Skylion007/openwebtext), local folder, "
            "or parquet/json/arrow file.",
        ),
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="Dataset configuration name.")] = None,
    split: Annotated[str, typer.Option("--split", help="Dataset split to read.")] = "train",
    field: Annotated[
        str, typer.Option("--field", help="Field holding the text (JSONL and datasets).")
    ] = "text",
    streaming: Annotated[
        bool, typer.Option("--streaming", help="Stream the dataset instead of caching it.")
    ] = False,
    doc_sep: Annotated[
        str | None,
        typer.Option(
            "--doc-sep",
            help="Document separator in --text files, e.g. '<|endoftext|>'.",
            show_default="a blank line",
        ),
    ] = None,
    tokenizer: Annotated[
        str,
        typer.Option(
            "--tokenizer", help="bytes, PATH/tokenizer.json (e.g. GPT-2's), or bpe:N (train N)."
        ),
    ] = "bytes",
    seq_len: Annotated[
        int | None,
        typer.Option("--seq-len", help="Row length L.", show_default="1024 text, 128 synthetic"),
    ] = None,
    row_format: Annotated[
        str,
        typer.Option(
            "--row-format",
            help="Text rows: 'sbd' = [BOS] + L-1 stream tokens; 'bd3lm' = L raw stream "
            "tokens, as BD3-LM packs OpenWebText.",
        ),
    ] = "sbd",
    val_docs: Annotated[
        int | None,
        typer.Option("--val-docs", help="Validation = the last N documents (OpenWebText: 1e5)."),
    ] = None,
    val_fraction: Annotated[
        float | None,
        typer.Option(
            "--val-fraction", help="Validation = every (1/F)-th document.", show_default="0.05"
        ),
    ] = None,
    max_docs: Annotated[
        int | None, typer.Option("--max-docs", help="Read only the first N documents.")
    ] = None,
    num_train: Annotated[int, typer.Option("--num-train", help="Synthetic training rows.")] = 16384,
    num_val: Annotated[int, typer.Option("--num-val", help="Synthetic validation rows.")] = 1024,
    oracle_samples: Annotated[
        int, typer.Option("--oracle-samples", help="Fresh true rows for the oracle NLL floor.")
    ] = 4096,
    vocab: Annotated[int, typer.Option("--vocab", help="Synthetic content tokens V.")] = 64,
    topics: Annotated[int, typer.Option("--topics", help="Synthetic topics K.")] = 8,
    fanout: Annotated[
        int, typer.Option("--fanout", help="Synthetic successors per distribution row.")
    ] = 6,
    alpha: Annotated[
        float, typer.Option("--alpha", help="Synthetic Dirichlet concentration.")
    ] = 0.3,
    eps: Annotated[float, typer.Option("--eps", help="Synthetic uniform smoothing mass.")] = 0.02,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (synthetic language).")] = 0,
    shard_tokens: Annotated[
        int, typer.Option("--shard-tokens", help="Tokens per output shard (bounds memory).")
    ] = DEFAULT_SHARD_TOKENS,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            help="Tokenizer processes; 1 = this process with the tokenizer's own threads "
            "(fastest on few cores), more for many-core machines.",
        ),
    ] = 1,
) -> None:
    """Build a data directory: token rows (BOS-first unless --row-format bd3lm), a manifest
    and a tokenizer.

    Example: sbd prepare --synthetic topic-markov --out data
    """
    from sbdcli.data.prepare import check_row_format

    params = dict(ctx.params)
    check_row_format(params["row_format"])
    check_output_dir(out)
    kind = _choose_source(ctx, params)
    command = command_line(ctx)
    if kind == "synthetic":
        manifest = _prepare_synthetic(out, params, command)
    else:
        manifest = _prepare_text(out, kind, params, command)
    console.print(summary_table(manifest, out))
    if manifest["rows"]["val"] == 0 and kind != "synthetic":
        console.print("[yellow]note:[/] no validation rows (raise --val-docs/--val-fraction)")


def _prepare_synthetic(out: Path, p: dict[str, Any], command: str) -> dict[str, Any]:
    from sbdcli.data import prepare_synthetic
    from sbdcli.data.synthetic import TopicMarkovSpec

    spec = TopicMarkovSpec(p["vocab"], p["topics"], p["fanout"], p["alpha"], p["eps"])
    with console.status("sampling the topic-markov language"):
        return prepare_synthetic(
            out,
            spec,
            128 if p["seq_len"] is None else p["seq_len"],
            num_train=p["num_train"],
            num_val=p["num_val"],
            seed=p["seed"],
            floor_samples=p["oracle_samples"],
            shard_tokens=p["shard_tokens"],
            command=command,
        )


def _prepare_text(out: Path, kind: str, p: dict[str, Any], command: str) -> dict[str, Any]:
    from sbdcli.data import prepare_text

    source = _open_source(kind, p)
    val_fraction = p["val_fraction"]
    if p["val_docs"] is None and val_fraction is None:
        val_fraction = 0.05
    with RichProgress() as progress:
        return prepare_text(
            out,
            source,
            p["tokenizer"],
            1024 if p["seq_len"] is None else p["seq_len"],
            val_docs=p["val_docs"],
            val_fraction=val_fraction,
            max_docs=p["max_docs"],
            seed=p["seed"],
            shard_tokens=p["shard_tokens"],
            workers=p["workers"],
            command=command,
            progress=progress,
            row_format=p["row_format"],
        )

"""The typer application object, the stderr console and option types shared by commands.

Command modules (`prepare`, `train`, ...) register themselves on `app`. This is CLI
plumbing only: no math, no file formats.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from sbdcli.artifacts.printable import visible

app = typer.Typer(
    name="sbd",
    help="Structural Block Diffusion: draft with small blocks, remask the least confident "
    "tokens, revise with a global block.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

console = Console(stderr=True)
"""Everything human-facing goes to stderr; stdout carries only data."""


def term(text: object) -> str:
    """The one escaping function for text from users or data (paths, ids, messages) put
    into a rich markup string: control characters shown visibly, markup escaped."""
    return escape(visible(str(text)))


InputOpt = Annotated[
    str, typer.Option("--input", "-i", help="Records to read: JSONL, .safetensors, or - (stdin).")
]
OutputOpt = Annotated[
    str,
    typer.Option("--output", "-o", help="Where to write: JSONL path, .safetensors, or - (stdout)."),
]

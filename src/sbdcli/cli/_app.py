"""The typer application object, the stderr console and the escaping of printed text.

Command modules (`prepare`, `train`, ...) register themselves on `app`. `make_console` makes
every console sbd writes to a terminal with: whatever is printed through it, a control
character that came with the text (an ESC in a file name, a record id or a decoded token)
reaches the terminal as a visible escape, while rich's own colours and cursor moves pass.
`term` escapes text from users or data for a markup string; `emit` writes text that is
data to stdout (visibly on a terminal, exactly into a pipe). This is CLI plumbing only: no
math, no file formats.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import typer
from rich.console import Console, ConsoleOptions, RenderableType, RenderHook
from rich.markup import escape
from rich.segment import Segment

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


class _Visible:
    """A renderable rendered as `inner` is, with every control character of its text (not
    rich's own control segments) written visibly (`visible`)."""

    def __init__(self, inner: RenderableType) -> None:
        self.inner = inner

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Segment]:
        for seg in console.render(self.inner, options):
            yield seg if seg.control else Segment(visible(seg.text, lines=True), seg.style)


class _VisibleHook(RenderHook):
    def process_renderables(self, renderables: list[Any]) -> list[Any]:
        return [_Visible(r) for r in renderables]


def make_console(**kwargs: Any) -> Console:
    """A rich console that shows control characters from text visibly (module docstring)."""
    made = Console(**kwargs)
    made.push_render_hook(_VisibleHook())
    return made


console = make_console(stderr=True)
"""Everything human-facing goes to stderr; stdout carries only data."""


def emit(text: str) -> None:
    """Text that is data (edited texts, a diff, a markdown table) to stdout: exactly as it is
    into a pipe or a file; on a terminal, with control characters shown visibly (newlines
    and tabs kept), as every other terminal output."""
    import sys

    sys.stdout.write(visible(text, lines=True) if sys.stdout.isatty() else text)
    sys.stdout.flush()


def term(text: object) -> str:
    """The one escaping function for text from users or data (paths, ids, messages) put
    into a rich markup string: control characters shown visibly, markup escaped."""
    return escape(visible(str(text)))

"""`sbd show [FILE|-]`: sample records rendered for a person in the terminal.

    sbd draft | sbd remask --gamma 0.25 | tee m.jsonl | sbd revise | sbd show

Every token coloured by its snapshot confidence (a legend gives the scale), masked
positions underlined, and where a revise changed a token the draft's token struck through
before the new one. Without colour (--no-color, or stdout not a terminal) the same
positions are marked with brackets; --plain writes the decoded samples alone, one per
line. Control characters in ids and decoded tokens are shown as escapes (`\x1b`), never
sent to the terminal. On a 16-colour terminal the scale uses the five standard colours
that keep its order (red, yellow, bright yellow, bright green, green). The views come from
`sbdcli.evaluate.views` (the HTML report shows the same); this module only renders them
with rich.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from sbdcli.artifacts.printable import visible
from sbdcli.cli._app import app, make_console
from sbdcli.errors import UserError

PLAIN_LEGEND = (
    "marks: [x] masked (to be revised) · {old->new} revised, changed · {x} revised, kept · "
    "| end of the prompt"
)


STANDARD_COLOURS = ("red", "yellow", "bright_yellow", "bright_green", "green")
"""The confidence scale on 16-colour terminals, low to high. Rich would map the exact
colours to red, bright red, bright yellow, bright green, green: a bright red above the
reddest bin reads as more alarming, not more confident. These keep the hue order."""


def scale(color_system: str | None) -> tuple[str, ...]:
    """The confidence colours for a console's colour system (see STANDARD_COLOURS)."""
    from sbdcli.evaluate.views import CONFIDENCE_COLOURS

    return STANDARD_COLOURS if color_system in ("standard", "windows") else CONFIDENCE_COLOURS


def _swatches(colours: tuple[str, ...]) -> Text:
    from sbdcli.evaluate.views import bin_labels

    legend = Text("confidence ")
    for colour, label in zip(colours, bin_labels(), strict=True):
        legend.append(f" {label} ", style=f"black on {colour}")
    legend.append("   ")
    legend.append("masked", style="underline bold")
    legend.append(" · ")
    legend.append("draft", style="strike dim")
    legend.append("new", style="black on #dddddd")
    legend.append(" revised, changed · ")
    legend.append("kept", style="italic")
    legend.append(" revised, kept")
    return legend


def _style(tok: Any, colours: tuple[str, ...]) -> str:
    from sbdcli.evaluate.views import confidence_bin

    if tok.prompt:
        return "bold"
    b = confidence_bin(tok.confidence)
    style = "reverse" if b is None else f"black on {colours[b]}"
    if tok.masked:
        style += " underline bold"
    if tok.revised and not tok.changed:
        style += " italic"
    return style


def _header(view: Any) -> str:
    return visible(f"{view.id}  " + " · ".join(view.summary()))


def _coloured(view: Any, colours: tuple[str, ...]) -> Text:
    text, end, sep = Text(), _prompt_end(view), view.separator
    for i, tok in enumerate(view.tokens):
        if i:
            text.append(f"{sep}|{sep}" if i == end else sep)
        if tok.changed:
            text.append(visible(tok.draft_piece or "", lines=True), style="strike dim")
        text.append(visible(tok.piece, lines=True), style=_style(tok, colours))
    return text


def _prompt_end(view: Any) -> int:
    """Index of the first generated token when the record has a prompt beyond BOS, else -1."""
    n = sum(t.prompt for t in view.tokens)
    return n if 1 < n < len(view.tokens) else -1


def _plain_piece(tok: Any) -> str:
    if tok.changed:
        return f"{{{tok.draft_piece}->{tok.piece}}}"
    if tok.revised:
        return f"{{{tok.piece}}}"
    if tok.masked:
        return f"[{tok.piece}]"
    return tok.piece


def plain_text(view: Any) -> str:
    """The record's text with its marked positions in brackets (no colour)."""
    out = []
    end = _prompt_end(view)
    for i, tok in enumerate(view.tokens):
        if i:
            out.append(f"{view.separator}|{view.separator}" if i == end else view.separator)
        out.append(_plain_piece(tok))
    return visible("".join(out), lines=True)


def sample_text(view: Any, pieces: Any) -> str:
    """The sample alone, as --plain writes it: decoded without BOS, no marks; ids separated
    by spaces without a tokenizer; newlines written as \\n so that it stays one line."""
    ids = [t.id for t in view.tokens]
    if ids and pieces.codec is not None and ids[0] == pieces.codec.bos_id:
        ids = ids[1:]
    text = " ".join(map(str, ids)) if pieces.codec is None else pieces.codec.decode(ids)
    return text.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n")


def _records(path: str) -> Iterator[Any]:
    from sbdcli.artifacts import read_records

    if path == "-" and sys.stdin.isatty():
        raise UserError("no input: pipe records in (... | sbd show) or pass FILE")
    empty = True
    for rec in read_records(path, validate=False):
        empty = False
        yield rec
    if empty:
        raise UserError(f"{'stdin' if path == '-' else path}: no records (empty input)")


def _id_set(ids: list[str] | None) -> set[str] | None:
    if not ids:
        return None
    return {part.strip() for item in ids for part in item.split(",") if part.strip()}


@app.command()
def show(
    file: Annotated[str, typer.Argument(help="Records: JSONL, .safetensors, or - (stdin).")] = "-",
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Run whose tokenizer decodes the ids."),
    ] = None,
    data: Annotated[
        str | None, typer.Option("--data", help="Data directory whose tokenizer decodes the ids.")
    ] = None,
    stage: Annotated[
        int | None,
        typer.Option("--stage", help="Show the records as after this stage (1 = the draft)."),
    ] = None,
    ids: Annotated[
        list[str] | None,
        typer.Option("--ids", help="Only these record ids (comma-separated or repeated)."),
    ] = None,
    n: Annotated[int | None, typer.Option("-n", help="Show at most N records.")] = None,
    tokens: Annotated[
        bool, typer.Option("--tokens", help="Show token ids instead of text.")
    ] = False,
    color: Annotated[
        bool | None,
        typer.Option(
            "--color/--no-color", help="Colour.", show_default="when stdout is a terminal"
        ),
    ] = None,
    plain: Annotated[
        bool,
        typer.Option(
            "--plain", help="Only the decoded samples, one per line: no legend, header or marks."
        ),
    ] = False,
) -> None:
    """Show records: text coloured by snapshot confidence, masked and revised tokens marked.

    Example: sbd draft -n 4 | sbd remask --gamma 0.25 | sbd revise | sbd show
    """
    from sbdcli.evaluate import views as vw

    if n is not None and n < 1:
        raise UserError(f"-n must be >= 1, got {n}")
    if plain and color:
        raise UserError("--plain writes text without colour: drop --color")
    wanted = _id_set(ids)
    colour = not plain and (sys.stdout.isatty() if color is None else color)
    system = "truecolor" if color else "auto"  # --color: the legend's exact colours
    out = make_console(
        file=sys.stdout,
        force_terminal=colour,
        no_color=not colour,
        color_system=system,
        highlight=False,
    )
    pieces: Any = None
    shown = 0
    for index, rec in enumerate(_records(file)):
        vw.check_viewable(rec, index)
        if pieces is None:
            codec, source = vw.find_codec(model, data, [rec])
            pieces = vw.Pieces(codec, ids=tokens)
        if pieces.codec is not None:
            vw.check_codec(rec, index, pieces.codec, source)
        if wanted is not None and rec.get("id") not in wanted:
            continue
        view = vw.record_view(rec, index, pieces, stage)  # refused before anything is printed
        if plain:
            sys.stdout.write(visible(sample_text(view, pieces)) + "\n")
        else:
            if shown == 0:
                _legend(out, colour, pieces.codec is None and not tokens)
            _print_view(out, colour, view)
        shown += 1
        if n is not None and shown >= n:
            break
    if shown == 0 and wanted:
        raise UserError(f"no record with id {', '.join(sorted(wanted))}")


def _legend(out: Console, colour: bool, no_tokenizer: bool) -> None:
    if no_tokenizer:
        sys.stderr.write("sbd: note: no tokenizer found (pass -m RUN or --data DIR): ids shown\n")
    if colour:
        out.print(_swatches(scale(out.color_system)))
    else:
        out.print(PLAIN_LEGEND, markup=False, soft_wrap=True)


def _print_view(out: Console, colour: bool, view: Any) -> None:
    out.print()
    if colour:
        out.print(Text(_header(view), style="bold"))
        out.print(_coloured(view, scale(out.color_system)))
    else:
        out.print(_header(view), markup=False, soft_wrap=True)
        out.print(plain_text(view), markup=False, soft_wrap=True)
    for note in view.notes:
        out.print(f"note: {visible(note)}", markup=False, style="dim", soft_wrap=True)

"""`sbd export --format bd3lm RUN OUT`: a thin command over `sbdcli.model.checkpoint.export_bd3lm`.

Writes the BD3-LM Hugging Face layout (config.json + model.safetensors with `backbone.*`
keys) so other BD3-LM tooling can load an sbd run. No math and no file formats here.
"""

from __future__ import annotations

from typing import Annotated

import typer

from sbdcli.cli._app import app, console, term
from sbdcli.errors import UserError

FORMATS = ("bd3lm",)


@app.command("export")
def export(
    run: Annotated[str, typer.Argument(help="sbd run directory or model.safetensors to export.")],
    out: Annotated[str, typer.Argument(help="Output directory to create.")],
    format: Annotated[
        str, typer.Option("--format", "-f", help="Target layout (only 'bd3lm').")
    ] = "bd3lm",
    block_size: Annotated[
        int | None,
        typer.Option(
            "--block-size",
            help="Block size written to config.json.",
            show_default="the run's smallest block size",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace OUT if it already exists and is not empty.")
    ] = False,
) -> None:
    """Export a trained model to the BD3-LM Hugging Face checkpoint layout.

    Example: sbd export runs/latest bd3lm-export
    """
    if format not in FORMATS:
        raise UserError(f"--format {format}: unknown format (choose from {', '.join(FORMATS)})")
    from sbdcli.artifacts import read_json
    from sbdcli.model.checkpoint import export_bd3lm, load_model

    model = load_model(run)
    path = export_bd3lm(model, out, block_size=block_size, overwrite=force)
    cfg = model.config
    written = read_json(path / "config.json", "exported config")
    console.print(
        f"wrote {term(path)} (BD3-LM layout: {cfg.n_layers} layers, d {cfg.d_model}, "
        f"vocab {cfg.vocab_size}, block size {written['block_size']})",
        highlight=False,
    )

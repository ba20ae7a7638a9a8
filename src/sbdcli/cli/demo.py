"""`sbd demo`: the end-to-end job on the embedded topic-markov language.

For now it prepares the synthetic default into RUN/data (reused when already there) and
prints its summary; training, drafting and revision join it as those commands land.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from sbdcli.cli._app import app, console

QUICK = {"num_train": 2048, "num_val": 256, "floor_samples": 1024}
FULL = {"num_train": 16384, "num_val": 1024, "floor_samples": 4096}


def demo_data(data_dir: Path, seed: int, fresh: bool, quick: bool) -> dict[str, Any]:
    """Prepare (or reuse) the synthetic default data for the demo; return its manifest."""
    from sbdcli.data import prepare_synthetic, read_manifest
    from sbdcli.errors import UserError

    sizes = QUICK if quick else FULL
    if not fresh and (data_dir / "manifest.json").is_file():
        try:
            manifest = read_manifest(data_dir)
        except UserError:
            manifest = {}
        same = (
            manifest.get("source", {}).get("kind") == "synthetic"
            and manifest.get("seed") == seed
            and manifest.get("rows", {}).get("train") == sizes["num_train"]
        )
        if same:
            console.print(f"reusing {data_dir} (pass --fresh to rebuild)")
            return manifest
    command = f"sbd prepare --out {data_dir} --seed {seed} --num-train {sizes['num_train']}"
    with console.status("preparing the topic-markov language"):
        return prepare_synthetic(data_dir, seed=seed, command=command, **sizes)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Demo run directory.")] = Path("runs/demo"),
    seed: Annotated[int, typer.Option("--seed", help="Seed for data (and later training).")] = 0,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="Rebuild everything instead of reusing it.")
    ] = False,
    quick: Annotated[
        bool, typer.Option("--quick", help="A smaller, faster demo (for tests and CI).")
    ] = False,
) -> None:
    """Run the demo on the embedded topic-markov language (currently: prepare its data)."""
    from sbdcli.cli.prepare import summary_table

    data_dir = out / "data"
    manifest = demo_data(data_dir, seed, fresh, quick)
    console.print(summary_table(manifest, data_dir))

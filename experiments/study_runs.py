"""The study's runs (experiments/study.py): its datasets, data directories, trained models.

What it is: the `prepare` and `train` steps of the study (one data directory per dataset,
one `tiny` model per kind and training seed under --out/<dataset>/models/<kind>-s<seed>),
the paths every other step finds them under, and a reader of the trained runs (steps saved,
last validation) through the library's run-directory layout (`RunDir`).
What it is not: sampling, judging or timing the grid (experiments/study_grid.py), or any table of
the report (experiments/study_report.py).
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.timer import timed

from sbdcli.artifacts.rundir import RunDir
from sbdcli.config import train_config
from sbdcli.data import prepare_synthetic, prepare_text, read_manifest
from sbdcli.data.sources import TextFiles
from sbdcli.train import setup

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
MODELS = {"mix": 0.1, "single": 0.0}
"""Model kind -> mix-scale lambda (probability of a whole-sequence block step)."""
KINDS = {**MODELS, "mix25": 0.25, "mix50": 0.5}
"""Every kind `train` makes: the study's two, and the lambda sweep of experiments/frontier.py."""
DRAFT_BLOCK = 4


@dataclass(frozen=True)
class Dataset:
    """One dataset of the study: where its data comes from and how samples are judged."""

    name: str
    title: str
    seq_len: int
    judge: str  # "oracle" or "model" (an sbd block-1 run trained on the same data)


DATASETS = {
    "synthetic": Dataset("synthetic", "synthetic `topic-markov` (L = 128)", 128, "oracle"),
    "shakespeare": Dataset("shakespeare", "tinyshakespeare, bytes (L = 256)", 256, "model"),
}


# --------------------------------------------------------------------------- paths
def ds_dir(args: argparse.Namespace) -> Path:
    return args.out / args.dataset


def model_dir(args: argparse.Namespace, kind: str, seed: int) -> Path:
    return ds_dir(args) / "models" / f"{kind}-s{seed}"


# --------------------------------------------------------------------------- steps
def cmd_prepare(args: argparse.Namespace) -> None:
    data = ds_dir(args) / "data"
    if (data / "manifest.json").is_file():
        print(f"reusing {data}", file=sys.stderr)
        return
    data.parent.mkdir(parents=True, exist_ok=True)
    command = " ".join(map(shlex.quote, sys.argv))
    if args.dataset == "synthetic":
        sizes = {} if args.rows is None else {"num_train": args.rows, "num_val": args.rows // 8}
        prepare_synthetic(data, seed=0, command=command, **sizes)
    else:
        source = TextFiles([str(args.text)])
        prepare_text(data, source, "bytes", DATASETS[args.dataset].seq_len, command=command)


def _block_settings(kind: str, length: int) -> dict[str, Any]:
    """The block-size fields of the training config of one model kind."""
    if kind == "judge":  # autoregressive: block 1, every token masked (t = 1)
        return {"block_small": 1, "block_large": 1, "mix_lambda": 0.0, "eps_min": 1.0}
    return {"block_small": DRAFT_BLOCK, "block_large": length, "mix_lambda": KINDS[kind]}


def cmd_train(args: argparse.Namespace) -> None:
    data = ds_dir(args) / "data"
    length = int(read_manifest(data)["seq_len"])
    run = model_dir(args, args.model, args.seed)
    if RunDir(run).model_path.is_file() and RunDir(run).finished_steps() >= args.steps:
        print(f"reusing {run}", file=sys.stderr)
        return
    cfg = train_config(
        "tiny",
        steps=args.steps,
        seed=args.seed,
        val_every=max(args.steps // 4, 1),
        save_every=min(500, args.steps),
        device=args.device,
        **_block_settings(args.model, length),
    )
    resume = run.exists() and RunDir(run).finished_steps() > 0
    took, _ = timed(lambda: _fit(setup(cfg, data, run, resume=resume, runs_root=run.parent), run))
    print(f"trained {run} in {took:.0f} s", file=sys.stderr)


def _fit(trainer: Any, run: Path) -> None:
    """Train to the end, or to a deadline (SIGTERM: the trainer saved its last step)."""
    try:
        trainer.fit(None)
    except KeyboardInterrupt:
        print(f"stopped {run} at step {RunDir(run).finished_steps()}", file=sys.stderr)


# --------------------------------------------------------------------------- reading runs
@dataclass(frozen=True)
class TrainedModel:
    """One trained run of the study: its kind and seed, steps saved, last validation line."""

    kind: str
    seed: str
    steps: int
    last_val: dict[str, Any]


def trained_models(args: argparse.Namespace) -> list[TrainedModel]:
    """Every run under --out/<dataset>/models with a validation line, by directory name."""
    root = ds_dir(args) / "models"
    out = []
    for path in sorted(p for p in root.iterdir() if re.fullmatch(r"\w+-s\d+", p.name)):
        run = RunDir(path)
        vals = [m for m in run.metrics() if "val_nelbo" in m]
        if not vals:
            continue
        kind, seed = path.name.rsplit("-s", 1)
        out.append(TrainedModel(kind, seed, run.finished_steps(), vals[-1]))
    return out

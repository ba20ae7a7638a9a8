"""The small-scale study of the paper's claims (docs/results.md), on two datasets.

What it is: a reproducible driver over library calls only (prepare, train, draft, remask,
revise, Gen PPL evaluation) that measures items a-f of the study on the synthetic
`topic-markov` language (L = 128, judged by its exact oracle) and on tinyshakespeare
(bytes, L = 256, judged by an sbd model trained with block size 1 on the same data), with
three trained models per setting (training seeds 0, 1, 2; each model samples with its own
seed), and writes one section of docs/results.md per dataset between
`<!-- results:study-<dataset> -->` markers, plus docs/results-frontier-<dataset>.png.
What it is not: a test, or a source of any hard-coded number (every number in the doc comes
from the evaluation of the sample files this script writes). This file only parses the
command line; the steps live beside it:
    experiments/study_runs.py    datasets, `prepare` and `train`, reading the trained runs
    experiments/study_grid.py    the settings, `sample`, `extra`, `eval` (judging) and `timing`
    experiments/study_stats.py   aggregates over trained models, paired comparisons, frontiers
    experiments/study_report.py  `report`: the tables, verdicts and plot written into the doc

Steps (each reuses finished artifacts under --out/<dataset>):
    python -m experiments.study prepare --dataset D
    python -m experiments.study train --dataset D --model mix|single|judge --seed S --steps N
    python -m experiments.study sample --dataset D --seed S --n 512
    python -m experiments.study eval --dataset D
    python -m experiments.study timing --dataset D --device cpu|cuda
    python -m experiments.study report --dataset D
`experiments/study_run.sh` runs prepare..eval (and the GPU timing) for both datasets in parallel.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch

from experiments.study_grid import cmd_eval, cmd_extra, cmd_sample, cmd_timing
from experiments.study_report import cmd_report
from experiments.study_runs import DATASETS, KINDS, ROOT, SHAKESPEARE, cmd_prepare, cmd_train

STEPS: dict[str, Callable[[argparse.Namespace], None]] = {
    "prepare": cmd_prepare,
    "train": cmd_train,
    "sample": cmd_sample,
    "eval": cmd_eval,
    "extra": cmd_extra,
    "timing": cmd_timing,
    "report": cmd_report,
}


def _ints(text: str) -> tuple[int, ...]:
    """A comma-separated list of integers."""
    return tuple(int(x) for x in text.split(","))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=tuple(STEPS))
    parser.add_argument("--dataset", choices=tuple(DATASETS), default="synthetic")
    parser.add_argument("--out", type=Path, default=Path("runs/study"), help="artifact root")
    parser.add_argument("--text", type=Path, default=SHAKESPEARE, help="tinyshakespeare.txt")
    parser.add_argument(
        "--rows", type=int, default=None, help="prepare: synthetic training rows (16384)"
    )
    parser.add_argument("--model", choices=(*KINDS, "judge"), default="mix")
    parser.add_argument("--seed", type=int, default=0, help="training and sampling seed")
    parser.add_argument("--steps", type=int, default=4000, help="train: optimizer steps")
    parser.add_argument("--n", type=int, default=512, help="samples per setting and model")
    parser.add_argument("--batch", type=int, default=64, help="sample: rows per call")
    parser.add_argument(
        "--seeds", type=_ints, default=(0, 1, 2), help="eval: model seeds, comma separated"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--time-batch", type=int, default=64, help="timing: batch")
    parser.add_argument(
        "--draft-steps",
        type=_ints,
        default=None,
        help="timing: only these drafts (steps per block), added to the existing timing",
    )
    parser.add_argument(
        "--notes",
        type=Path,
        default=None,
        help="report: text to append (experiments/study_notes/D.md)",
    )
    parser.add_argument("--history", default="", help="report: how the run went")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "results.md")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    STEPS[args.step](args)


if __name__ == "__main__":
    main()

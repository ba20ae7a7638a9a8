"""Error correction with `sbd edit` on the synthetic language, judged by the oracle.

What it is: a driver that takes N true samples of the topic-markov language (drawn from the
oracle), replaces a fraction rho of each sample's positions by uniformly drawn other words,
writes the corrupted texts, runs the real `sbd edit` command on them (masked, posthoc and
random scorers at gamma = rho and 2 rho, one full bidirectional revise block), and reports
from the records `sbd edit --records` writes: the oracle NLL per token of the true, the
corrupted and the edited texts, the fraction of the corruption's excess NLL the edit
recovered, the recall (corrupted positions selected) and precision (selected positions that
were corrupted) of the selection, and the fraction of corrupted positions restored to the
true word. It writes the section `<!-- results:edit-correction -->` of docs/results.md.
What it is not: training (the commands below train the model it reads) or a speed benchmark.

    sbd prepare --synthetic topic-markov --out OUT/data
    sbd train --data OUT/data --out OUT/run --mix 4,128 --lambda 0.5 --steps 1000
    python -m experiments.edit_correction run --run OUT/run --out OUT/edit --n 512
    python -m experiments.edit_correction report --out OUT/edit
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from bench.timer import timed

from experiments.study_report import write_section
from sbdcli.data.codec import SyntheticCodec
from sbdcli.data.synthetic import load_oracle
from sbdcli.evaluate import markdown_grid

ROOT = Path(__file__).resolve().parents[1]

RHOS = (0.05, 0.1, 0.2)
SCORERS = ("masked", "posthoc", "random")
SECTION = "edit-correction"


def corrupt(
    true: torch.Tensor, rho: float, vocab: int, seed: int
) -> tuple[torch.Tensor, list[list[int]]]:
    """Replace round(rho * (L-1)) positions in 1..L-1 of each row by another uniform word."""
    gen = torch.Generator().manual_seed(seed)
    out = true.clone()
    n, length = true.shape
    k = round(rho * (length - 1))
    where: list[list[int]] = []
    for i in range(n):
        pos = (torch.randperm(length - 1, generator=gen)[:k] + 1).sort().values
        shift = torch.randint(1, vocab, (k,), generator=gen)
        out[i, pos] = (true[i, pos] + shift) % vocab  # never the true word
        where.append(pos.tolist())
    return out, where


def nll_per_token(oracle: Any, tokens: torch.Tensor) -> float:
    """Oracle NLL per generated token (positions 1..L-1), averaged over all rows' tokens."""
    return float(-oracle.log_likelihood(tokens).sum() / (tokens.numel() - tokens.shape[0]))


def run_edit(
    texts: Path, run: Path, scorer: str, gamma: float, out: Path
) -> tuple[list[dict], float]:
    """`sbd edit` on the texts; its records and its wall-clock seconds."""
    records = out / f"{texts.stem}-{scorer}-g{gamma:g}.jsonl"
    cmd = [sys.executable, "-m", "sbdcli", "edit", str(texts), "-m", str(run), "--gamma",
           f"{gamma:g}", "--strategy", scorer, "--seed", "0", "--batch-size", "128",
           "--device", "cpu", "--records", str(records), "-o", os.devnull]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    seconds, _ = timed(lambda: subprocess.run(cmd, check=True, env=env))
    with records.open() as handle:
        return [json.loads(line) for line in handle], seconds


def measure(args: argparse.Namespace) -> None:
    run, out = Path(args.run), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    oracle = load_oracle(run / "data" / "oracle.safetensors")
    codec = SyntheticCodec(oracle.vocab)
    length = json.loads((run / "data" / "manifest.json").read_text())["seq_len"]
    true = oracle.sample(args.n, length, torch.Generator().manual_seed(args.seed))
    rows = []
    for rho in args.rhos:
        bad, where = corrupt(true, rho, oracle.vocab, args.seed + 1)
        texts = out / f"corrupted-rho{rho:g}.txt"
        texts.write_text("".join(codec.decode(r[1:].tolist()) + "\n" for r in bad))
        base = {"rho": rho, "nll_true": nll_per_token(oracle, true),
                "nll_corrupted": nll_per_token(oracle, bad)}  # fmt: skip
        for scorer in args.scorers:
            for gamma in (rho, 2 * rho):
                recs, seconds = run_edit(texts, run, scorer, gamma, out)
                rows.append({**base, **score(recs, true, where, oracle), "scorer": scorer,
                             "gamma": gamma, "seconds": seconds})  # fmt: skip
                print(json.dumps(rows[-1]), file=sys.stderr)
                # after every row: an interrupted run keeps (and reports) what it measured
                (out / "edit-correction.json").write_text(json.dumps({"n": args.n, "rows": rows}))


def score(recs: list[dict], true: torch.Tensor, where: list[list[int]], oracle: Any) -> dict:
    """Selection recall/precision, restored words and the edited NLL of one `sbd edit` run."""
    by_id = {r["id"]: r for r in recs}
    edited = torch.tensor([by_id[f"t{i + 1}"]["tokens"] for i in range(len(true))])
    hit = chosen = restored = 0
    for i, pos in enumerate(where):
        sel = set(by_id[f"t{i + 1}"]["stages"][-1]["positions"])
        hit += len(sel & set(pos))
        chosen += len(sel)
        restored += sum(int(edited[i, p] == true[i, p]) for p in pos)
    total = sum(len(p) for p in where)
    return {"nll_edited": nll_per_token(oracle, edited), "recall": hit / total,
            "precision": hit / max(chosen, 1), "restored": restored / total}  # fmt: skip


HEADER = ("rho", "scorer", "gamma", "oracle NLL true", "corrupted", "edited",
          "excess recovered", "recall", "precision", "restored", "seconds")  # fmt: skip


def _cells(r: dict[str, Any]) -> list[str]:
    """One table row: the NLLs, the share of the corruption's excess NLL the edit removed."""
    recovered = (r["nll_corrupted"] - r["nll_edited"]) / (r["nll_corrupted"] - r["nll_true"])
    return [f"{r['rho']:g}", r["scorer"], f"{r['gamma']:g}", f"{r['nll_true']:.3f}",
            f"{r['nll_corrupted']:.3f}", f"{r['nll_edited']:.3f}", f"{recovered:.0%}",
            f"{r['recall']:.2f}", f"{r['precision']:.2f}", f"{r['restored']:.2f}",
            f"{r['seconds']:.0f}"]  # fmt: skip


def report(args: argparse.Namespace) -> None:
    data = json.loads((Path(args.out) / "edit-correction.json").read_text())
    table = markdown_grid(HEADER, [_cells(r) for r in data["rows"]], "rlrrrrrrrrr")
    body = Path(args.notes).read_text() if args.notes and Path(args.notes).is_file() else ""
    body = body.replace("{n}", str(data["n"]))
    text = body.replace("{table}", table) if "{table}" in body else table
    write_section(Path(args.doc), SECTION, text + "\n")


def floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run")
    p.add_argument("--run", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rhos", type=floats, default=RHOS, help="corruption rates, comma list")
    p.add_argument("--scorers", type=lambda s: s.split(","), default=SCORERS)
    p = sub.add_parser("report")
    p.add_argument("--out", required=True)
    p.add_argument("--doc", default=str(ROOT / "docs" / "results.md"))
    p.add_argument(
        "--notes", default=str(ROOT / "experiments" / "study_notes" / "edit-correction.md")
    )
    args = parser.parse_args()
    measure(args) if args.cmd == "run" else report(args)


if __name__ == "__main__":
    main()

"""Error correction with `sbd edit`: corrupt true texts, edit them, judge before and after.

What it is: a driver that takes N true texts, replaces a fraction rho of each text's
positions by uniformly drawn other tokens, writes the corrupted texts, runs the real `sbd
edit` command on them (masked, posthoc and random scorers at gamma = rho and 2 rho, one
full bidirectional revise block), and reports from the records `sbd edit --records` writes:
the NLL per token of the true, the corrupted and the edited texts, the fraction of the
corruption's excess NLL the edit recovered, the recall (corrupted positions selected) and
precision (selected positions that were corrupted) of the selection, and the fraction of
corrupted positions restored to the true token. Two datasets:
- synthetic (`--run RUN` trained on `topic-markov`): N samples drawn from the oracle,
  corrupted by other words, judged by the exact oracle; section `edit-correction`.
- text (`--run RUN --judge JUDGE --data DIR`, e.g. tinyshakespeare in bytes): the first N
  validation rows of DIR (RUN's training data), corrupted by other characters of those
  rows, judged by JUDGE, an sbd run trained with block size 1 on the same data (exact
  autoregressive NLL); section `edit-correction-<name>`.
What it is not: training (the commands below train the models it reads) or a speed
benchmark.

    sbd prepare --synthetic topic-markov --out OUT/data
    sbd train --data OUT/data --out OUT/run --mix 4,128 --lambda 0.5 --steps 1000
    python -m experiments.edit_correction run --run OUT/run --out OUT/edit --n 512
    python -m experiments.edit_correction report --out OUT/edit

    sbd prepare --text tinyshakespeare.txt --seq-len 256 --out SH/data
    sbd train --data SH/data --out SH/run --mix 4,256 --lambda 0.5 --steps 1500
    sbd train --data SH/data --out SH/judge --block 1 --eps-min 1 --steps 1500
    python -m experiments.edit_correction run --run SH/run --judge SH/judge --data SH/data \
        --out SH/edit
    python -m experiments.edit_correction report --out SH/edit --name shakespeare
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
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
    true: torch.Tensor, rho: float, vocab: int | torch.Tensor, seed: int
) -> tuple[torch.Tensor, list[list[int]]]:
    """Replace round(rho * (L-1)) positions in 1..L-1 of each row by another token of the
    alphabet (`vocab` ids 0..vocab-1, or the ids of a tensor) drawn uniformly."""
    alphabet = torch.arange(vocab) if isinstance(vocab, int) else vocab
    where_in = torch.full((int(alphabet.max()) + 1,), -1, dtype=torch.long)
    where_in[alphabet] = torch.arange(len(alphabet))
    gen = torch.Generator().manual_seed(seed)
    out = true.clone()
    n, length = true.shape
    k = round(rho * (length - 1))
    where: list[list[int]] = []
    for i in range(n):
        pos = (torch.randperm(length - 1, generator=gen)[:k] + 1).sort().values
        shift = torch.randint(1, len(alphabet), (k,), generator=gen)
        out[i, pos] = alphabet[(where_in[true[i, pos]] + shift) % len(alphabet)]  # never true
        where.append(pos.tolist())
    return out, where


class OracleTruth:
    """Synthetic texts: samples of the run's oracle, judged by the oracle."""

    def __init__(self, run: Path, n: int, seed: int) -> None:
        self.oracle = load_oracle(run / "data" / "oracle.safetensors")
        self.codec = SyntheticCodec(self.oracle.vocab)
        length = json.loads((run / "data" / "manifest.json").read_text())["seq_len"]
        self.true = self.oracle.sample(n, length, torch.Generator().manual_seed(seed))
        self.alphabet: int | torch.Tensor = self.oracle.vocab

    def write(self, rows: torch.Tensor, path: Path) -> Path:
        texts = path.with_name(path.name + ".txt")
        texts.write_text("".join(self.codec.decode(r[1:].tolist()) + "\n" for r in rows))
        return texts

    def nll(self, tokens: torch.Tensor) -> float:
        return nll_per_token(self.oracle, tokens)


class JudgedText:
    """Text rows of the run's validation split, judged by a block-1 sbd run."""

    def __init__(self, data: Path, judge: Path, n: int) -> None:
        from sbdcli.data.datadir import load_codec, load_split
        from sbdcli.evaluate.judges import SbdJudge

        self.codec = load_codec(data)
        self.true = load_split(data, "val")[:n]
        self.judge = SbdJudge.load(judge, batch_size=64)
        self.alphabet = self.true[:, 1:].unique()  # the characters these rows use

    def write(self, rows: torch.Tensor, path: Path) -> Path:
        texts = path.with_name(path.name + ".jsonl")
        lines = [json.dumps({"id": f"t{i + 1}", "text": self.codec.decode(r[1:].tolist())})
                 for i, r in enumerate(rows)]  # fmt: skip
        texts.write_text("".join(line + "\n" for line in lines))
        return texts

    def nll(self, tokens: torch.Tensor) -> float:
        """The judge's NLL per token of positions 1..L-1, over all rows."""
        total = sum(float(-self.judge.token_logprobs(part).sum()) for part in tokens.split(64))
        return total / (tokens.numel() - tokens.shape[0])


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
    truth: Any = (
        OracleTruth(run, args.n, args.seed)
        if args.judge is None
        else JudgedText(Path(args.data), Path(args.judge), args.n)
    )
    true = truth.true
    rows = []
    for rho in args.rhos:
        bad, where = corrupt(true, rho, truth.alphabet, args.seed + 1)
        texts = truth.write(bad, out / f"corrupted-rho{rho:g}")
        base = {"rho": rho, "nll_true": truth.nll(true), "nll_corrupted": truth.nll(bad)}
        for scorer in args.scorers:
            for gamma in (rho, 2 * rho):
                recs, seconds = run_edit(texts, run, scorer, gamma, out)
                rows.append({**base, **score(recs, true, where, truth.nll), "scorer": scorer,
                             "gamma": gamma, "seconds": seconds})  # fmt: skip
                print(json.dumps(rows[-1]), file=sys.stderr)
                # after every row: an interrupted run keeps (and reports) what it measured
                judge = "oracle" if args.judge is None else "judge"
                done = {"n": len(true), "judge": judge, "rows": rows}
                (out / "edit-correction.json").write_text(json.dumps(done))


def score(
    recs: list[dict], true: torch.Tensor, where: list[list[int]], nll: Callable[[Any], float]
) -> dict:
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
    return {"nll_edited": nll(edited), "recall": hit / total,
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
    parts = [json.loads((Path(o) / "edit-correction.json").read_text()) for o in args.out]
    data = {**parts[0], "rows": [r for part in parts for r in part["rows"]]}  # one run per rho
    head = (*HEADER[:3], f"{data.get('judge', 'oracle')} NLL true", *HEADER[4:])
    table = markdown_grid(head, [_cells(r) for r in data["rows"]], "rlrrrrrrrrr")
    stem = SECTION if args.name is None else f"{SECTION}-{args.name}"
    notes = Path(args.notes or ROOT / "experiments" / "study_notes" / f"{stem}.md")
    body = notes.read_text() if notes.is_file() else ""
    body = body.replace("{n}", str(data["n"]))
    text = body.replace("{table}", table) if "{table}" in body else table
    write_section(Path(args.doc), stem, text + "\n")


def floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run")
    p.add_argument("--run", required=True)
    p.add_argument("--judge", help="a block-1 sbd run: edit the validation texts of --data")
    p.add_argument("--data", help="with --judge: the data directory RUN was trained on")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rhos", type=floats, default=RHOS, help="corruption rates, comma list")
    p.add_argument("--scorers", type=lambda s: s.split(","), default=SCORERS)
    p = sub.add_parser("report")
    p.add_argument("--out", required=True, nargs="+", help="run outputs (e.g. one per rho)")
    p.add_argument("--name", help="dataset name: section edit-correction-NAME")
    p.add_argument("--doc", default=str(ROOT / "docs" / "results.md"))
    p.add_argument("--notes", help="notes (default study_notes/edit-correction[-NAME].md)")
    args = parser.parse_args()
    measure(args) if args.cmd == "run" else report(args)


if __name__ == "__main__":
    main()

"""The sampler frontier: draft-only against draft + revise at matched CPU seconds.

What it is: a driver over library calls (draft, remask, revise, Gen PPL evaluation) that
samples a grid of draft settings (fixed calls per block and `--threshold` decoding) and of
draft + revise settings (exact and approximate global revises, one token per call, a few
per call or by threshold) with every trained model of experiments/study.py's layout, judges
each sample file, times every setting on one batch (min of repeats, robust to a busy
machine), and writes one section of docs/results.md between
`<!-- results:frontier-<dataset>[-<kind>] -->` markers: the settings table (mean ± std
over the trained models), the threshold rows against one token per call, and at three CPU
budgets the best draft-only and the best draft + revise setting, followed by
experiments/study_notes/frontier-<dataset>[-<kind>].md when that file exists.
What it is not: training (`python -m experiments.study train ...` trains the models this reads),
the study's other items (experiments/study.py), or a source of hard-coded numbers: every number
comes from rows this script measured and stored under --out/<dataset>/frontier-<kind>.json.

Steps (each reuses finished sample files):
    python -m experiments.study prepare --dataset synthetic
    python -m experiments.study train --dataset synthetic --model mix --seed S --steps 1200
    python -m experiments.frontier run --dataset synthetic --kind mix --seeds 0,1,2
    python -m experiments.frontier report --dataset synthetic --kind mix
    python -m experiments.frontier sweep --dataset shakespeare      # across the stored kinds
`--kind` picks the trained models (mix = λ 0.1; mix25, mix50 = λ 0.25, 0.5; single = 0).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench.timer import best_seconds, timed

from experiments.study_grid import judge_file, judge_options
from experiments.study_report import write_section
from experiments.study_runs import (
    DATASETS,
    DRAFT_BLOCK,
    KINDS,
    ROOT,
    ds_dir,
    model_dir,
    trained_models,
)
from sbdcli.artifacts.files import write_json
from sbdcli.artifacts.records import read_records
from sbdcli.config import (
    ApproxCache,
    CacheKind,
    ExactCache,
    FixedSteps,
    RemaskConfig,
    RevealPolicy,
    SamplerConfig,
    Threshold,
)
from sbdcli.data import read_manifest
from sbdcli.evaluate import markdown_grid
from sbdcli.pipeline import (
    ModelRef,
    draft_batch,
    draft_prompts,
    draft_set,
    load_model_ref,
    reuse_or_write,
    revise_set,
)


# --------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Draft:
    """A draft setting: block 4, `steps` calls per block, or adaptive with `threshold`."""

    name: str
    steps: int | None = None
    threshold: float | None = None

    def config(self) -> SamplerConfig:
        tau = self.threshold
        policy: RevealPolicy = FixedSteps(self.steps) if tau is None else Threshold(tau)
        return SamplerConfig(DRAFT_BLOCK, reveal=policy)

    @property
    def label(self) -> str:
        if self.threshold is not None:
            return f"draft τ {self.threshold:g}"
        return f"draft {DRAFT_BLOCK / (self.steps or DRAFT_BLOCK):.3g} tok/call"


@dataclass(frozen=True)
class Revise:
    """A global revise of a snapshot remask: gamma, tokens per call or threshold, cache."""

    gamma: float
    tpc: int | None = 1  # tokens per call (None: `threshold`)
    threshold: float | None = None
    refresh: int | None = None  # None: the exact cache

    @property
    def name(self) -> str:
        how = f"tau{self.threshold:g}" if self.threshold is not None else f"t{self.tpc}"
        cache = "exact" if self.refresh is None else f"approx{self.refresh}"
        return f"g{self.gamma:g}-{how}-{cache}"

    @property
    def label(self) -> str:
        how = f"τ {self.threshold:g}" if self.threshold is not None else f"{self.tpc} tok/call"
        cache = "exact" if self.refresh is None else f"approx R {self.refresh}"
        return f"revise γ {self.gamma:g}, {how}, {cache}"

    def config(self, length: int) -> SamplerConfig:
        steps = None
        if self.threshold is None and self.tpc != 1:
            steps = max(1, math.ceil(math.floor(self.gamma * (length - 1)) / (self.tpc or 1)))
        tau = self.threshold
        policy: RevealPolicy = FixedSteps(steps) if tau is None else Threshold(tau)
        cache: CacheKind = ExactCache() if self.refresh is None else ApproxCache(self.refresh)
        return SamplerConfig(0, reveal=policy, cache=cache)


DRAFTS = (
    Draft("s4", steps=4),
    Draft("s3", steps=3),
    Draft("s2", steps=2),
    Draft("s1", steps=1),
    Draft("tau0.9", threshold=0.9),
    Draft("tau0.7", threshold=0.7),
    Draft("tau0.5", threshold=0.5),
    Draft("tau0.3", threshold=0.3),
    Draft("tau0.1", threshold=0.1),
)
"""Draft-only settings: 1, 4/3, 2 and 4 tokens per call, then threshold decoding."""
BASES = ("s4", "s2", "s1", "tau0.5")
"""The drafts every revise setting is applied to."""
REVISES = (
    Revise(0.25, tpc=2),
    Revise(0.25, tpc=1, refresh=4),
    Revise(0.25, tpc=None, threshold=0.5, refresh=4),
    Revise(0.1, tpc=None, threshold=0.5, refresh=4),
)
"""Revise settings: an exact revise at 2 tokens per call (the study's default) and the
approximate cache at one token per call and with threshold decoding."""


def settings() -> list[tuple[Draft, Revise | None]]:
    """Every (draft, revise) pair of the grid; revise None = draft only."""
    by_name = {d.name: d for d in DRAFTS}
    pairs: list[tuple[Draft, Revise | None]] = [(d, None) for d in DRAFTS]
    pairs += [(by_name[b], r) for b in BASES for r in REVISES]
    return pairs


def setting_name(draft: Draft, rev: Revise | None) -> str:
    return f"{draft.name}-only" if rev is None else f"{draft.name}-{rev.name}"


def setting_label(draft: Draft, rev: Revise | None) -> str:
    return draft.label if rev is None else f"{draft.label} + {rev.label}"


# --------------------------------------------------------------------------- sampling
def _path(args: argparse.Namespace, seed: int, name: str) -> Path:
    return ds_dir(args) / "frontier" / f"{args.kind}-s{seed}" / f"{name}.jsonl"


def _revise(ref: ModelRef, drafts: list[Any], rev: Revise, seed: int, batch: int) -> list[Any]:
    """The snapshot remask and global revise `rev` of every draft."""
    rcfg = RemaskConfig(gamma=rev.gamma, strategy="snapshot", seed=seed)
    return revise_set(ref, drafts, rcfg, rev.config(ref.model.config.seq_len), seed, batch)


def sample_model(args: argparse.Namespace, seed: int) -> None:
    """Every setting of the grid with the model of `seed` (finished files are kept)."""
    ref = load_model_ref(model_dir(args, args.kind, seed), args.device)
    drafts = {
        d.name: reuse_or_write(
            _path(args, seed, setting_name(d, None)),
            args.n,
            lambda c=d.config(): draft_set(ref, args.n, seed, c, args.batch),
        )[0]
        for d in DRAFTS
    }
    for draft, rev in settings():
        if rev is None:
            continue
        path = _path(args, seed, setting_name(draft, rev))
        base = drafts[draft.name]
        make = lambda b=base, r=rev: _revise(ref, b, r, seed, args.batch)  # noqa: E731
        took, (_, reused) = timed(lambda m=make, p=path: reuse_or_write(p, args.n, m))
        if not reused:
            print(f"{args.kind}-s{seed} {path.stem}: {took:.0f} s", file=sys.stderr)


# --------------------------------------------------------------------------- timing
def time_model(args: argparse.Namespace, seed: int) -> dict[str, float]:
    """Seconds per sample of every setting on one batch of `--time-batch` (min of repeats):
    a draft-only setting its draft; a revise setting its draft + remask + revise."""
    ref = load_model_ref(model_dir(args, args.kind, seed), args.device)
    length, n = ref.model.config.seq_len, args.time_batch
    prompts = draft_prompts(ref, n, seed, None)
    costs: dict[str, float] = {}
    drafted: dict[str, list[Any]] = {}
    for d in DRAFTS:
        run = lambda c=d.config(): draft_batch(ref, prompts, length, c, seed)  # noqa: E731
        costs[setting_name(d, None)] = best_seconds(run, args.repeats, ref.device) / n
        drafted[d.name] = run()
    for draft, rev in settings():
        if rev is None:
            continue
        base = drafted[draft.name]
        secs = best_seconds(
            lambda b=base, r=rev: _revise(ref, b, r, seed, n), args.repeats, ref.device
        )
        costs[setting_name(draft, rev)] = costs[setting_name(draft, None)] + secs / n
    return costs


# --------------------------------------------------------------------------- run
def _judge(args: argparse.Namespace, seed: int) -> list[dict[str, Any]]:
    manifest = read_manifest(ds_dir(args) / "data")
    ids = (manifest.get("bos_id"), manifest.get("eos_id"))
    opts = judge_options(args)
    rows = []
    for draft, rev in settings():
        path = _path(args, seed, setting_name(draft, rev))
        every = list(read_records(str(path)))
        row, judged = judge_file(path, every, opts, ids)
        row.update(setting=setting_name(draft, rev), seed=seed, n=judged)
        rows.append(row)
    return rows


def cmd_run(args: argparse.Namespace) -> None:
    """Sample, judge and time every setting with every seed's model; store the rows."""
    torch.set_num_threads(args.threads)
    out = ds_dir(args) / f"frontier-{args.kind}.json"
    rows, costs = [], {}
    for seed in args.seeds:
        sample_model(args, seed)
        rows += _judge(args, seed)
        costs[str(seed)] = time_model(args, seed)
        print(f"{args.kind}-s{seed}: sampled, judged and timed", file=sys.stderr)
    info = {
        "threads": args.threads,
        "time_batch": args.time_batch,
        "repeats": args.repeats,
        "n": args.n,
        "cpu": os.cpu_count(),
        "torch": torch.__version__,
        "load": list(os.getloadavg()),
    }
    write_json(out, {"info": info, "rows": rows, "seconds": costs})


# --------------------------------------------------------------------------- report
def aggregate(stored: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per setting: mean and std over the trained models of Gen PPL, entropy, NFE, seconds."""
    by: dict[str, dict[str, list[float]]] = {}
    for row in stored["rows"]:
        seed, name = str(row["seed"]), row["setting"]
        slot = by.setdefault(name, {"ppl": [], "ent": [], "nfe": [], "sec": []})
        slot["ppl"].append(row["gen_ppl_per_sample_mean"])
        slot["ent"].append(row["entropy_per_sample_mean"])
        slot["nfe"].append(row["nfe_per_sample"])
        slot["sec"].append(stored["seconds"][seed][name])
    return {
        name: {k: (float(np.mean(v)), float(np.std(v))) for k, v in vals.items()}
        | {"k": len(vals["ppl"])}
        for name, vals in by.items()
    }


def budgets(agg: dict[str, dict[str, Any]]) -> list[float]:
    """Three CPU budgets log-spaced between the cheapest and the dearest setting."""
    secs = [v["sec"][0] for v in agg.values()]
    lo, hi = min(secs), max(secs)
    return [lo * (hi / lo) ** (q / 4) for q in (1, 2, 3)]


def best_within(agg: dict[str, dict[str, Any]], names: list[str], budget: float) -> str | None:
    """The setting with the lowest mean Gen PPL among `names` costing <= budget."""
    fit = [n for n in names if agg[n]["sec"][0] <= budget]
    return min(fit, key=lambda n: agg[n]["ppl"][0]) if fit else None


def _fmt(pair: tuple[float, float], digits: int) -> str:
    return f"{pair[0]:.{digits}f} ± {pair[1]:.{digits}f}"


def _table(agg: dict[str, dict[str, Any]]) -> str:
    header = ["setting", "Gen PPL (per-sample mean)", "entropy", "NFE", "CPU ms/sample"]
    rows = []
    for draft, rev in settings():
        a = agg[setting_name(draft, rev)]
        ms = (a["sec"][0] * 1e3, a["sec"][1] * 1e3)
        label = setting_label(draft, rev)
        rows.append([label, _fmt(a["ppl"], 3), _fmt(a["ent"], 3), _fmt(a["nfe"], 1), _fmt(ms, 2)])
    return markdown_grid(header, rows, "lrrrr") + "\n"


def _threshold_rows(agg: dict[str, dict[str, Any]]) -> str:
    base = agg["s4-only"]
    header = ["draft", "calls vs one token per call", "Gen PPL vs one token per call"]
    rows = []
    for d in DRAFTS[1:]:
        a = agg[setting_name(d, None)]
        fewer, ratio = base["nfe"][0] / a["nfe"][0], a["ppl"][0] / base["ppl"][0]
        rows.append([d.label, f"{fewer:.2f}x fewer", f"{ratio:.3f}x"])
    return markdown_grid(header, rows, "lrr") + "\n"


ENTROPY_TOLERANCE = 0.02
"""A setting keeps the model's diversity if its mean entropy is at least this fraction
below that of the one-token-per-call draft (the model's own ancestral sampler)."""


def diverse(agg: dict[str, dict[str, Any]]) -> set[str]:
    """The settings whose mean entropy is within `ENTROPY_TOLERANCE` of the 1-token draft's."""
    floor = (1 - ENTROPY_TOLERANCE) * agg["s4-only"]["ent"][0]
    return {name for name, a in agg.items() if a["ent"][0] >= floor}


def _budget_rows(agg: dict[str, dict[str, Any]], keep: set[str]) -> tuple[str, int]:
    """Best draft-only and draft + revise settings among `keep` within each budget."""
    label = {setting_name(d, r): setting_label(d, r) for d, r in settings()}
    only = [setting_name(d, None) for d in DRAFTS if setting_name(d, None) in keep]
    revised = [setting_name(d, r) for d, r in settings() if r is not None]
    revised = [n for n in revised if n in keep]
    header = ["CPU budget (ms/sample)", "best draft only", "Gen PPL", "best draft + revise"]
    header += ["Gen PPL", "winner"]
    lines, wins = [], 0
    for b in budgets(agg):
        a, r = best_within(agg, only, b), best_within(agg, revised, b)
        pa = agg[a]["ppl"][0] if a else math.inf
        pr = agg[r]["ppl"][0] if r else math.inf
        wins += pr < pa
        winner = "draft + revise" if pr < pa else "draft only"
        only_cell, revised_cell = (label[x] if x else "(none fits)" for x in (a, r))
        lines.append([f"{b * 1e3:.2f}", only_cell, f"{pa:.3f}", revised_cell, f"{pr:.3f}", winner])
    return markdown_grid(header, lines, "rlrlrl") + "\n", wins


def cmd_report(args: argparse.Namespace) -> None:
    stored = json.loads((ds_dir(args) / f"frontier-{args.kind}.json").read_text())
    agg = aggregate(stored)
    info = stored["info"]
    seeds = sorted({str(r["seed"]) for r in stored["rows"]})
    every, wins = _budget_rows(agg, set(agg))
    fair, fair_wins = _budget_rows(agg, diverse(agg))
    marker = f"frontier-{args.dataset}" + ("" if args.kind == "mix" else f"-{args.kind}")
    judge = "its exact oracle" if DATASETS[args.dataset].judge == "oracle" else "the block-1 judge"
    text = (
        f"## Sampler frontier: {DATASETS[args.dataset].title}, λ = {KINDS[args.kind]:g}\n\n"
        f"Command: `python -m experiments.frontier run --dataset {args.dataset} --kind {args.kind} "
        f"--seeds {','.join(seeds)} --n {info['n']}` then `report`. Models: `tiny`, "
        f"training seeds {', '.join(seeds)} (experiments/study.py train); {info['n']} samples per "
        f"setting and model, judged by {judge}; **± is the std over the trained models**. "
        f"Drafts: block {DRAFT_BLOCK}, exact KV cache, top-p 0.9. Revises: snapshot remask, "
        "one global block. Gen PPL is the per-sample mean (BD3-LM/MDLM protocol). CPU "
        f"ms/sample: min of {info['repeats']} runs of one batch of {info['time_batch']}, "
        f"{info['threads']} torch thread, {info['cpu']} cores, torch {info['torch']}, "
        f"load average {info['load'][0]:.1f} when the run ended (a revise setting counts "
        "its draft, remask and revise).\n\n"
        f"{_table(agg)}\n"
        f"Fewer calls from threshold drafts (mean over the models):\n\n{_threshold_rows(agg)}\n"
        "Best setting within each CPU budget (three budgets log-spaced between the cheapest "
        "and the dearest setting; lowest mean Gen PPL wins), first among every setting:\n\n"
        f"{every}\nDraft + revise wins at {wins} of 3 budgets. Gen PPL alone rewards "
        "samplers that lose diversity (a lower entropy than the model's own samples), so "
        "the same comparison among the settings whose mean entropy stays within "
        f"{ENTROPY_TOLERANCE:.0%} of the one-token-per-call draft's:\n\n"
        f"{fair}\nDraft + revise wins at {fair_wins} of 3 budgets.\n\n"
    )
    notes = ROOT / "experiments" / "study_notes" / f"{marker}.md"
    if notes.is_file():
        text += notes.read_text() + "\n"
    write_section(args.doc, marker, text)
    print(text)


# --------------------------------------------------------------------------- lambda sweep
SWEEP = ("s4-only", "s4-g0.25-t2-exact", "s4-g0.25-tau0.5-approx4", "s2-only")
SWEEP += ("s2-g0.25-tau0.5-approx4",)
"""The settings the lambda sweep table compares across kinds."""


def cmd_sweep(args: argparse.Namespace) -> None:
    """One table across the kinds with a stored frontier: validation NELBO per block size
    and the Gen PPL (entropy) of the drafts and revises in `SWEEP`."""
    label = {setting_name(d, r): setting_label(d, r) for d, r in settings()}
    vals = {(m.kind, m.seed): m.last_val for m in trained_models(args)}
    kinds = [k for k in KINDS if (ds_dir(args) / f"frontier-{k}.json").is_file()]
    kinds.sort(key=lambda k: KINDS[k])
    header = ["setting", *(f"λ = {KINDS[k]:g}" for k in kinds)]
    rows: list[list[str]] = []
    aggs = {
        k: aggregate(json.loads((ds_dir(args) / f"frontier-{k}.json").read_text())) for k in kinds
    }
    sizes = {b for (kind, _), v in vals.items() if kind in kinds for b in v["val_nelbo"]}
    for size in sorted(sizes, key=int):
        cells = []
        for k in kinds:
            nelbo = [
                v["val_nelbo"][size]
                for (kind, _), v in vals.items()
                if kind == k and size in v["val_nelbo"]
            ]
            cells.append(f"{np.mean(nelbo):.3f}" if nelbo else "-")
        rows.append([f"val NELBO, B = {size}", *cells])
    for name in SWEEP:
        cells = [f"{aggs[k][name]['ppl'][0]:.3f} ({aggs[k][name]['ent'][0]:.3f})" for k in kinds]
        rows.append([label[name], *cells])
    table = markdown_grid(header, rows, "l" + "r" * len(kinds))
    text = (
        f"## Lambda sweep: {DATASETS[args.dataset].title}\n\n"
        f"Command: `python -m experiments.frontier sweep --dataset {args.dataset}` over the stored "
        "frontiers (experiments/frontier.py run --kind mix, mix25, mix50). Validation NELBO per "
        "token (EMA weights, the last validation of each training); then Gen PPL "
        "(per-sample mean) with the mean entropy in brackets, settings as in the frontier "
        "sections.\n\n" + table + "\n\n"
    )
    marker = f"frontier-{args.dataset}-sweep"
    notes = ROOT / "experiments" / "study_notes" / f"{marker}.md"
    if notes.is_file():
        text += notes.read_text() + "\n"
    write_section(args.doc, marker, text)
    print(text)


# --------------------------------------------------------------------------- cli
def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("run", "report", "sweep"))
    parser.add_argument("--dataset", choices=tuple(DATASETS), default="synthetic")
    parser.add_argument("--kind", choices=tuple(KINDS), default="mix")
    parser.add_argument("--out", type=Path, default=Path("runs/study"), help="artifact root")
    parser.add_argument("--seeds", type=_ints, default=(0, 1, 2), help="model seeds")
    parser.add_argument("--n", type=int, default=256, help="samples per setting and model")
    parser.add_argument("--batch", type=int, default=64, help="rows per sampler call")
    parser.add_argument("--time-batch", type=int, default=64, help="timing: batch")
    parser.add_argument("--repeats", type=int, default=3, help="timing: runs, min kept")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "results.md")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    {"run": cmd_run, "report": cmd_report, "sweep": cmd_sweep}[args.step](args)


if __name__ == "__main__":
    main()

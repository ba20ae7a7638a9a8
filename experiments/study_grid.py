"""The study's sampling grid (experiments/study.py): every setting, its sample files, their judging.

What it is: the settings of the grid (a `Group` is a draft of one model kind at some steps
per block, with the `Revise` settings run on it), the `sample` and `extra` steps that draft,
remask and revise every setting into --out/<dataset>/samples, the `eval` step that judges
each sample file into rows.json (rows-extra.json), and the `timing` step that measures each
stage on one batch into timed-<device>.json.
What it is not: training (experiments/study_runs.py), or the aggregation and markdown of the
report (experiments/study_stats.py, experiments/study_report.py).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from bench.timer import best_seconds, timed

from experiments.study_runs import DATASETS, DRAFT_BLOCK, MODELS, ds_dir, model_dir
from sbdcli.artifacts.files import write_json
from sbdcli.config import FixedSteps, GenPplOptions, RemaskConfig, SamplerConfig
from sbdcli.data import read_manifest
from sbdcli.evaluate import evaluate_sets
from sbdcli.pipeline import (
    ModelRef,
    draft_batch,
    draft_prompts,
    draft_set,
    finished,
    load_model_ref,
    remask_batch,
    reuse_or_write,
    revise_batch,
    revise_set,
)

GAMMAS = (0.1, 0.25, 0.5, 0.75, 1.0)
REVISE_BLOCKS = (4, 16, 64, 0)  # 0 = the whole sequence (L)
STRATEGIES = ("snapshot", "random", "posthoc", "masked")
DRAFT_STEPS = (4, 2, 1)  # calls per block of 4: 1, 2 and 4 tokens per call
EXTRA_STEPS = 3  # the supplementary draft (seed-0 models only): 4/3 tokens per call
KEPT = (
    "nll_per_token",
    "gen_ppl_corpus",
    "gen_ppl_per_sample_mean",
    "entropy_per_sample_mean",
    "nfe_per_sample",
    "seconds_per_sample",
    "oracle_floor_ppl",
    "oracle_floor_nll_per_token",
)
"""The judge summary fields a row of rows.json keeps."""


@dataclass(frozen=True)
class Revise:
    """One revise setting applied to a draft: remask (strategy, gamma), block, tokens/call."""

    strategy: str
    gamma: float
    block: int  # 0 = global
    tpc: int = 2  # tokens revealed per call (steps = ceil(expected masked per block / tpc))

    @property
    def name(self) -> str:
        blk = "L" if self.block == 0 else str(self.block)
        tail = "" if self.tpc == 2 else f"-t{self.tpc}"
        return f"{self.strategy}-g{self.gamma:g}-b{blk}{tail}"

    def steps(self, length: int) -> int:
        block = length if self.block == 0 else self.block
        per_block = math.floor(self.gamma * (length - 1)) * block / length
        return max(1, math.ceil(per_block / self.tpc))


@dataclass(frozen=True)
class Group:
    """A draft (model kind, draft steps per block) and the revisions run on it."""

    model: str
    steps: int
    revises: tuple[Revise, ...]

    @property
    def draft_name(self) -> str:
        return f"draft-s{self.steps}"


def grid() -> list[Group]:
    """Every (model, draft) group of the study and its revise settings (per seed)."""
    main = [Revise("snapshot", g, 0) for g in GAMMAS]
    main += [Revise(s, g, 0) for g in (0.25, 0.5) for s in STRATEGIES if s != "snapshot"]
    main += [Revise("snapshot", 0.25, b) for b in REVISE_BLOCKS if b != 0]
    main += [Revise("snapshot", 0.25, 0, tpc) for tpc in (1, 4)]
    best_draft = (Revise("snapshot", 0.25, 0), Revise("snapshot", 0.5, 0))
    best_draft += (Revise("masked", 0.25, 0), Revise("snapshot", 0.25, 0, 4))
    best_draft += (Revise("snapshot", 0.1, 0), Revise("snapshot", 0.1, 0, 4))
    fast_draft = (Revise("snapshot", 0.25, 0), Revise("snapshot", 0.5, 0))
    fast_draft += (Revise("snapshot", 1.0, 0), Revise("masked", 0.25, 0))
    single = tuple(Revise("snapshot", g, 0) for g in (0.1, 0.25, 0.5))
    return [
        Group("mix", 2, tuple(main)),
        Group("mix", 4, best_draft),
        Group("mix", 1, fast_draft),
        Group("single", 2, single),
        Group("single", 4, ()),
        Group("single", 1, ()),
    ]


def extra_grid() -> list[Group]:
    """Supplementary groups (seed-0 λ = 0.1 model only): a draft between 1 and 2 tok/call."""
    revises = (Revise("snapshot", 0.1, 0, 4), Revise("snapshot", 0.25, 0))
    return [Group("mix", EXTRA_STEPS, (*revises, Revise("masked", 0.25, 0)))]


def revise_key(rev: Revise) -> str:
    """The stage-timing name of a global revise (its gamma and tokens per call)."""
    return f"revise-g{rev.gamma:g}-t{rev.tpc}"


# --------------------------------------------------------------------------- sample files
def set_path(args: argparse.Namespace, seed: int, group: Group, name: str) -> Path:
    folder = ds_dir(args) / "samples" / f"{group.model}-s{seed}"
    return folder / f"{group.draft_name}-{name}.jsonl"


# --------------------------------------------------------------------------- sample
def run_group(args: argparse.Namespace, group: Group, ref: ModelRef) -> None:
    """Draft n samples, then every revise of the group; reuse complete files."""
    seed, n, length = args.seed, args.n, ref.model.config.seq_len
    dcfg = SamplerConfig(block_size=DRAFT_BLOCK, reveal=FixedSteps(group.steps))
    drafts, _ = reuse_or_write(
        set_path(args, seed, group, "only"),
        n,
        lambda: draft_set(ref, n, seed, dcfg, args.batch),
    )
    for rev in group.revises:
        rcfg = RemaskConfig(gamma=rev.gamma, strategy=rev.strategy, seed=seed)
        scfg = SamplerConfig(block_size=rev.block, reveal=FixedSteps(rev.steps(length)))
        reuse_or_write(
            set_path(args, seed, group, rev.name),
            n,
            lambda r=rcfg, s=scfg: revise_set(ref, drafts, r, s, seed, args.batch),
        )


def cmd_sample(args: argparse.Namespace) -> None:
    refs = {m: load_model_ref(model_dir(args, m, args.seed), args.device) for m in MODELS}
    for g in grid():
        took, _ = timed(lambda g=g: run_group(args, g, refs[g.model]))
        name = f"{args.dataset} {g.model}-s{args.seed} {g.draft_name}"
        print(f"{name}: {took:.0f} s", file=sys.stderr)


# --------------------------------------------------------------------------- eval
def judge_options(args: argparse.Namespace) -> GenPplOptions:
    data = ds_dir(args) / "data"
    if DATASETS[args.dataset].judge == "oracle":
        return GenPplOptions(evaluator="oracle", data_dir=data, group=False, seed=0)
    judge = model_dir(args, "judge", 0)
    return GenPplOptions(
        evaluator=str(judge), data_dir=data, group=False, device=args.device, batch_size=64
    )


def judge_file(
    path: Path, every: list[dict[str, Any]], opts: GenPplOptions, ids: tuple[Any, Any]
) -> tuple[dict[str, Any], int]:
    """The kept judge summary of one sample file, and how many of its samples it judged."""
    bos, eos = ids
    # a BOS after position 0 (which the sampler suppresses when BOS != EOS)
    # would be rejected by the oracle: such samples are dropped and counted
    recs = [
        r for r in every if bos is None or bos == eos or bos not in r["tokens"][r["prompt_len"] :]
    ]
    (s,) = evaluate_sets([(path.name, recs)], opts)
    return {k: s.get(k) for k in KEPT}, len(recs)


def evaluate_all(
    args: argparse.Namespace, groups: list[Group] | None = None
) -> list[dict[str, Any]]:
    """Judge summary of every sample file: one row per (model, draft, setting, seed)."""
    manifest = read_manifest(ds_dir(args) / "data")
    ids = (manifest.get("bos_id"), manifest.get("eos_id"))
    opts = judge_options(args)
    rows = []
    for seed in args.seeds:
        for g in grid() if groups is None else groups:
            for name in ["only", *[r.name for r in g.revises]]:
                path = set_path(args, seed, g, name)
                every = finished(path, args.n)
                if every is None:
                    continue
                row, n = judge_file(path, every, opts, ids)
                row.update(model=g.model, draft=g.steps, setting=name, seed=seed, n=n)
                row["dropped"] = len(every) - n
                rows.append(row)
    return rows


def cmd_eval(args: argparse.Namespace) -> None:
    write_json(ds_dir(args) / "rows.json", evaluate_all(args))


def cmd_extra(args: argparse.Namespace) -> None:
    """Sample and judge the supplementary groups with the seed-0 λ = 0.1 model."""
    args.seed, args.seeds = 0, (0,)
    ref = load_model_ref(model_dir(args, "mix", 0), args.device)
    for g in extra_grid():
        run_group(args, g, ref)
    write_json(ds_dir(args) / "rows-extra.json", evaluate_all(args, extra_grid()))


# --------------------------------------------------------------------------- timing
def timed_costs(
    args: argparse.Namespace, repeats: int = 3, drafts: tuple[int, ...] | None = None
) -> dict[str, float]:
    """Min-of-`repeats` seconds per sample of each stage on one batch (robust to load).

    Uses the seed-0 λ = 0.1 model; the stages are those of the grid (drafts at 1, 2, 4
    tokens per call; each remask strategy at γ = 0.25; each global revise (γ, tokens/call)).
    """
    ref = load_model_ref(model_dir(args, "mix", 0), args.device)
    length, batch = ref.model.config.seq_len, args.time_batch
    prompts = draft_prompts(ref, batch, 0, None)

    def best(fn: Any) -> float:
        return best_seconds(fn, repeats, ref.device) / batch

    costs: dict[str, float] = {}
    for steps in (*DRAFT_STEPS, EXTRA_STEPS) if drafts is None else drafts:
        scfg = SamplerConfig(block_size=DRAFT_BLOCK, reveal=FixedSteps(steps))
        costs[f"draft-s{steps}"] = best(lambda c=scfg: draft_batch(ref, prompts, length, c, 0))
    if drafts is not None:
        return costs
    drafts = draft_batch(ref, prompts, length, SamplerConfig(DRAFT_BLOCK, FixedSteps(2)), 0)
    for strategy in STRATEGIES:
        rcfg = RemaskConfig(gamma=0.25, strategy=strategy, seed=0)
        costs[f"remask-{strategy}"] = best(
            lambda c=rcfg: remask_batch([dict(r) for r in drafts], c, ref)
        )
    revises = {r for g in grid() + extra_grid() for r in g.revises if r.block == 0}
    for rev in sorted({(r.gamma, r.tpc) for r in revises}):
        setting = Revise("snapshot", rev[0], 0, rev[1])
        rem = remask_batch([dict(r) for r in drafts], RemaskConfig(gamma=rev[0]), ref)
        scfg = SamplerConfig(block_size=0, reveal=FixedSteps(setting.steps(length)))
        costs[revise_key(setting)] = best(
            lambda c=scfg, r=rem: revise_batch([dict(x) for x in r], ref, c, 0)
        )
    return costs


def _device_name(kind: str) -> str:
    if kind == "cuda":
        return torch.cuda.get_device_name(0)
    return platform.processor() or platform.machine()


def cmd_timing(args: argparse.Namespace) -> None:
    kind = "cuda" if args.device == "cuda" else "cpu"
    path = ds_dir(args) / f"timed-{kind}.json"
    info = {"device": _device_name(kind), "batch": args.time_batch, "threads": args.threads}
    if args.draft_steps:  # add drafts to an existing timing of the same device and batch
        old = json.loads(path.read_text())
        if old["info"] != info:
            raise SystemExit(f"{path} was timed with {old['info']}, not {info}")
        costs = {**old["costs"], **timed_costs(args, drafts=args.draft_steps)}
    else:
        costs = timed_costs(args)
    write_json(path, {"info": info, "costs": costs})

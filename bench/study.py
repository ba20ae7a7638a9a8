"""The small-scale study of the paper's claims (docs/results.md), on two datasets.

What it is: a reproducible driver over library calls only (prepare, train, draft, remask,
revise, Gen PPL evaluation) that measures items a-f of the study on the synthetic
`topic-markov` language (L = 128, judged by its exact oracle) and on tinyshakespeare
(bytes, L = 256, judged by an sbd model trained with block size 1 on the same data), with
three trained models per setting (training seeds 0, 1, 2; each model samples with its own
seed), and writes one section of docs/results.md per dataset between
`<!-- results:study-<dataset> -->` markers, plus docs/results-frontier-<dataset>.png.
What it is not: a test, or a source of any hard-coded number (every number in the doc comes
from the evaluation of the sample files this script writes).

Steps (each reuses finished artifacts under --out/<dataset>):
    python bench/study.py prepare --dataset D
    python bench/study.py train --dataset D --model mix|single|judge --seed S --steps N
    python bench/study.py sample --dataset D --seed S --n 512
    python bench/study.py eval --dataset D
    python bench/study.py timing --dataset D --device cpu|cuda
    python bench/study.py report --dataset D
`bench/study_run.sh` runs prepare..eval (and the GPU timing) for both datasets in parallel.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
MODELS = {"mix": 0.1, "single": 0.0}
"""Model kind -> mix-scale lambda (probability of a whole-sequence block step)."""
DRAFT_BLOCK = 4
GAMMAS = (0.1, 0.25, 0.5, 0.75, 1.0)
REVISE_BLOCKS = (4, 16, 64, 0)  # 0 = the whole sequence (L)
STRATEGIES = ("snapshot", "random", "posthoc", "masked")
DRAFT_STEPS = (4, 2, 1)  # calls per block of 4: 1, 2 and 4 tokens per call
EXTRA_STEPS = 3  # the supplementary draft (seed-0 models only): 4/3 tokens per call


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


# --------------------------------------------------------------------------- paths
def ds_dir(args: argparse.Namespace) -> Path:
    return args.out / args.dataset


def model_dir(args: argparse.Namespace, kind: str, seed: int) -> Path:
    return ds_dir(args) / "models" / f"{kind}-s{seed}"


def set_path(args: argparse.Namespace, seed: int, group: Group, name: str) -> Path:
    folder = ds_dir(args) / "samples" / f"{group.model}-s{seed}"
    return folder / f"{group.draft_name}-{name}.jsonl"


def _records(path: Path, n: int) -> list[dict[str, Any]] | None:
    """The records of a finished sample file (exactly n of them), else None."""
    from sbdcli import artifacts

    if not path.is_file():
        return None
    records = list(artifacts.read_records(str(path)))
    return records if len(records) == n else None


def _complete(path: Path, n: int) -> bool:
    return _records(path, n) is not None


def _steps_done(run: Path) -> int:
    state = run / "state" / "trainer.json"
    return int(json.loads(state.read_text()).get("step", 0)) if state.is_file() else 0


# --------------------------------------------------------------------------- steps
def cmd_prepare(args: argparse.Namespace) -> None:
    from sbdcli.data import prepare_synthetic, prepare_text
    from sbdcli.data.sources import TextFiles

    data = ds_dir(args) / "data"
    if (data / "manifest.json").is_file():
        print(f"reusing {data}", file=sys.stderr)
        return
    data.parent.mkdir(parents=True, exist_ok=True)
    command = " ".join(map(shlex.quote, sys.argv))
    if args.dataset == "synthetic":
        prepare_synthetic(data, seed=0, command=command)
    else:
        source = TextFiles([str(args.text)])
        prepare_text(data, source, "bytes", DATASETS[args.dataset].seq_len, command=command)


def cmd_train(args: argparse.Namespace) -> None:
    from sbdcli.config import train_config
    from sbdcli.data import read_manifest
    from sbdcli.train import setup

    data = ds_dir(args) / "data"
    length = int(read_manifest(data)["seq_len"])
    run = model_dir(args, args.model, args.seed)
    if (run / "model.safetensors").is_file() and _steps_done(run) >= args.steps:
        print(f"reusing {run}", file=sys.stderr)
        return
    if args.model == "judge":  # autoregressive: block 1, every token masked (t = 1)
        blocks: dict[str, Any] = {"block_small": 1, "block_large": 1, "mix_lambda": 0.0}
        blocks["eps_min"] = 1.0
    else:
        blocks = {"block_small": DRAFT_BLOCK, "block_large": length}
        blocks["mix_lambda"] = MODELS[args.model]
    cfg = train_config(
        "tiny",
        steps=args.steps,
        seed=args.seed,
        val_every=max(args.steps // 4, 1),
        save_every=min(500, args.steps),
        device=args.device,
        **blocks,
    )
    resume = run.exists() and _steps_done(run) > 0
    start = time.perf_counter()
    trainer = setup(cfg, data, run, resume=resume, runs_root=run.parent)
    try:
        trainer.fit(None)
    except KeyboardInterrupt:  # a deadline (SIGTERM): the trainer saved its last step
        print(f"stopped {run} at step {_steps_done(run)}", file=sys.stderr)
    print(f"trained {run} in {time.perf_counter() - start:.0f} s", file=sys.stderr)


def run_group(args: argparse.Namespace, group: Group, ref: Any) -> None:
    """Draft n samples, then every revise of the group; reuse complete files."""
    from sbdcli import artifacts, pipeline
    from sbdcli.diffusion.sampler import SamplerConfig

    seed, n, length = args.seed, args.n, ref.model.config.seq_len
    dpath = set_path(args, seed, group, "only")
    if not _complete(dpath, n):
        scfg = SamplerConfig(block_size=DRAFT_BLOCK, steps_per_block=group.steps)
        prompts = pipeline.draft_prompts(ref, n, seed, None)
        drafts: list[dict[str, Any]] = []
        for batch in pipeline.batched(prompts, args.batch):
            drafts.extend(pipeline.draft_batch(ref, batch, length, scfg, seed))
        dpath.parent.mkdir(parents=True, exist_ok=True)
        artifacts.write_records(drafts, str(dpath))
    drafts = list(artifacts.read_records(str(dpath)))
    for rev in group.revises:
        path = set_path(args, seed, group, rev.name)
        if _complete(path, n):
            continue
        rcfg = pipeline.RemaskConfig(gamma=rev.gamma, strategy=rev.strategy, seed=seed)
        scfg = SamplerConfig(block_size=rev.block, steps_per_block=rev.steps(length))
        records: list[dict[str, Any]] = []
        for batch in pipeline.batched(drafts, args.batch):
            remasked = pipeline.remask_batch([dict(r) for r in batch], rcfg, ref)
            records.extend(pipeline.revise_batch(remasked, ref, scfg, seed))
        artifacts.write_records(records, str(path))


def cmd_sample(args: argparse.Namespace) -> None:
    from sbdcli import pipeline

    refs = {m: pipeline.load_model_ref(model_dir(args, m, args.seed), args.device) for m in MODELS}
    for g in grid():
        start = time.perf_counter()
        run_group(args, g, refs[g.model])
        took = time.perf_counter() - start
        name = f"{args.dataset} {g.model}-s{args.seed} {g.draft_name}"
        print(f"{name}: {took:.0f} s", file=sys.stderr)


# --------------------------------------------------------------------------- eval
def _judge_options(args: argparse.Namespace) -> Any:
    from sbdcli import evaluate as ev

    data = ds_dir(args) / "data"
    if DATASETS[args.dataset].judge == "oracle":
        return ev.GenPplOptions(evaluator="oracle", data_dir=data, group=False, seed=0)
    judge = model_dir(args, "judge", 0)
    return ev.GenPplOptions(
        evaluator=str(judge), data_dir=data, group=False, device=args.device, batch_size=64
    )


def evaluate_all(
    args: argparse.Namespace, groups: list[Group] | None = None
) -> list[dict[str, Any]]:
    """Judge summary of every sample file: one row per (model, draft, setting, seed)."""
    from sbdcli import evaluate as ev
    from sbdcli.data import read_manifest

    manifest = read_manifest(ds_dir(args) / "data")
    bos, eos = manifest.get("bos_id"), manifest.get("eos_id")
    opts = _judge_options(args)
    rows = []
    for seed in args.seeds:
        for g in grid() if groups is None else groups:
            for name in ["only", *[r.name for r in g.revises]]:
                path = set_path(args, seed, g, name)
                every = _records(path, args.n)
                if every is None:
                    continue
                # a BOS after position 0 (which the sampler suppresses when BOS != EOS)
                # would be rejected by the oracle: such samples are dropped and counted
                recs = [
                    r
                    for r in every
                    if bos is None or bos == eos or bos not in r["tokens"][r["prompt_len"] :]
                ]
                (s,) = ev.evaluate_sets([(path.name, recs)], opts)
                keep = ("nll_per_token", "gen_ppl_corpus", "entropy_per_sample_mean")
                keep += ("nfe_per_sample", "seconds_per_sample", "oracle_floor_ppl")
                keep += ("oracle_floor_nll_per_token",)
                row = {k: s.get(k) for k in keep}
                row.update(model=g.model, draft=g.steps, setting=name, seed=seed, n=len(recs))
                row["dropped"] = len(every) - len(recs)
                rows.append(row)
    return rows


def cmd_eval(args: argparse.Namespace) -> None:
    from sbdcli import artifacts

    artifacts.write_json(ds_dir(args) / "rows.json", evaluate_all(args))


def cmd_extra(args: argparse.Namespace) -> None:
    """Sample and judge the supplementary groups with the seed-0 λ = 0.1 model."""
    from sbdcli import artifacts, pipeline

    args.seed, args.seeds = 0, (0,)
    ref = pipeline.load_model_ref(model_dir(args, "mix", 0), args.device)
    for g in extra_grid():
        run_group(args, g, ref)
    artifacts.write_json(ds_dir(args) / "rows-extra.json", evaluate_all(args, extra_grid()))


def aggregate(rows: list[dict[str, Any]]) -> dict[tuple[str, int, str], dict[str, Any]]:
    """Mean and std over trained models (seeds) per (model, draft steps, setting)."""
    keys: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for r in rows:
        keys.setdefault((r["model"], r["draft"], r["setting"]), []).append(r)
    agg = {}
    for key, rs in keys.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        a: dict[str, Any] = {"seeds": [r["seed"] for r in rs], "n": min(r["n"] for r in rs)}
        for k in ("gen_ppl_corpus", "nll_per_token", "entropy_per_sample_mean"):
            v = np.array([r[k] for r in rs], dtype=float)
            a[k] = (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0)
            a[k + "_by_seed"] = {r["seed"]: r[k] for r in rs}
        for k in ("nfe_per_sample", "seconds_per_sample"):
            a[k] = float(np.mean([r[k] or 0.0 for r in rs]))
        agg[key] = a
    return agg


# --------------------------------------------------------------------------- timing
def timed_costs(
    args: argparse.Namespace, repeats: int = 3, drafts: tuple[int, ...] | None = None
) -> dict[str, float]:
    """Min-of-`repeats` seconds per sample of each stage on one batch (robust to load).

    Uses the seed-0 λ = 0.1 model; the stages are those of the grid (drafts at 1, 2, 4
    tokens per call; each remask strategy at γ = 0.25; each global revise (γ, tokens/call)).
    """
    from sbdcli import pipeline
    from sbdcli.diffusion.sampler import SamplerConfig

    ref = pipeline.load_model_ref(model_dir(args, "mix", 0), args.device)
    length, batch = ref.model.config.seq_len, args.time_batch
    prompts = pipeline.draft_prompts(ref, batch, 0, None)

    cuda = torch.device(ref.device).type == "cuda"

    def best(fn: Any) -> float:
        times = []
        for _ in range(repeats):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return min(times) / batch

    costs: dict[str, float] = {}
    for steps in (*DRAFT_STEPS, EXTRA_STEPS) if drafts is None else drafts:
        scfg = SamplerConfig(block_size=DRAFT_BLOCK, steps_per_block=steps)
        costs[f"draft-s{steps}"] = best(
            lambda c=scfg: pipeline.draft_batch(ref, prompts, length, c, 0)
        )
    if drafts is not None:
        return costs
    drafts = pipeline.draft_batch(ref, prompts, length, SamplerConfig(DRAFT_BLOCK, 2), 0)
    for strategy in STRATEGIES:
        rcfg = pipeline.RemaskConfig(gamma=0.25, strategy=strategy, seed=0)
        costs[f"remask-{strategy}"] = best(
            lambda c=rcfg: pipeline.remask_batch([dict(r) for r in drafts], c, ref)
        )
    revises = {r for g in grid() + extra_grid() for r in g.revises if r.block == 0}
    for rev in sorted({(r.gamma, r.tpc) for r in revises}):
        setting = Revise("snapshot", rev[0], 0, rev[1])
        rem = pipeline.remask_batch(
            [dict(r) for r in drafts], pipeline.RemaskConfig(gamma=rev[0]), ref
        )
        scfg = SamplerConfig(block_size=0, steps_per_block=setting.steps(length))
        costs[_revise_key(setting)] = best(
            lambda c=scfg, r=rem: pipeline.revise_batch([dict(x) for x in r], ref, c, 0)
        )
    return costs


def _revise_key(rev: Revise) -> str:
    return f"revise-g{rev.gamma:g}-t{rev.tpc}"


def cmd_timing(args: argparse.Namespace) -> None:
    from sbdcli import artifacts

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
    artifacts.write_json(path, {"info": info, "costs": costs})


def _device_name(kind: str) -> str:
    if kind == "cuda":
        return torch.cuda.get_device_name(0)
    import platform

    return platform.processor() or platform.machine()


def modelled_seconds(agg: dict, costs: dict[str, float]) -> dict[tuple, float]:
    """Seconds per sample of each global-revise or draft-only setting from stage timings."""
    out = {}
    for key in agg:
        parts = [f"draft-s{key[1]}"]
        m = re.match(r"(\w+)-g([\d.]+)-bL(?:-t(\d+))?$", key[2])
        if m:
            rev = Revise(m[1], float(m[2]), 0, int(m[3] or 2))
            parts += [f"remask-{rev.strategy}", _revise_key(rev)]
        elif key[2] != "only":
            continue
        if all(p in costs for p in parts):
            out[key] = sum(costs[p] for p in parts)
    return out


# --------------------------------------------------------------------------- report
def _pm(value: tuple[float, float], digits: int = 2, spread: bool = True) -> str:
    if not spread:
        return f"{value[0]:.{digits}f}"
    return f"{value[0]:.{digits}f} ± {value[1]:.{digits}f}"


def label(key: tuple[str, int, str]) -> str:
    model, steps, setting = key
    draft = f"λ={MODELS[model]:g} draft {DRAFT_BLOCK / steps:.3g} tok/call"
    if setting == "only":
        return draft
    m = re.match(r"(\w+)-g([\d.]+)-b(\w+?)(?:-t(\d+))?$", setting)
    assert m is not None, setting
    tail = f", {m[4] or 2} tok/call" if m[3] == "L" else ""
    return f"{draft} + {m[1]} γ={m[2]} revise B={m[3]}{tail}"


def table(
    agg: dict, keys: list[tuple[str, int, str]], base: tuple | None, secs: dict[str, dict]
) -> list[str]:
    """Markdown rows: Gen PPL, NLL, entropy (mean ± std over models), NFE, modelled s."""
    head = "| setting | Gen PPL | NLL/token | entropy | NFE | " + " | ".join(
        f"s/sample {k}" for k in secs
    )
    lines = [head + " |", "|---" * (5 + len(secs)) + "|"]
    if base is not None:
        lines[0] += " Δ NLL vs draft (per model) |"
        lines[1] += "---|"
    for key in keys:
        if key not in agg:
            lines.append(f"| {label(key)} | (not run) |")
            continue
        a = agg[key]
        many = len(a["seeds"]) > 1
        line = (
            f"| {label(key)} | {_pm(a['gen_ppl_corpus'], 2, many)} | "
            f"{_pm(a['nll_per_token'], 3, many)} | "
            f"{_pm(a['entropy_per_sample_mean'], 3, many)} | {a['nfe_per_sample']:.1f} |"
        )
        for s in secs.values():
            line += f" {s[key]:.4f} |" if key in s else " – |"
        if base is not None:
            line += f" {_paired(agg, key, base, 'nll_per_token')} |"
        lines.append(line)
    return lines


def _seed_diffs(agg: dict, a: tuple, b: tuple, metric: str) -> np.ndarray:
    """Per-model differences a - b of `metric` over the seeds both settings have."""
    xa, xb = agg[a][metric + "_by_seed"], agg[b][metric + "_by_seed"]
    return np.array([xa[s] - xb[s] for s in xa if s in xb], dtype=float)


def _paired(agg: dict, a: tuple, b: tuple, metric: str) -> str:
    """Mean ± std over models of the per-model difference a - b of `metric`."""
    if a not in agg or b not in agg:
        return "–"
    d = _seed_diffs(agg, a, b, metric)
    if len(d) == 0:
        return "–"
    std = float(d.std(ddof=1)) if len(d) > 1 else 0.0
    return f"{d.mean():+.3f} ± {std:.3f}"


def compare(agg: dict, a: tuple, b: tuple) -> str:
    """'lower'/'higher'/'no clear difference' in Gen PPL of a vs b, paired over models.

    A difference counts when every trained model agrees on its sign and the mean paired
    difference of NLL/token exceeds twice its standard error.
    """
    if a not in agg or b not in agg:
        return "not measured"
    d = _seed_diffs(agg, a, b, "nll_per_token")
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else math.inf
    agree = bool(np.all(d < 0) or np.all(d > 0))
    ma, mb = agg[a]["gen_ppl_corpus"][0], agg[b]["gen_ppl_corpus"][0]
    word = "no clear difference"
    if agree and abs(d.mean()) > 2 * se:
        word = "lower" if d.mean() < 0 else "higher"
    return f"{word} ({ma:.2f} vs {mb:.2f}; ΔNLL {d.mean():+.3f} ± {se:.3f} SE)"


def _vs(agg: dict, a: tuple, b: tuple) -> str:
    """`compare` of a vs b, naming both settings and their calls."""
    if a not in agg or b not in agg:
        return f"{label(a)} vs {label(b)}: not measured"
    calls = (agg[a]["nfe_per_sample"], agg[b]["nfe_per_sample"])
    return (
        f"{label(a)} ({calls[0]:.0f} calls) vs {label(b)} ({calls[1]:.0f} calls): "
        f"{compare(agg, a, b)}"
    )


def frontier(points: dict[tuple, float], agg: dict) -> list[tuple]:
    """Pareto-optimal keys in (cost, Gen PPL) among λ = 0.1 settings with a cost."""
    pts = [(k, c, agg[k]["gen_ppl_corpus"][0]) for k, c in points.items() if k[0] == "mix"]
    best = [
        k
        for k, cx, cy in pts
        if not any(ox <= cx and oy <= cy and (ox < cx or oy < cy) for _, ox, oy in pts)
    ]
    return sorted(best, key=lambda k: points[k])


def _best(agg: dict, keys: list[tuple]) -> tuple | None:
    have = [k for k in keys if k in agg]
    return min(have, key=lambda k: agg[k]["gen_ppl_corpus"][0]) if have else None


def verdicts(agg: dict, costs: dict[str, dict[tuple, float]]) -> list[str]:
    """Claim-by-claim comparisons, computed from `agg` (no number is typed in)."""
    d2, g25 = ("mix", 2, "only"), "snapshot-g0.25-bL"
    gam = _best(agg, [("mix", 2, f"snapshot-g{g:g}-bL") for g in GAMMAS])
    blk = _best(agg, [("mix", 2, f"snapshot-g0.25-b{b if b else 'L'}") for b in REVISE_BLOCKS])
    lines = [
        "### What reproduces and what does not (computed comparisons)",
        "",
        "A difference counts when all three trained models agree on its sign and the mean "
        "paired difference of NLL/token exceeds twice its standard error (over models).",
        "",
        f"- a. Stage 2 (snapshot γ = 0.25, global) vs its draft, 2 tok/call: "
        f"{compare(agg, ('mix', 2, g25), d2)}; on the 1 tok/call draft: "
        f"{compare(agg, ('mix', 4, g25), ('mix', 4, 'only'))}; on the 4 tok/call draft: "
        f"{compare(agg, ('mix', 1, g25), ('mix', 1, 'only'))}.",
        f"- b. At γ = 0.25, snapshot vs random: "
        f"{compare(agg, ('mix', 2, g25), ('mix', 2, 'random-g0.25-bL'))}; snapshot vs "
        f"post-hoc: {compare(agg, ('mix', 2, g25), ('mix', 2, 'posthoc-g0.25-bL'))}; "
        f"masked (k = 8) vs snapshot: "
        f"{compare(agg, ('mix', 2, 'masked-g0.25-bL'), ('mix', 2, g25))}. At γ = 0.5, "
        f"snapshot vs random: "
        f"{compare(agg, ('mix', 2, 'snapshot-g0.5-bL'), ('mix', 2, 'random-g0.5-bL'))}; "
        f"masked vs snapshot: "
        f"{compare(agg, ('mix', 2, 'masked-g0.5-bL'), ('mix', 2, 'snapshot-g0.5-bL'))}.",
        f"- c. Lowest Gen PPL over γ: {label(gam) if gam else '–'}; γ = 1 (plain global "
        f"re-diffusion) vs draft: {compare(agg, ('mix', 2, 'snapshot-g1-bL'), d2)}.",
        f"- d. Lowest Gen PPL over revise blocks at γ = 0.25: {label(blk) if blk else '–'}; "
        f"global vs B = 4: {compare(agg, ('mix', 2, g25), ('mix', 2, 'snapshot-g0.25-b4'))}.",
        f"- e. Drafts, λ = 0.1 vs λ = 0 (2 tok/call): {compare(agg, d2, ('single', 2, 'only'))};"
        f" 1 tok/call: {compare(agg, ('mix', 4, 'only'), ('single', 4, 'only'))}; "
        f"4 tok/call: {compare(agg, ('mix', 1, 'only'), ('single', 1, 'only'))}. "
        f"Revision on the λ = 0 model (snapshot γ = 0.25 vs its draft): "
        f"{compare(agg, ('single', 2, g25), ('single', 2, 'only'))}; after the same "
        f"revision, λ = 0.1 vs λ = 0: {compare(agg, ('mix', 2, g25), ('single', 2, g25))}.",
        f"- f. Matched calls: {_vs(agg, d2, ('mix', 1, 'snapshot-g0.5-bL'))}; "
        f"{_vs(agg, ('mix', 4, 'only'), ('mix', 2, 'snapshot-g1-bL'))}. As an add-on to the "
        f"best draft: {_vs(agg, ('mix', 4, 'snapshot-g0.1-bL-t4'), ('mix', 4, 'only'))}; "
        f"{_vs(agg, ('mix', 4, 'masked-g0.25-bL'), ('mix', 4, 'only'))}.",
    ]
    for name, points in costs.items():
        keys = frontier(points, agg)
        revised = [k for k in keys if k[2] != "only"]
        lines.append(
            f"- f. Pareto-optimal in ({name}, Gen PPL), λ = 0.1: "
            + "; ".join(label(k) for k in keys)
            + f" ({len(revised)} of {len(keys)} use revision)."
        )
    return lines


def model_lines(args: argparse.Namespace) -> list[str]:
    """Last validation NELBO (nats/token, per block size) of each trained model."""
    head = "| model | seed | steps trained | last validation at | val NELBO/token by block size |"
    lines = [head + " oracle NLL, same rows |", "|---|---|---|---|---|---|"]
    root = ds_dir(args) / "models"
    for run in sorted(p for p in root.iterdir() if re.fullmatch(r"\w+-s\d+", p.name)):
        vals = [
            json.loads(x)
            for x in (run / "metrics.jsonl").read_text().splitlines()
            if "val_nelbo" in x
        ]
        if not vals:
            continue
        last = vals[-1]
        nelbo = ", ".join(f"B={b}: {v:.3f}" for b, v in last["val_nelbo"].items())
        oracle = last.get("oracle_val_nll")
        kind, seed = run.name.rsplit("-s", 1)
        lines.append(
            f"| {kind} | {seed} | {_steps_done(run)} | {last['step']} | {nelbo} | "
            f"{'–' if oracle is None else f'{oracle:.3f}'} |"
        )
    return lines


def stage_costs(args: argparse.Namespace) -> tuple[list[str], dict[str, dict[str, float]]]:
    """One table of the stage timings per device, and the timings per device name."""
    info, costs = {}, {}
    for kind, name in (("cuda", "GPU"), ("cpu", "CPU")):
        path = ds_dir(args) / f"timed-{kind}.json"
        if path.is_file():
            timed = json.loads(path.read_text())
            info[name], costs[name] = timed["info"], timed["costs"]
    if not costs:
        return [], {}
    lines = [
        "Stage timings, seconds per sample, min of 3 repeats on one batch, seed-0 λ = 0.1 "
        "model: "
        + "; ".join(
            f"{n} = {i['device']}, batch {i['batch']}, {i['threads']} torch CPU thread(s)"
            for n, i in info.items()
        )
        + ".",
        "",
        "| stage | " + " | ".join(costs) + " |",
        "|---" * (1 + len(costs)) + "|",
    ]
    stages = list(dict.fromkeys(k for c in costs.values() for k in c))
    for k in stages:
        cells = [f"{c[k]:.5f}" if k in c else "–" for c in costs.values()]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return [*lines, ""], costs


def supplement(args: argparse.Namespace, costs: dict[str, dict[str, float]]) -> list[str]:
    """Seed-0 table with the extra draft (4/3 tok/call) beside every λ = 0.1 setting."""
    path = ds_dir(args) / "rows-extra.json"
    if not path.is_file():
        return []
    rows = [r for r in json.loads((ds_dir(args) / "rows.json").read_text()) if r["seed"] == 0]
    agg = aggregate(rows + json.loads(path.read_text()))
    # only devices whose timings include the extra draft: a frontier must see every draft
    full = {k: c for k, c in costs.items() if f"draft-s{EXTRA_STEPS}" in c}
    secs = {k: modelled_seconds(agg, c) for k, c in full.items()}
    keys = sorted((k for k in agg if k[0] == "mix"), key=lambda k: agg[k]["nfe_per_sample"])
    out = [
        "### f (supplement). Every λ = 0.1 setting with one more draft, 4/3 tok/call "
        "(seed-0 model only, no ±)",
        "",
        *table(agg, keys, None, secs),
        "",
    ]
    points = {"NFE": {k: agg[k]["nfe_per_sample"] for k in agg}}
    points.update({f"{k} seconds": v for k, v in secs.items()})
    for name, pts in points.items():
        best = frontier(pts, agg)
        used = sum(k[2] != "only" for k in best)
        out.append(
            f"- Pareto-optimal in ({name}, Gen PPL), seed-0 model: "
            + "; ".join(label(k) for k in best)
            + f" ({used} of {len(best)} use revision)."
        )
    return [*out, ""]


@dataclass(frozen=True)
class Measured:
    """What a report reads once: judged rows, their aggregate, stage timings per device."""

    rows: list[dict[str, Any]]
    agg: dict[tuple[str, int, str], dict[str, Any]]
    timing_lines: list[str]
    costs: dict[str, dict[str, float]]
    secs: dict[str, dict[tuple, float]]

    @classmethod
    def load(cls, args: argparse.Namespace) -> Measured:
        rows = json.loads((ds_dir(args) / "rows.json").read_text())
        agg = aggregate(rows)
        timing_lines, costs = stage_costs(args)
        secs = {k: modelled_seconds(agg, c) for k, c in costs.items()}
        return cls(rows, agg, timing_lines, costs, secs)


def section(args: argparse.Namespace, m: Measured) -> str:
    """The markdown of one dataset's study section (every number from rows.json)."""
    ds = DATASETS[args.dataset]
    rows, agg, timing_lines, costs, secs = m.rows, m.agg, m.timing_lines, m.costs, m.secs
    floor = rows[0].get("oracle_floor_ppl")
    seeds = sorted({r["seed"] for r in rows})
    n = min(r["n"] for r in rows)
    dropped = sum(r["dropped"] for r in rows)
    judge = (
        "the exact oracle likelihood of the language"
        if ds.judge == "oracle"
        else "an sbd `tiny` model trained with `--block 1` (autoregressive, every token "
        "masked: `--eps-min 1`) on the same data, training seed 0"
    )
    mix2, g25 = ("mix", 2, "only"), "snapshot-g0.25-bL"
    out = [
        f"## The paper's claims at small scale: {ds.title}",
        "",
        f"Trained models: `tiny` (2 layers, d 128) with the tiny preset's optimiser, "
        f"λ = 0.1 (mix-scale, blocks {{4, {ds.seq_len}}}) and λ = 0 (single-scale B = 4), "
        f"training seeds {seeds}; each model samples with its training seed. At least {n} "
        "samples per setting and model. **± is the std over the trained models**; "
        "differences are judged paired (same model, same draft). Draft B(1) = 4 with an "
        "exact KV cache, nucleus top-p 0.9; revise blocks reveal 2 tokens per call unless "
        f"a row says otherwise. Judge: {judge}."
        + (f" Oracle floor (true samples): Gen PPL {floor:.3f}." if floor else "")
        + f" Samples dropped for a BOS after position 0: {dropped}.",
        "",
        "Commands:",
        "```bash",
        *args.commands,
        "```",
        "",
        "Trained models (last validation, EMA weights):",
        "",
        *model_lines(args),
        "",
        *timing_lines,
        "s/sample columns below: the stage timings summed per setting (draft + remask + "
        "revise), global-block settings only.",
        "",
        "### a. Stage 2 (snapshot γ = 0.25 + one global revise block) vs the draft",
        "",
    ]
    keys = [(m, s, x) for s in DRAFT_STEPS for m, x in (("mix", "only"), ("mix", g25))]
    out += table(agg, keys, None, secs)
    out += ["", "### b. Remask strategies (λ = 0.1, draft 2 tok/call, global revise)", ""]
    out += ["NFE counts the masked selector's k = 8 scoring passes and post-hoc's one pass.", ""]
    keys = [mix2] + [("mix", 2, f"{s}-g{g:g}-bL") for g in (0.25, 0.5) for s in STRATEGIES]
    out += table(agg, keys, mix2, secs)
    out += ["", "### c. The γ curve (snapshot, global revise; γ = 1 re-diffuses the whole draft)"]
    out += [""]
    out += table(agg, [mix2] + [("mix", 2, f"snapshot-g{g:g}-bL") for g in GAMMAS], mix2, secs)
    out += ["", "### d. Revise block B(2) at γ = 0.25 (snapshot)", ""]
    keys = [mix2] + [("mix", 2, f"snapshot-g0.25-b{b if b else 'L'}") for b in REVISE_BLOCKS]
    out += table(agg, keys, mix2, secs)
    out += ["", "### e. Mix-scale (λ = 0.1) vs single-scale B = 4 (λ = 0), same steps", ""]
    keys = [(m, s, "only") for s in DRAFT_STEPS for m in MODELS]
    keys += [(m, 2, f"snapshot-g{g:g}-bL") for g in (0.1, 0.25, 0.5) for m in MODELS]
    out += table(agg, keys, None, secs)
    out += ["", "### f. The frontier (λ = 0.1 model, every setting, by NFE)", ""]
    keys = sorted((k for k in agg if k[0] == "mix"), key=lambda k: agg[k]["nfe_per_sample"])
    out += table(agg, keys, None, secs)
    out += ["", *supplement(args, costs)]
    out += [f"![Gen PPL vs NFE and seconds](results-frontier-{ds.name}.png)", ""]
    nfe = {k: a["nfe_per_sample"] for k, a in agg.items()}
    points = {"NFE": nfe, **{f"{k} seconds": v for k, v in secs.items()}}
    out += verdicts(agg, points)
    return "\n".join(out) + "\n"


def plot(args: argparse.Namespace, m: Measured) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sbdcli.artifacts import atomic_path

    rows, agg, secs = m.rows, m.agg, m.secs
    axes_spec = [("NFE per sample", {k: a["nfe_per_sample"] for k, a in agg.items()})]
    axes_spec += [(f"{name} seconds per sample (stage timings)", s) for name, s in secs.items()]
    fig, axes = plt.subplots(1, len(axes_spec), figsize=(6 * len(axes_spec), 4.5))
    axes = np.atleast_1d(axes)
    for ax, (xl, xs) in zip(axes, axes_spec, strict=True):
        for i, steps in enumerate(DRAFT_STEPS):
            for k, a in agg.items():
                if k[0] != "mix" or k[1] != steps or k not in xs:
                    continue
                marker = "o" if k[2] == "only" else ("s" if "snapshot" in k[2] else "^")
                y, e = a["gen_ppl_corpus"]
                ax.errorbar(xs[k], y, yerr=e, fmt=marker, color=f"C{i}", ms=5, capsize=2)
            ax.plot([], [], "o", color=f"C{i}", label=f"draft {DRAFT_BLOCK / steps:.3g} tok/call")
        floor = rows[0].get("oracle_floor_ppl")
        if floor:
            ax.axhline(floor, color="grey", ls="--", lw=1, label="oracle floor")
        ax.set_xlabel(xl)
        ax.set_ylabel("Gen PPL")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"{DATASETS[args.dataset].title}, λ = 0.1: o draft only, s snapshot revise, "
        "^ other remask strategies (mean ± std over trained models)",
        fontsize=9,
    )
    fig.tight_layout()
    path = args.doc.parent / f"results-frontier-{args.dataset}.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_section(doc: Path, marker: str, text: str) -> None:
    """Replace (or append) the section `marker` of `doc`, keeping every other section."""
    from sbdcli.artifacts import atomic_file

    begin, end = f"<!-- results:{marker} -->", f"<!-- /results:{marker} -->"
    old = doc.read_text() if doc.is_file() else "# Results\n"
    block = f"{begin}\n{text}{end}"
    if begin in old and end in old:
        new = old[: old.index(begin)] + block + old[old.index(end) + len(end) :]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    with atomic_file(doc) as handle:
        handle.write(new)


COMMANDS = """
STEPS=5000 N=512 BATCH=512 TRAIN_S=240 SAMPLE_S=150 EVAL_S=80 TIME_S=60 DEVICE=cuda \\
  bash bench/study_run.sh runs/study  # both datasets: prepare, train, sample, judge, GPU timings
python bench/study.py extra --dataset {dataset} --device cpu   # 4/3 tok/call, seed-0 model
python bench/study.py timing --dataset {dataset} --device cpu  # CPU stage timings
python bench/study.py report --dataset {dataset}
"""


def cmd_report(args: argparse.Namespace) -> None:
    args.commands = [c for c in COMMANDS.format(dataset=args.dataset).splitlines() if c]
    if args.history:
        args.commands.insert(1, f"# this run: {args.history}")
    measured = Measured.load(args)
    text = section(args, measured)
    notes = args.notes or ROOT / "bench" / "study_notes" / f"{args.dataset}.md"
    if notes.is_file():
        text += "\n" + notes.read_text()
    write_section(args.doc, f"study-{args.dataset}", text)
    plot(args, measured)


# --------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    steps = ("prepare", "train", "sample", "eval", "extra", "timing", "report")
    parser.add_argument("step", choices=steps)
    parser.add_argument("--dataset", choices=tuple(DATASETS), default="synthetic")
    parser.add_argument("--out", type=Path, default=Path("runs/study"), help="artifact root")
    parser.add_argument("--text", type=Path, default=SHAKESPEARE, help="tinyshakespeare.txt")
    parser.add_argument("--model", choices=(*MODELS, "judge"), default="mix")
    parser.add_argument("--seed", type=int, default=0, help="training and sampling seed")
    parser.add_argument("--steps", type=int, default=4000, help="train: optimizer steps")
    parser.add_argument("--n", type=int, default=512, help="samples per setting and model")
    parser.add_argument("--batch", type=int, default=64, help="sample: rows per call")
    parser.add_argument(
        "--seeds",
        type=lambda s: tuple(int(x) for x in s.split(",")),
        default=(0, 1, 2),
        help="eval: model seeds, comma separated",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--time-batch", type=int, default=64, help="timing: batch")
    parser.add_argument(
        "--draft-steps",
        type=lambda x: tuple(int(v) for v in x.split(",")),
        default=None,
        help="timing: only these drafts (steps per block), added to the existing timing",
    )
    parser.add_argument(
        "--notes", type=Path, default=None, help="report: text to append (bench/study_notes/D.md)"
    )
    parser.add_argument("--history", default="", help="report: how the run went")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "results.md")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    steps = {
        "prepare": cmd_prepare,
        "train": cmd_train,
        "sample": cmd_sample,
        "eval": cmd_eval,
        "extra": cmd_extra,
        "timing": cmd_timing,
        "report": cmd_report,
    }
    steps[args.step](args)


if __name__ == "__main__":
    main()

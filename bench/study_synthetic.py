"""The small-scale study of the paper's claims on the synthetic default (docs/results.md).

What it is: a reproducible driver over library calls only (prepare, train, draft, remask,
revise, oracle evaluation) that measures items a-f of the study on `topic-markov`
(L = 128) and writes its section of docs/results.md between the
`<!-- results:study -->` markers (other sections are kept), plus docs/results-frontier.png.
What it is not: a test, or a source of any hard-coded number (every number in the doc
comes from the oracle evaluation of the sample files this script writes).

Steps (each reuses finished artifacts under --out):
    python bench/study_synthetic.py prepare
    python bench/study_synthetic.py train --lam 0.1 --steps N &   # the two trainings may
    python bench/study_synthetic.py train --lam 0 --steps N &     # run in parallel
    python bench/study_synthetic.py sample --shard 0/2 &          # sampling grid, 2 shards
    python bench/study_synthetic.py sample --shard 1/2 &
    python bench/study_synthetic.py timing                        # min-of-3 stage timings
    python bench/study_synthetic.py eval                          # oracle scores of every set
    python bench/study_synthetic.py report                        # oracle eval + doc
`all` runs every step in one process. Seeds vary the sampling (and remasking) only:
both models are trained once, with training seed 0.
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
MODELS = {"mix": 0.1, "single": 0.0}
"""Run name -> mix-scale lambda (probability of a whole-sequence block step)."""
DRAFT_BLOCK = 4
BOS = 64  # topic-markov: V = 64 words, BOS = 64 (checked against the manifest)
REVISE_TOKENS_PER_CALL = 2
GAMMAS = (0.1, 0.25, 0.5, 0.75, 1.0)
REVISE_BLOCKS = (4, 16, 64, 0)  # 0 = the whole sequence (L)
STRATEGIES = ("snapshot", "random", "posthoc", "masked")
DRAFT_STEPS = (4, 2, 1)  # calls per block of 4: 1, 2 and 4 tokens per call


@dataclass(frozen=True)
class Revise:
    """One revise setting applied to a draft: remask (strategy, gamma), revise block."""

    strategy: str
    gamma: float
    block: int  # 0 = global

    @property
    def name(self) -> str:
        blk = "L" if self.block == 0 else str(self.block)
        return f"{self.strategy}-g{self.gamma:g}-b{blk}"


@dataclass(frozen=True)
class Group:
    """A draft (model, draft steps per block, seed) and the revisions run on it."""

    model: str
    steps: int
    seed: int
    revises: tuple[Revise, ...]

    @property
    def draft_name(self) -> str:
        return f"draft-s{self.steps}"

    def cost(self) -> float:
        """Rough relative cost (calls; a revise call ~2 draft calls, masked k = 8 extra)."""
        draft = 128 / DRAFT_BLOCK * self.steps
        rev = sum(
            2 * (r.gamma * 128 / 2 + (8 if r.strategy == "masked" else 0)) for r in self.revises
        )
        return draft + rev


def grid(seeds: tuple[int, ...]) -> list[Group]:
    """Every (model, draft, seed) group of the study and its revise settings."""
    main: list[Revise] = [Revise("snapshot", g, 0) for g in GAMMAS]
    main += [Revise(s, 0.25, 0) for s in STRATEGIES if s != "snapshot"]
    main += [Revise("snapshot", 0.25, b) for b in REVISE_BLOCKS if b != 0]
    groups = []
    for seed in seeds:
        groups.append(Group("mix", 2, seed, tuple(main)))
        frontier = (Revise("snapshot", 0.25, 0), Revise("snapshot", 0.5, 0))
        groups.append(Group("mix", 4, seed, frontier))
        groups.append(Group("mix", 1, seed, frontier))
        single = (Revise("snapshot", 0.1, 0), Revise("snapshot", 0.25, 0))
        single += (Revise("snapshot", 0.5, 0),)
        groups.append(Group("single", 2, seed, single))
    return groups


# --------------------------------------------------------------------------- steps
def cmd_prepare(args: argparse.Namespace) -> None:
    from sbdcli.data import prepare_synthetic

    data = args.out / "data"
    if (data / "manifest.json").is_file():
        print(f"reusing {data}", file=sys.stderr)
        return
    prepare_synthetic(data, seed=0, command=" ".join(map(shlex.quote, sys.argv)))


def cmd_train(args: argparse.Namespace) -> None:
    from sbdcli.config import train_config
    from sbdcli.data import read_manifest
    from sbdcli.train import setup

    data = args.out / "data"
    seq_len = int(read_manifest(data)["seq_len"])
    name = next(k for k, v in MODELS.items() if v == args.lam)
    run = args.out / name
    if (run / "model.safetensors").is_file() and _steps_done(run) >= args.steps:
        print(f"reusing {run}", file=sys.stderr)
        return
    cfg = train_config(
        "tiny",
        steps=args.steps,
        block_small=DRAFT_BLOCK,
        block_large=seq_len,
        mix_lambda=args.lam,
        seed=0,
        val_every=max(args.steps // 4, 1),
        save_every=max(args.steps // 4, 1),
        device="cpu",
    )
    resume = run.exists() and _steps_done(run) > 0
    start = time.perf_counter()
    trainer = setup(cfg, data, run, resume=resume, runs_root=args.out)
    trainer.fit(None)
    print(f"trained {run} in {time.perf_counter() - start:.0f} s", file=sys.stderr)


def _steps_done(run: Path) -> int:
    state = run / "state" / "trainer.json"
    return int(json.loads(state.read_text()).get("step", 0)) if state.is_file() else 0


def _set_path(out: Path, group: Group, name: str) -> Path:
    return out / "samples" / group.model / f"seed{group.seed}" / f"{group.draft_name}-{name}.jsonl"


def _complete(path: Path, n: int) -> bool:
    from sbdcli import artifacts

    return path.is_file() and len(list(artifacts.read_records(str(path)))) == n


def run_group(group: Group, out: Path, n: int, ref: Any) -> None:
    """Draft n samples, then every revise of the group; reuse complete files."""
    from sbdcli import artifacts, pipeline
    from sbdcli.sampler import SamplerConfig

    length = ref.model.config.seq_len
    dpath = _set_path(out, group, "only")
    if not _complete(dpath, n):
        scfg = SamplerConfig(block_size=DRAFT_BLOCK, steps_per_block=group.steps)
        prompts = pipeline.draft_prompts(ref, n, group.seed, None)
        drafts: list[dict[str, Any]] = []
        for batch in pipeline.batched(prompts, 64):
            drafts.extend(pipeline.draft_batch(ref, batch, length, scfg, group.seed))
        dpath.parent.mkdir(parents=True, exist_ok=True)
        artifacts.write_records(drafts, str(dpath))
    drafts = list(artifacts.read_records(str(dpath)))
    for rev in group.revises:
        path = _set_path(out, group, rev.name)
        if _complete(path, n):
            continue
        block = length if rev.block == 0 else rev.block
        # reveal REVISE_TOKENS_PER_CALL of the expected masked tokens of a block per call
        per_block = math.floor(rev.gamma * (length - 1)) * block / length
        steps = max(1, math.ceil(per_block / REVISE_TOKENS_PER_CALL))
        rcfg = pipeline.RemaskConfig(gamma=rev.gamma, strategy=rev.strategy, seed=group.seed)
        scfg = SamplerConfig(block_size=rev.block, steps_per_block=steps)
        records: list[dict[str, Any]] = []
        for batch in pipeline.batched(drafts, 64):
            remasked = pipeline.remask_batch([dict(r) for r in batch], rcfg, ref)
            records.extend(pipeline.revise_batch(remasked, ref, scfg, group.seed))
        artifacts.write_records(records, str(path))


def cmd_sample(args: argparse.Namespace) -> None:
    from sbdcli import pipeline

    torch.set_num_threads(1)
    index, total = (int(x) for x in args.shard.split("/"))
    groups = sorted(grid(args.seeds), key=lambda g: -g.cost())
    loads = [0.0] * total
    mine = []
    for g in groups:  # greedy balance by estimated cost
        k = loads.index(min(loads))
        loads[k] += g.cost()
        if k == index:
            mine.append(g)
    refs = {m: pipeline.load_model_ref(args.out / m, "cpu") for m in MODELS}
    for g in mine:
        start = time.perf_counter()
        run_group(g, args.out, args.n, refs[g.model])
        took = time.perf_counter() - start
        print(f"{g.model} {g.draft_name} seed {g.seed}: {took:.0f} s", file=sys.stderr)


# --------------------------------------------------------------------------- report
def evaluate_all(out: Path, seeds: tuple[int, ...], n: int) -> list[dict[str, Any]]:
    """Oracle summary of every sample file: one row per (model, draft, setting, seed)."""
    from sbdcli import artifacts
    from sbdcli import evaluate as ev
    from sbdcli.data import read_manifest

    assert int(read_manifest(out / "data")["bos_id"]) == BOS

    opts = ev.GenPplOptions(evaluator="oracle", data_dir=out / "data", group=False, seed=0)
    rows = []
    for g in grid(seeds):
        for name in ["only", *[r.name for r in g.revises]]:
            path = _set_path(out, g, name)
            if not _complete(path, n):
                continue
            every = list(artifacts.read_records(str(path)))
            # the sampler can emit BOS after position 0, which the oracle rejects: such
            # samples are dropped and counted (reported beside the tables)
            recs = [r for r in every if BOS not in r["tokens"][r["prompt_len"] :]]
            (s,) = ev.evaluate_sets([(path.name, recs)], opts)
            keep = ("nll_per_token", "gen_ppl_corpus", "entropy_per_sample_mean")
            keep += ("nfe_per_sample", "seconds_per_sample", "oracle_floor_ppl")
            keep += ("oracle_floor_nll_per_token",)
            row = {k: s.get(k) for k in keep}
            row.update(model=g.model, draft=g.steps, setting=name, seed=g.seed, n=len(recs))
            row["dropped"] = len(every) - len(recs)
            rows.append(row)
    return rows


def aggregate(rows: list[dict[str, Any]]) -> dict[tuple[str, int, str], dict[str, Any]]:
    """Mean and std over sampling seeds per (model, draft steps, setting)."""
    keys: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for r in rows:
        keys.setdefault((r["model"], r["draft"], r["setting"]), []).append(r)
    agg = {}
    for key, rs in keys.items():
        a: dict[str, Any] = {"seeds": len(rs), "n": rs[0]["n"]}
        for k in ("gen_ppl_corpus", "nll_per_token", "entropy_per_sample_mean"):
            v = np.array([r[k] for r in rs], dtype=float)
            a[k] = (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0)
        for k in ("nfe_per_sample", "seconds_per_sample"):
            a[k] = float(np.mean([r[k] or 0.0 for r in rs]))
        agg[key] = a
    return agg


def _pm(value: tuple[float, float], digits: int = 2) -> str:
    return f"{value[0]:.{digits}f} ± {value[1]:.{digits}f}"


def _label(model: str, steps: int, setting: str) -> str:
    tpc = DRAFT_BLOCK // steps
    draft = f"λ={MODELS[model]:g} draft {tpc} tok/call"
    if setting == "only":
        return draft
    m = re.match(r"(\w+)-g([\d.]+)-b(\w+)", setting)
    assert m is not None
    return f"{draft} + {m[1]} γ={m[2]} revise B={m[3]}"


def table(agg: dict, keys: list[tuple[str, int, str]], base: tuple | None = None) -> list[str]:
    head = "| setting | Gen PPL (oracle) | NLL/token | entropy | NFE | s/sample | ms/call |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    if base is not None and base in agg:
        lines[0] += " Δ NLL vs draft |"
        lines[1] += "---|"
    for key in keys:
        if key not in agg:
            lines.append(f"| {_label(*key)} | (not run) |")
            continue
        a = agg[key]
        ms = 1000 * a["seconds_per_sample"] / a["nfe_per_sample"] if a["nfe_per_sample"] else 0
        line = (
            f"| {_label(*key)} | {_pm(a['gen_ppl_corpus'])} | {_pm(a['nll_per_token'], 3)} | "
            f"{_pm(a['entropy_per_sample_mean'], 3)} | {a['nfe_per_sample']:.1f} | "
            f"{a['seconds_per_sample']:.4f} | {ms:.3f} |"
        )
        if base is not None and base in agg:
            d = a["nll_per_token"][0] - agg[base]["nll_per_token"][0]
            line += f" {d:+.3f} |"
        lines.append(line)
    return lines


def frontier(agg: dict, x: str) -> list[tuple[str, int, str]]:
    """Pareto-optimal settings (lower Gen PPL and lower x) among all mix-model settings."""
    pts = [(k, a[x], a["gen_ppl_corpus"][0]) for k, a in agg.items() if k[0] == "mix"]
    return [
        k
        for k, cx, cy in pts
        if not any(ox <= cx and oy <= cy and (ox < cx or oy < cy) for _, ox, oy in pts)
    ]


def plot(agg: dict, path: Path, floor: float | None, n_seeds: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sbdcli.artifacts import atomic_path

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    for ax, x, xl in (
        (axes[0], "nfe_per_sample", "NFE per sample"),
        (axes[1], "seconds_per_sample", "seconds per sample"),
    ):
        for i, steps in enumerate(DRAFT_STEPS):
            pts = [(k, a) for k, a in agg.items() if k[0] == "mix" and k[1] == steps]
            for k, a in pts:
                marker = "o" if k[2] == "only" else ("s" if "snapshot" in k[2] else "^")
                y, e = a["gen_ppl_corpus"]
                ax.errorbar(a[x], y, yerr=e, fmt=marker, color=f"C{i}", ms=5, capsize=2)
                if k[2] != "only" and "-bL" in k[2]:
                    ax.annotate(
                        k[2].replace("-bL", ""),
                        (a[x], y),
                        fontsize=6,
                        xytext=(3, 3),
                        textcoords="offset points",
                    )
            ax.plot([], [], "o", color=f"C{i}", label=f"draft {DRAFT_BLOCK // steps} tok/call")
        if floor:
            ax.axhline(floor, color="grey", ls="--", lw=1, label="oracle floor")
        ax.set_xlabel(xl)
        ax.set_ylabel("Gen PPL (oracle, corpus)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(
        "λ=0.1 model: o draft only, s snapshot revise, ^ other remask strategies "
        f"(mean ± std over {n_seeds} sampling seeds)",
        fontsize=9,
    )
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def timed_costs(out: Path, repeats: int = 3, batch: int = 64) -> dict[str, float]:
    """Min-of-`repeats` seconds per sample of each stage on one batch (robust to load).

    Wall-clock in the records is taken under a shared, loaded CPU; the minimum over
    repeats is the least-disturbed measurement of the same work.
    """
    from sbdcli import pipeline
    from sbdcli.sampler import SamplerConfig

    ref = pipeline.load_model_ref(out / "mix", "cpu")
    length = ref.model.config.seq_len
    prompts = pipeline.draft_prompts(ref, batch, 0, None)

    def best(fn: Any) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times) / batch

    costs: dict[str, float] = {}
    for steps in DRAFT_STEPS:
        scfg = SamplerConfig(block_size=DRAFT_BLOCK, steps_per_block=steps)
        costs[f"draft-s{steps}"] = best(
            lambda c=scfg: pipeline.draft_batch(ref, prompts, length, c, 0)
        )
    drafts = pipeline.draft_batch(ref, prompts, length, SamplerConfig(DRAFT_BLOCK, 2), 0)
    for strategy in STRATEGIES:
        rcfg = pipeline.RemaskConfig(gamma=0.25, strategy=strategy, seed=0)
        costs[f"remask-{strategy}"] = best(
            lambda c=rcfg: pipeline.remask_batch([dict(r) for r in drafts], c, ref)
        )
    remasked = pipeline.remask_batch([dict(r) for r in drafts], pipeline.RemaskConfig(), ref)
    for gamma in (0.25, 0.5):
        steps = max(1, math.ceil(math.floor(gamma * (length - 1)) / REVISE_TOKENS_PER_CALL))
        rem = pipeline.remask_batch(
            [dict(r) for r in drafts], pipeline.RemaskConfig(gamma=gamma), ref
        )
        scfg = SamplerConfig(block_size=0, steps_per_block=steps)
        costs[f"revise-g{gamma:g}"] = best(
            lambda c=scfg, r=rem: pipeline.revise_batch([dict(x) for x in r], ref, c, 0)
        )
    del remasked
    return costs


def _cmp(agg: dict, a: tuple, b: tuple) -> str:
    """'lower'/'higher'/'no clear difference' of Gen PPL of a vs b (2 std of the diff)."""
    if a not in agg or b not in agg:
        return "not measured"
    (ma, sa), (mb, sb) = agg[a]["gen_ppl_corpus"], agg[b]["gen_ppl_corpus"]
    noise = 2 * math.hypot(sa, sb)
    word = "lower" if ma < mb - noise else "higher" if ma > mb + noise else "no clear difference"
    return f"{word} ({ma:.2f} vs {mb:.2f}, 2σ = {noise:.2f})"


def verdicts(agg: dict) -> list[str]:
    """Claim-by-claim comparisons, computed from `agg` (no number is typed in)."""
    d2, g25 = ("mix", 2, "only"), "snapshot-g0.25-bL"
    best_gamma = min(
        GAMMAS,
        key=lambda g: agg.get(("mix", 2, f"snapshot-g{g:g}-bL"), {"gen_ppl_corpus": (1e9, 0)})[
            "gen_ppl_corpus"
        ][0],
    )
    best_block = min(
        REVISE_BLOCKS,
        key=lambda b: agg.get(
            ("mix", 2, f"snapshot-g0.25-b{b if b else 'L'}"), {"gen_ppl_corpus": (1e9, 0)}
        )["gen_ppl_corpus"][0],
    )
    lines = [
        "### What reproduces and what does not (computed comparisons)",
        "",
        "A difference counts only when it exceeds 2 std (over sampling seeds) of the "
        "difference; sampling-seed std understates the real uncertainty (one trained model).",
        "",
        f"- a. Stage 2 vs draft (2 tok/call): Gen PPL {_cmp(agg, ('mix', 2, g25), d2)}; "
        f"on the 1 tok/call draft: {_cmp(agg, ('mix', 4, g25), ('mix', 4, 'only'))}; "
        f"on the 4 tok/call draft: {_cmp(agg, ('mix', 1, g25), ('mix', 1, 'only'))}.",
        f"- b. Snapshot vs random: {_cmp(agg, ('mix', 2, g25), ('mix', 2, 'random-g0.25-bL'))}; "
        f"snapshot vs post-hoc: {_cmp(agg, ('mix', 2, g25), ('mix', 2, 'posthoc-g0.25-bL'))}; "
        f"masked (k = 8) vs snapshot: "
        f"{_cmp(agg, ('mix', 2, 'masked-g0.25-bL'), ('mix', 2, g25))}.",
        f"- c. Best γ (snapshot, global revise): {best_gamma:g}; γ = 1 (plain global "
        f"re-diffusion) vs draft: {_cmp(agg, ('mix', 2, 'snapshot-g1-bL'), d2)}.",
        f"- d. Best revise block at γ = 0.25: "
        f"{'L' if best_block == 0 else best_block}; global vs B = 4: "
        f"{_cmp(agg, ('mix', 2, g25), ('mix', 2, 'snapshot-g0.25-b4'))}.",
        f"- e. Drafts, λ = 0.1 vs λ = 0: {_cmp(agg, d2, ('single', 2, 'only'))}; after "
        f"snapshot γ = 0.5 revise: "
        f"{_cmp(agg, ('mix', 2, 'snapshot-g0.5-bL'), ('single', 2, 'snapshot-g0.5-bL'))}.",
        f"- f. At 64 calls, 2 tok/call draft vs 4 tok/call draft + snapshot γ = 0.5 revise: "
        f"{_cmp(agg, d2, ('mix', 1, 'snapshot-g0.5-bL'))}; at ~128 calls, 1 tok/call draft "
        f"vs 2 tok/call draft + snapshot γ = 1 revise: "
        f"{_cmp(agg, ('mix', 4, 'only'), ('mix', 2, 'snapshot-g1-bL'))}; as an add-on to "
        f"the best draft (1 tok/call + snapshot γ = 0.25 vs 1 tok/call alone): "
        f"{_cmp(agg, ('mix', 4, g25), ('mix', 4, 'only'))}.",
    ]
    return lines


def model_lines(out: Path) -> list[str]:
    """Last validation NELBO (nats/token, per block size) of each trained model."""
    lines = ["| model | steps | val NELBO/token by block size | oracle val NLL/token |"]
    lines.append("|---|---|---|---|")
    for name, lam in MODELS.items():
        vals = [
            json.loads(x)
            for x in (out / name / "metrics.jsonl").read_text().splitlines()
            if "val_nelbo" in x
        ]
        last = vals[-1]
        nelbo = ", ".join(f"B={b}: {v:.3f}" for b, v in last["val_nelbo"].items())
        lines.append(f"| λ = {lam:g} | {last['step']} | {nelbo} | {last['oracle_val_nll']:.3f} |")
    return lines


def _fmt_keys(keys: list[tuple[str, int, str]]) -> str:
    return ", ".join(_label(*k) for k in keys)


def section(agg: dict, args: argparse.Namespace, floor: float, floor_nll: float) -> str:
    """The markdown of the study section (every number from `agg`)."""
    mix2 = ("mix", 2, "only")
    g25 = "snapshot-g0.25-bL"
    out = [
        "## The paper's claims at small scale: synthetic `topic-markov` (L = 128)",
        "",
        f"Two `tiny` models (2 layers, d 128), {args.steps} optimizer steps each, training "
        "seed 0, the tiny preset's lr / warmup / noise intervals: λ = 0.1 (mix-scale, blocks "
        "{4, 128}) and λ = 0 (single-scale B = 4). "
        f"{args.n} samples per setting and seed; sampling seeds {list(args.seeds)} "
        "(**the seeds vary sampling and random remasking only, not training**: the ± is "
        "the std over sampling seeds, not over trained models). Draft B(1) = 4 with an "
        f"exact KV cache, nucleus top-p 0.9; revise blocks reveal {REVISE_TOKENS_PER_CALL} "
        "tokens per call (steps per block = ceil(expected masked per block / 2)). Judge: "
        "the exact oracle likelihood. "
        f"Oracle floor (true samples): Gen PPL {floor:.3f} (NLL/token {floor_nll:.3f}). "
        "Seconds are wall-clock on a shared, heavily loaded 2-core CPU, one thread per "
        "process, batch 64: compare them with each other only, loosely.",
        "",
        "Commands:",
        "```bash",
        *args.commands,
        "```",
        "",
        "Samples containing BOS after position 0 (emitted by the sampler; the oracle "
        "rejects them) were dropped before scoring: "
        + ("; ".join(args.dropped) if args.dropped else "none")
        + f" (of {args.n} per file).",
        "",
        "Trained models (last validation, EMA weights):",
        "",
        *model_lines(args.out),
        "",
        "### a. Stage 2 (snapshot γ = 0.25 + one global revise block) vs the draft",
    ]
    keys = [
        mix2,
        ("mix", 2, g25),
        ("mix", 4, "only"),
        ("mix", 4, g25),
        ("mix", 1, "only"),
        ("mix", 1, g25),
    ]
    out += table(agg, keys, None)
    out += ["", "### b. Remask strategies at γ = 0.25 (λ = 0.1, draft 2 tok/call, global revise)"]
    out += ["", "NFE counts the masked selector's k = 8 scoring passes and post-hoc's one pass."]
    keys = [mix2] + [("mix", 2, f"{s}-g0.25-bL") for s in STRATEGIES]
    out += table(agg, keys, mix2)
    out += [
        "",
        "### c. The γ curve (snapshot, global revise; γ = 1 is plain global diffusion "
        "over the whole draft)",
        "",
    ]
    out += table(agg, [mix2] + [("mix", 2, f"snapshot-g{g:g}-bL") for g in GAMMAS], mix2)
    out += ["", "### d. Revise block B(2) at γ = 0.25 (snapshot)", ""]
    keys = [mix2] + [("mix", 2, f"snapshot-g0.25-b{b if b else 'L'}") for b in REVISE_BLOCKS]
    out += table(agg, keys, mix2)
    out += ["", "### e. Mix-scale (λ = 0.1) vs single-scale B = 4 (λ = 0), same steps", ""]
    single = ("single", 2, "only")
    for lam_key, base in (("mix", mix2), ("single", single)):
        names = ["only", "snapshot-g0.1-bL", g25, "snapshot-g0.5-bL"]
        out += table(agg, [(lam_key, 2, n) for n in names], base)
        out.append("")
    out += ["### f. The frontier (λ = 0.1 model, every setting above)", ""]
    keys = [k for k in agg if k[0] == "mix"]
    keys.sort(key=lambda k: agg[k]["nfe_per_sample"])
    out += table(agg, keys, None)
    out += [
        "",
        f"Seconds per sample, min of 3 repeats on one batch of {args.time_batch} "
        "(λ = 0.1 model; the "
        "least-disturbed timing on the loaded machine; remask at γ = 0.25, revise "
        "global):",
        "",
        "| stage | s/sample |",
        "|---|---|",
    ]
    for k, v in args.timed.items():
        name = k
        if k.startswith("draft-s"):
            name = f"draft, {DRAFT_BLOCK // int(k[7:])} tok/call (S = {k[7:]})"
        out.append(f"| {name} | {v:.4f} |")
    modelled = {}
    for k, a in agg.items():
        m = re.match(r"(\w+)-g([\d.]+)-bL", k[2])
        parts = [f"draft-s{k[1]}"]
        if m:
            parts += [f"remask-{m[1]}", f"revise-g{m[2]}"]
        if k[0] == "mix" and (k[2] == "only" or m) and all(p in args.timed for p in parts):
            modelled[k] = {**a, "seconds_per_sample": sum(args.timed[p] for p in parts)}
    out += [
        "",
        "Pareto-optimal in (modelled min-of-3 seconds, Gen PPL), among the settings "
        f"timed above: {_fmt_keys(frontier(modelled, 'seconds_per_sample'))}.",
    ]
    out += [
        "",
        f"Pareto-optimal in (NFE, Gen PPL): {_fmt_keys(frontier(agg, 'nfe_per_sample'))}.",
        "",
        "Pareto-optimal in (recorded seconds, Gen PPL): "
        f"{_fmt_keys(frontier(agg, 'seconds_per_sample'))}.",
        "",
        "![Gen PPL vs NFE and seconds](results-frontier.png)",
        "",
    ]
    return "\n".join(out)


def write_section(doc: Path, text: str) -> None:
    """Replace (or append) the study section of `doc`, keeping every other section."""
    from sbdcli.artifacts import atomic_file

    begin, end = "<!-- results:study -->", "<!-- /results:study -->"
    old = doc.read_text() if doc.is_file() else "# Results\n"
    block = f"{begin}\n{text}\n{end}"
    if begin in old and end in old:
        new = old[: old.index(begin)] + block + old[old.index(end) + len(end) :]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    with atomic_file(doc) as handle:
        handle.write(new)


def cmd_timing(args: argparse.Namespace) -> None:
    from sbdcli import artifacts

    artifacts.write_json(args.out / "timed.json", timed_costs(args.out, batch=args.time_batch))


def cmd_eval(args: argparse.Namespace) -> None:
    from sbdcli import artifacts

    rows = evaluate_all(args.out, args.seeds, args.n)
    artifacts.write_json(args.out / "study-rows.json", rows)


def cmd_report(args: argparse.Namespace) -> None:
    from sbdcli import artifacts

    rows_path = args.out / "study-rows.json"
    if not rows_path.is_file():
        cmd_eval(args)
    rows = json.loads(rows_path.read_text())
    agg = aggregate(rows)
    dropped = [
        f"{r['model']} S={r['draft']} {r['setting']} seed {r['seed']}: {r['dropped']}"
        for r in rows
        if r.get("dropped")
    ]
    args.dropped = dropped
    floor, floor_nll = rows[0]["oracle_floor_ppl"], rows[0]["oracle_floor_nll_per_token"]
    args.commands = COMMANDS.format(
        steps=args.steps, n=args.n, seeds=",".join(map(str, args.seeds))
    ).splitlines()
    args.commands = [c for c in args.commands if c]
    if args.train_history:
        args.commands.insert(1, f"# this run: {args.train_history}")
    timed = args.out / "timed.json"
    if not timed.is_file():
        cmd_timing(args)
    args.timed = json.loads(timed.read_text())
    text = section(agg, args, floor, floor_nll)
    text += "\n" + "\n".join(verdicts(agg)) + "\n"
    if args.notes and args.notes.is_file():
        text += "\n" + args.notes.read_text()
    write_section(args.doc, text)
    plot(agg, args.doc.parent / "results-frontier.png", floor, len(args.seeds))
    artifacts.write_json(
        args.out / "study-agg.json", {"|".join(map(str, k)): v for k, v in agg.items()}
    )


COMMANDS = """
python bench/study_synthetic.py prepare   # = sbd prepare --synthetic topic-markov --seed 0
python bench/study_synthetic.py train --lam 0.1 --steps {steps} &
python bench/study_synthetic.py train --lam 0 --steps {steps} &
wait
python bench/study_synthetic.py sample --n {n} --seeds {seeds} --shard 0/2 &
python bench/study_synthetic.py sample --n {n} --seeds {seeds} --shard 1/2 &
wait
python bench/study_synthetic.py timing &  # min-of-3 stage timings (runs/study/timed.json)
python bench/study_synthetic.py eval --n {n} --seeds {seeds} &  # oracle (study-rows.json)
wait
python bench/study_synthetic.py report --n {n} --seeds {seeds} --steps {steps}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "step", choices=("prepare", "train", "sample", "timing", "eval", "report", "all")
    )
    parser.add_argument("--out", type=Path, default=Path("runs/study"), help="artifact dir")
    parser.add_argument("--lam", type=float, default=0.1, help="train: mix-scale lambda")
    parser.add_argument("--steps", type=int, default=600, help="train: optimizer steps")
    parser.add_argument("--n", type=int, default=256, help="samples per setting and seed")
    parser.add_argument(
        "--seeds",
        type=lambda s: tuple(int(x) for x in s.split(",")),
        default=(0, 1, 2),
        help="sampling seeds, comma separated",
    )
    parser.add_argument("--shard", default="0/1", help="sample: this shard i/k of the grid")
    parser.add_argument("--notes", type=Path, default=None, help="report: appended text")
    parser.add_argument("--train-history", default="", help="report: how training ran")
    parser.add_argument("--time-batch", type=int, default=64, help="report: timing batch")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "results.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.step in ("prepare", "all"):
        cmd_prepare(args)
    if args.step == "train":
        cmd_train(args)
    if args.step == "all":
        for lam in MODELS.values():
            args.lam = lam
            cmd_train(args)
    if args.step in ("sample", "all"):
        cmd_sample(args)
    if args.step == "timing":
        cmd_timing(args)
    if args.step == "eval":
        cmd_eval(args)
    if args.step in ("report", "all"):
        cmd_report(args)


if __name__ == "__main__":
    main()

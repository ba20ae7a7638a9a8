"""The study's report (experiments/study.py): the markdown section of docs/results.md and its plot.

What it is: the `report` step, which reads the judged rows (rows.json, rows-extra.json), the
stage timings (timed-<device>.json) and the trained runs of one dataset, and writes its
section between `<!-- results:study-<dataset> -->` markers of the doc (every other section
kept) plus results-frontier-<dataset>.png beside it: the tables a-f, the supplement, and
the claim-by-claim verdicts.
What it is not: the statistics behind the cells (experiments/study_stats.py), or any sampling,
judging or training (experiments/study_grid.py, experiments/study_runs.py); no number is
typed in here.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from experiments.study_grid import DRAFT_STEPS, EXTRA_STEPS, GAMMAS, REVISE_BLOCKS, STRATEGIES
from experiments.study_runs import DATASETS, DRAFT_BLOCK, MODELS, ROOT, ds_dir, trained_models
from experiments.study_stats import (
    Key,
    aggregate,
    compare,
    frontier,
    lowest_ppl,
    modelled_seconds,
    paired,
)
from sbdcli.artifacts.files import atomic_file, atomic_path
from sbdcli.evaluate import markdown_grid

COMMANDS = """
STEPS=5000 N=512 BATCH=512 TRAIN_S=240 SAMPLE_S=150 EVAL_S=80 TIME_S=60 DEVICE=cuda \\
  bash experiments/study_run.sh runs/study  # both datasets: prepare .. judge, GPU timings
python -m experiments.study extra --dataset {dataset} --device cpu   # 4/3 tok/call, seed-0 model
python -m experiments.study timing --dataset {dataset} --device cpu  # CPU stage timings
python -m experiments.study report --dataset {dataset}
"""


# --------------------------------------------------------------------------- cells, tables
def _pm(value: tuple[float, float], digits: int = 2, spread: bool = True) -> str:
    if not spread:
        return f"{value[0]:.{digits}f}"
    return f"{value[0]:.{digits}f} ± {value[1]:.{digits}f}"


def label(key: Key) -> str:
    model, steps, setting = key
    draft = f"λ={MODELS[model]:g} draft {DRAFT_BLOCK / steps:.3g} tok/call"
    if setting == "only":
        return draft
    m = re.match(r"(\w+)-g([\d.]+)-b(\w+?)(?:-t(\d+))?$", setting)
    assert m is not None, setting
    tail = f", {m[4] or 2} tok/call" if m[3] == "L" else ""
    return f"{draft} + {m[1]} γ={m[2]} revise B={m[3]}{tail}"


GEN_PPL_HEADER = "Gen PPL (corpus, token-weighted)"
"""The study's Gen PPL is `gen_ppl_corpus`: exp(total NLL / total scored tokens), not the
per-sample mean that BD3-LM/MDLM report (docs/evaluation.md)."""


def table(agg: dict, keys: list[Key], base: tuple | None, secs: dict[str, dict]) -> list[str]:
    """Markdown rows: Gen PPL (corpus, token-weighted), NLL, entropy (mean ± std over
    models), NFE, modelled s."""
    header = ["setting", GEN_PPL_HEADER, "NLL/token", "entropy", "NFE"]
    header += [f"s/sample {k}" for k in secs]
    if base is not None:
        header.append("Δ NLL vs draft (per model)")
    rows = []
    for key in keys:
        if key not in agg:
            rows.append([label(key), "(not run)", *["–"] * (len(header) - 2)])
            continue
        a = agg[key]
        many = len(a["seeds"]) > 1
        row = [label(key), _pm(a["gen_ppl_corpus"], 2, many), _pm(a["nll_per_token"], 3, many)]
        row += [_pm(a["entropy_per_sample_mean"], 3, many), f"{a['nfe_per_sample']:.1f}"]
        row += [f"{s[key]:.4f}" if key in s else "–" for s in secs.values()]
        if base is not None:
            row.append(paired(agg, key, base, "nll_per_token"))
        rows.append(row)
    return markdown_grid(header, rows).splitlines()


def _vs(agg: dict, a: tuple, b: tuple) -> str:
    """`compare` of a vs b, naming both settings and their calls."""
    if a not in agg or b not in agg:
        return f"{label(a)} vs {label(b)}: not measured"
    calls = (agg[a]["nfe_per_sample"], agg[b]["nfe_per_sample"])
    return (
        f"{label(a)} ({calls[0]:.0f} calls) vs {label(b)} ({calls[1]:.0f} calls): "
        f"{compare(agg, a, b)}"
    )


# --------------------------------------------------------------------------- verdicts
def _claims(agg: dict) -> list[str]:
    """One bullet per claim a-f: the paired comparisons that decide it."""
    d2, g25 = ("mix", 2, "only"), "snapshot-g0.25-bL"
    gam = lowest_ppl(agg, [("mix", 2, f"snapshot-g{g:g}-bL") for g in GAMMAS])
    blk = lowest_ppl(agg, [("mix", 2, f"snapshot-g0.25-b{b if b else 'L'}") for b in REVISE_BLOCKS])
    return [
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


def verdicts(agg: dict, costs: dict[str, dict[tuple, float]]) -> list[str]:
    """Claim-by-claim comparisons, computed from `agg` (no number is typed in)."""
    lines = [
        "### What reproduces and what does not (computed comparisons)",
        "",
        "A difference counts when all three trained models agree on its sign and the mean "
        "paired difference of NLL/token exceeds twice its standard error (over models).",
        "",
        *_claims(agg),
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


# --------------------------------------------------------------------------- inputs
def model_lines(args: argparse.Namespace) -> list[str]:
    """Last validation NELBO (nats/token, per block size) of each trained model."""
    header = ["model", "seed", "steps trained", "last validation at"]
    header += ["val NELBO/token by block size", "oracle NLL, same rows"]
    rows = []
    for run in trained_models(args):
        last = run.last_val
        nelbo = ", ".join(f"B={b}: {v:.3f}" for b, v in last["val_nelbo"].items())
        oracle = last.get("oracle_val_nll")
        oracle_cell = "–" if oracle is None else f"{oracle:.3f}"
        rows.append([run.kind, run.seed, str(run.steps), str(last["step"]), nelbo, oracle_cell])
    return markdown_grid(header, rows).splitlines()


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
    ]
    stages = list(dict.fromkeys(k for c in costs.values() for k in c))
    cells = [[k, *(f"{c[k]:.5f}" if k in c else "–" for c in costs.values())] for k in stages]
    lines += markdown_grid(["stage", *costs], cells).splitlines()
    return [*lines, ""], costs


@dataclass(frozen=True)
class Measured:
    """What a report reads once: judged rows, their aggregate, stage timings per device."""

    rows: list[dict[str, Any]]
    agg: dict[Key, dict[str, Any]]
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


# --------------------------------------------------------------------------- the section
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


def _intro(args: argparse.Namespace, m: Measured) -> list[str]:
    """The section's title, setup paragraph, commands, trained models and stage timings."""
    ds = DATASETS[args.dataset]
    rows = m.rows
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
    return [
        f"## The paper's claims at small scale: {ds.title}",
        "",
        f"Trained models: `tiny` (2 layers, d 128) with the tiny preset's optimiser, "
        f"λ = 0.1 (mix-scale, blocks {{4, {ds.seq_len}}}) and λ = 0 (single-scale B = 4), "
        f"training seeds {seeds}; each model samples with its training seed. At least {n} "
        "samples per setting and model. **± is the std over the trained models**; "
        "differences are judged paired (same model, same draft). Draft B(1) = 4 with an "
        "exact KV cache, nucleus top-p 0.9; revise blocks reveal 2 tokens per call unless "
        f"a row says otherwise. Judge: {judge}. Every Gen PPL in this section is "
        "corpus-level (token-weighted: exp of total NLL over total scored tokens), not "
        "the per-sample mean of the BD3-LM/MDLM protocol."
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
        *m.timing_lines,
        "s/sample columns below: the stage timings summed per setting (draft + remask + "
        "revise), global-block settings only.",
        "",
    ]


def _claim_tables(agg: dict, secs: dict[str, dict[tuple, float]]) -> list[str]:
    """Tables a-f: the settings each claim compares."""
    mix2, g25 = ("mix", 2, "only"), "snapshot-g0.25-bL"
    out = ["### a. Stage 2 (snapshot γ = 0.25 + one global revise block) vs the draft", ""]
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
    return out + table(agg, keys, None, secs)


def section(args: argparse.Namespace, m: Measured) -> str:
    """The markdown of one dataset's study section (every number from rows.json)."""
    out = [*_intro(args, m), *_claim_tables(m.agg, m.secs)]
    out += ["", *supplement(args, m.costs)]
    out += [f"![Gen PPL vs NFE and seconds](results-frontier-{args.dataset}.png)", ""]
    nfe = {k: a["nfe_per_sample"] for k, a in m.agg.items()}
    points = {"NFE": nfe, **{f"{k} seconds": v for k, v in m.secs.items()}}
    out += verdicts(m.agg, points)
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- plot, doc
def _plot_axis(ax: Any, xlabel: str, xs: dict[tuple, float], m: Measured) -> None:
    """One panel: Gen PPL (mean ± std) of every λ = 0.1 setting against cost `xs`."""
    for i, steps in enumerate(DRAFT_STEPS):
        for k, a in m.agg.items():
            if k[0] != "mix" or k[1] != steps or k not in xs:
                continue
            marker = "o" if k[2] == "only" else ("s" if "snapshot" in k[2] else "^")
            y, e = a["gen_ppl_corpus"]
            ax.errorbar(xs[k], y, yerr=e, fmt=marker, color=f"C{i}", ms=5, capsize=2)
        ax.plot([], [], "o", color=f"C{i}", label=f"draft {DRAFT_BLOCK / steps:.3g} tok/call")
    floor = m.rows[0].get("oracle_floor_ppl")
    if floor:
        ax.axhline(floor, color="grey", ls="--", lw=1, label="oracle floor")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(GEN_PPL_HEADER)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)


def plot(args: argparse.Namespace, m: Measured) -> None:
    # matplotlib is heavy and only the report step draws: imported here, not at start-up
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_spec = [("NFE per sample", {k: a["nfe_per_sample"] for k, a in m.agg.items()})]
    axes_spec += [(f"{name} seconds per sample (stage timings)", s) for name, s in m.secs.items()]
    fig, axes = plt.subplots(1, len(axes_spec), figsize=(6 * len(axes_spec), 4.5))
    axes = np.atleast_1d(axes)
    for ax, (xl, xs) in zip(axes, axes_spec, strict=True):
        _plot_axis(ax, xl, xs, m)
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
    begin, end = f"<!-- results:{marker} -->", f"<!-- /results:{marker} -->"
    old = doc.read_text() if doc.is_file() else "# Results\n"
    block = f"{begin}\n{text}{end}"
    if begin in old and end in old:
        new = old[: old.index(begin)] + block + old[old.index(end) + len(end) :]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    with atomic_file(doc) as handle:
        handle.write(new)


def cmd_report(args: argparse.Namespace) -> None:
    args.commands = [c for c in COMMANDS.format(dataset=args.dataset).splitlines() if c]
    if args.history:
        args.commands.insert(1, f"# this run: {args.history}")
    measured = Measured.load(args)
    text = section(args, measured)
    notes = args.notes or ROOT / "experiments" / "study_notes" / f"{args.dataset}.md"
    if notes.is_file():
        text += "\n" + notes.read_text()
    write_section(args.doc, f"study-{args.dataset}", text)
    plot(args, measured)

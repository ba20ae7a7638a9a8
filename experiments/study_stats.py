"""The study's numbers (experiments/study.py): aggregates over trained models, paired comparisons.

What it is: the mean and std over trained models of each setting's judged rows, the modelled
seconds per sample of a setting from its stage timings, per-model (paired) differences
between two settings and the rule that calls a difference real, and Pareto frontiers.
What it is not: markdown or plots (experiments/study_report.py), or any sampling or judging
(experiments/study_grid.py); nothing here reads or writes a file.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from experiments.study_grid import Revise, revise_key

Key = tuple[str, int, str]
"""A setting of the grid: (model kind, draft steps per block, setting name)."""


def aggregate(rows: list[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    """Mean and std over trained models (seeds) per (model, draft steps, setting)."""
    keys: dict[Key, list[dict[str, Any]]] = {}
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


def modelled_seconds(agg: dict, costs: dict[str, float]) -> dict[tuple, float]:
    """Seconds per sample of each global-revise or draft-only setting from stage timings."""
    out = {}
    for key in agg:
        parts = [f"draft-s{key[1]}"]
        m = re.match(r"(\w+)-g([\d.]+)-bL(?:-t(\d+))?$", key[2])
        if m:
            rev = Revise(m[1], float(m[2]), 0, int(m[3] or 2))
            parts += [f"remask-{rev.strategy}", revise_key(rev)]
        elif key[2] != "only":
            continue
        if all(p in costs for p in parts):
            out[key] = sum(costs[p] for p in parts)
    return out


def seed_diffs(agg: dict, a: tuple, b: tuple, metric: str) -> np.ndarray:
    """Per-model differences a - b of `metric` over the seeds both settings have."""
    xa, xb = agg[a][metric + "_by_seed"], agg[b][metric + "_by_seed"]
    return np.array([xa[s] - xb[s] for s in xa if s in xb], dtype=float)


def paired(agg: dict, a: tuple, b: tuple, metric: str) -> str:
    """Mean ± std over models of the per-model difference a - b of `metric`."""
    if a not in agg or b not in agg:
        return "–"
    d = seed_diffs(agg, a, b, metric)
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
    d = seed_diffs(agg, a, b, "nll_per_token")
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else math.inf
    agree = bool(np.all(d < 0) or np.all(d > 0))
    ma, mb = agg[a]["gen_ppl_corpus"][0], agg[b]["gen_ppl_corpus"][0]
    word = "no clear difference"
    if agree and abs(d.mean()) > 2 * se:
        word = "lower" if d.mean() < 0 else "higher"
    return f"{word} ({ma:.2f} vs {mb:.2f}; ΔNLL {d.mean():+.3f} ± {se:.3f} SE)"


def frontier(points: dict[tuple, float], agg: dict) -> list[tuple]:
    """Pareto-optimal keys in (cost, Gen PPL) among λ = 0.1 settings with a cost."""
    pts = [(k, c, agg[k]["gen_ppl_corpus"][0]) for k, c in points.items() if k[0] == "mix"]
    best = [
        k
        for k, cx, cy in pts
        if not any(ox <= cx and oy <= cy and (ox < cx or oy < cy) for _, ox, oy in pts)
    ]
    return sorted(best, key=lambda k: points[k])


def lowest_ppl(agg: dict, keys: list[tuple]) -> tuple | None:
    """The key of `keys` with the lowest mean Gen PPL (None when none was measured)."""
    have = [k for k in keys if k in agg]
    return min(have, key=lambda k: agg[k]["gen_ppl_corpus"][0]) if have else None

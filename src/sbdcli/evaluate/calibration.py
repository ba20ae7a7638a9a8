"""Calibration data of the HTML report: snapshot confidence in equal-width bins against
how often a regenerated token survives revision (`survival_bins`, from what each revise
entry says it replaced) and against the synthetic language's true probability of the
drafted token (`oracle_bins`, `Oracle.token_log_probs`).

Plain numbers only: the chart is drawn by html_report.py; nothing here prints.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sbdcli.evaluate.views import State, is_int, is_num, stage_entries, stage_states

CALIBRATION_BINS = 10
"""Equal-width confidence bins of the calibration plot."""


@dataclass(frozen=True)
class CalibrationBin:
    """Tokens whose snapshot confidence fell in [lo, hi): how many, their mean confidence
    and the mean of the compared quantity (a survival fraction or a probability)."""

    lo: float
    hi: float
    n: int
    confidence: float
    value: float


def _bins(pairs: Iterable[tuple[float, float]], n_bins: int) -> list[CalibrationBin]:
    sums = [[0, 0.0, 0.0] for _ in range(n_bins)]
    for conf, value in pairs:
        b = sums[min(int(conf * n_bins), n_bins - 1)]
        b[0] += 1
        b[1] += conf
        b[2] += value
    return [
        CalibrationBin(i / n_bins, (i + 1) / n_bins, int(n), c / n, v / n)
        for i, (n, c, v) in enumerate(sums)
        if n
    ]


def survival_bins(
    records: Iterable[Mapping[str, Any]], n_bins: int = CALIBRATION_BINS
) -> list[CalibrationBin]:
    """Over every position a revise regenerated: its confidence before the revise against
    whether the revise kept the same token (1) or replaced it (0)."""
    pairs = []
    for rec in records:
        states = stage_states(rec)
        for k, entry in enumerate(stage_entries(rec), start=1):
            after = states[k]
            if entry.get("name") != "revise" or after is None:
                continue
            pos, old = entry.get("positions"), entry.get("replaced")
            conf = entry.get("replaced_confidence")
            if not (isinstance(pos, list) and isinstance(old, list) and isinstance(conf, list)):
                continue
            for p, t, c in zip(pos, old, conf, strict=False):
                if is_int(p) and 0 <= p < len(after.tokens) and is_num(c):
                    pairs.append((float(c), float(after.tokens[p] == t)))
    return _bins(pairs, n_bins)


def oracle_bins(
    records: Iterable[Mapping[str, Any]], oracle: Any, n_bins: int = CALIBRATION_BINS
) -> tuple[list[CalibrationBin], int]:
    """Over every drafted position of the drafts (each distinct draft once): its snapshot
    confidence against the oracle's probability of the token given the tokens before it
    (`Oracle.token_log_probs`). Also the number of records skipped (not sentences of the
    oracle's language, or a draft that cannot be rebuilt)."""
    import torch

    seen: dict[tuple[Any, ...], tuple[State, int]] = {}
    skipped = 0
    for rec in records:
        stages = stage_entries(rec)
        draft = stage_states(rec)[1] if stages and stages[0].get("name") == "draft" else None
        tokens = draft.tokens if draft is not None else []
        ok = draft is not None and tokens[0] == oracle.bos_id
        if not ok or not all(0 <= t < oracle.vocab for t in tokens[1:]):
            skipped += 1
            continue
        start = max(int(rec.get("prompt_len") or 0), 1)
        seen.setdefault((rec.get("id"), *tokens), (draft, start))
    by_length: dict[int, list[tuple[State, int]]] = {}
    for draft, start in seen.values():
        by_length.setdefault(len(draft.tokens), []).append((draft, start))
    pairs = []
    for group in by_length.values():
        logp = oracle.token_log_probs(torch.tensor([d.tokens for d, _ in group]))
        for row, (draft, start) in enumerate(group):
            for p in range(start, len(draft.tokens)):
                c = draft.confidence[p]
                if c is not None:
                    pairs.append((float(c), math.exp(float(logp[row, p]))))
    return _bins(pairs, n_bins), skipped

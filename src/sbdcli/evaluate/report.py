"""Tables and plots of Gen PPL summaries: the columns, cell formatting, the rows, the
markdown table (for docs/) and the plot of Gen PPL against NFE and seconds per sample.
The headline Gen PPL is the per-sample mean (`HEADLINE`, the BD3-LM/MDLM protocol); the
corpus-level (token-weighted) number is the second Gen PPL column.

It formats summaries that genppl.evaluate_sets made; it computes nothing and never prints
(the CLI prints). matplotlib is imported inside `plot_genppl`: a heavy, optional
dependency (the `eval` extra).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sbdcli.artifacts import atomic_path
from sbdcli.errors import UserError
from sbdcli.evaluate.metrics import ENTROPY_OVER

HEADLINE = "gen_ppl_per_sample_mean"
"""The headline Gen PPL: the mean over samples of exp(NLL_i / n_i), as BD3-LM and MDLM
report it; the first Gen PPL column of every table and the quantity of every plot."""
HEADLINE_HEADER = "Gen PPL (per-sample mean, BD3-LM/MDLM protocol)"
CORPUS_HEADER = "Gen PPL (corpus, token-weighted)"
COLUMNS = (
    ("name", "file / group"),
    ("n", "n"),
    ("gen_ppl_per_sample_mean", HEADLINE_HEADER),
    ("gen_ppl_corpus", CORPUS_HEADER),
    ("nll_per_token", "NLL/tok"),
    ("mauve", "MAUVE"),
    ("n_low_entropy", "low-entropy samples"),
    ("oracle_floor_nll_per_token", "oracle floor (NLL/tok)"),
    ("entropy_per_sample_mean", "entropy"),
    ("nfe_per_sample", "NFE"),
    ("seconds_per_sample", "s/sample"),
    ("tokens_per_second", "tok/s"),
    ("settings_short", "settings"),
)
"""Summary keys and their table headers, in table order."""
AVERAGING = (
    "Gen PPL (per-sample mean, BD3-LM/MDLM protocol) = mean over samples of exp(NLL_i / n_i); "
    "Gen PPL (corpus, token-weighted) = exp(total NLL / total scored tokens)."
)
"""The two averagings in one sentence (table footers)."""
SHORT_HEADERS = {
    "gen_ppl_per_sample_mean": "PPL per-sample",
    "gen_ppl_corpus": "PPL corpus",
    "n_low_entropy": "low-H",
}
"""Narrower headers for the terminal table."""
BESIDE_THE_TABLE = ("name", "settings_short", "oracle_floor_nll_per_token")
"""Columns the terminal shows under the table (by row number) or in its footer."""


def cell(value: Any, compact: bool = False) -> str:
    """Format one table cell: floats with 4 significant digits, None as a dash.

    `compact` drops trailing zeros and thousands separators (the demo's table)."""
    if value is None:
        return "–"
    if isinstance(value, float) and compact:
        return f"{value:.4g}"
    if isinstance(value, float):
        if abs(value) >= 1e6:
            return f"{value:.3e}"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:#.4g}".rstrip(".")
    return str(value)


def table_rows(summaries: Sequence[dict[str, Any]]) -> list[list[str]]:
    """Rows of cells (in COLUMNS order), only columns some summary has."""
    cols = visible_columns(summaries)
    return [[cell(s.get(key)) for key, _ in cols] for s in summaries]


def visible_columns(summaries: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """The (key, header) pairs of COLUMNS that at least one summary has a value for."""
    return [(k, h) for k, h in COLUMNS if any(s.get(k) is not None for s in summaries)]


def terminal_columns(summaries: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """The visible columns for a narrow terminal table: short headers, no name/settings."""
    return [
        (k, SHORT_HEADERS.get(k, h))
        for k, h in visible_columns(summaries)
        if k not in BESIDE_THE_TABLE
    ]


def markdown_table(summaries: Sequence[dict[str, Any]]) -> str:
    """The summary table as GitHub markdown (for docs/)."""
    cols = visible_columns(summaries)
    lines = [
        "| " + " | ".join(h for _, h in cols) + " |",
        "|" + "|".join("---" for _ in cols) + "|",
    ]
    for row in table_rows(summaries):
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    evaluator = summaries[0].get("evaluator", {}) if summaries else {}
    lines.append("")
    lines.append(
        f"Evaluator: {evaluator.get('kind', '?')} {evaluator.get('path', '')}".rstrip()
        + f"; EOS rule: {summaries[0].get('eos') if summaries else '?'}; entropy in nats over "
        + ENTROPY_OVER
        + ". "
        + AVERAGING
    )
    return "\n".join(lines) + "\n"


PLOT_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg", "eps", "ps", "tif", "tiff", "webp")
"""File types `plot_genppl` writes (by the path's suffix)."""


def check_plot_path(path: str | Path) -> None:
    """Refuse a plot path matplotlib cannot write, before any judging."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in PLOT_FORMATS:
        raise UserError(f"`plot` {path}: unknown image type (use one of {', '.join(PLOT_FORMATS)})")
    if Path(path).is_dir():
        raise UserError(f"`plot` {path} is a directory")


def plot_genppl(summaries: Sequence[dict[str, Any]], path: str | Path) -> None:
    """The headline Gen PPL (per-sample mean) against NFE and against seconds per sample,
    entropy annotated."""
    import matplotlib  # heavy optional dependency: only when a plot is asked for

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for ax, key, label in (
        (axes[0], "nfe_per_sample", "NFE per sample"),
        (axes[1], "seconds_per_sample", "seconds per sample"),
    ):
        _plot_axis(ax, summaries, key, label)
    floor = next((s["oracle_floor_ppl"] for s in summaries if s.get("oracle_floor_ppl")), None)
    for ax in axes:
        if floor:
            ax.axhline(floor, color="grey", ls="--", lw=1, label="oracle floor")
        ax.set_yscale("log")
        ax.margins(x=0.2, y=0.15)
    axes[0].legend(fontsize=7, loc="best")
    ev = summaries[0].get("evaluator", {}) if summaries else {}
    fig.suptitle(
        f"Gen PPL (per-sample mean, BD3-LM/MDLM protocol) under {ev.get('kind', '?')} "
        f"{Path(str(ev.get('path', ''))).name} "
        "(H = unigram entropy per sample, nats)",
        fontsize=10,
    )
    fmt = Path(path).suffix.lstrip(".") or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=130)
    plt.close(fig)


def _plot_axis(ax: Any, summaries: Sequence[dict[str, Any]], key: str, label: str) -> None:
    for i, s in enumerate(summaries):
        x, y = s.get(key), s.get(HEADLINE)
        if x is None or y is None:
            continue
        ax.scatter([x], [y], color=f"C{i % 10}", label=f"[{i + 1}] {s.get('name', '')}"[:70])
        ent = s.get("entropy_per_sample_mean")
        note = f"[{i + 1}] H={ent:.2f}" if ent is not None else f"[{i + 1}]"
        ax.annotate(note, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel(label)
    ax.set_ylabel("Gen PPL (per-sample mean)")
    ax.grid(alpha=0.3)

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
NARROW_DROP_ORDER = (
    "tokens_per_second",
    "nll_per_token",
    "gen_ppl_corpus",
    "n_low_entropy",
    "seconds_per_sample",
    "entropy_per_sample_mean",
)
"""Columns a narrow terminal leaves out, least useful first: rates and quantities another
column implies go before the cost and diversity columns; the row number, n, the headline
Gen PPL and NFE always stay."""
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


def markdown_grid(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> str:
    """A GitHub markdown table of ready-made cells (every table sbd writes goes through it).

    `align`: one letter per column, "l" or "r" (default: every column left-aligned); a `|`
    inside a cell is escaped. Ends without a newline."""
    rules = {"l": "---", "r": "---:"}
    marks = [rules[align[i]] if i < len(align) else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(marks) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |")
    return "\n".join(lines)


def markdown_table(summaries: Sequence[dict[str, Any]]) -> str:
    """The summary table as GitHub markdown (for docs/)."""
    cols = visible_columns(summaries)
    lines = [markdown_grid([h for _, h in cols], table_rows(summaries))]
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


Series = Sequence[tuple[str, Sequence[int]]]
"""Named groups of summary indices; a group of several is one line across its points."""
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")


def plot_genppl(
    summaries: Sequence[dict[str, Any]], path: str | Path, series: Series | None = None
) -> None:
    """The headline Gen PPL (per-sample mean) against NFE and against seconds per sample.

    `series` groups the summaries (default: one per summary, named by its file); each group
    has its own colour and marker, a group of several points is a line (in x order), the
    legend names each group with its entropy range and sits below the axes, off the data."""
    import matplotlib  # heavy optional dependency: only when a plot is asked for

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(series) if series is not None else default_series(summaries)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2 + 0.22 * len(groups)), layout="constrained")
    for ax, key, label in (
        (axes[0], "nfe_per_sample", "NFE per sample"),
        (axes[1], "seconds_per_sample", "seconds per sample"),
    ):
        _plot_axis(ax, plot_points(summaries, groups, key), label)
    floor = next((s["oracle_floor_ppl"] for s in summaries if s.get("oracle_floor_ppl")), None)
    for ax in axes:
        if floor:
            ax.axhline(floor, color="grey", ls="--", lw=1, label="oracle floor (true samples)")
        ax.set_yscale("log")
        ax.margins(x=0.08, y=0.1)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle(plot_title(summaries), fontsize=10)
    fmt = Path(path).suffix.lstrip(".") or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=130)
    plt.close(fig)


def default_series(summaries: Sequence[dict[str, Any]]) -> list[tuple[str, list[int]]]:
    """One group per summary, named by its position and file."""
    return [(f"[{i + 1}] {s.get('name', '')}"[:70], [i]) for i, s in enumerate(summaries)]


def plot_title(summaries: Sequence[dict[str, Any]]) -> str:
    """What the plot shows and who judged it (the oracle, or the judge model's name)."""
    ev = summaries[0].get("evaluator", {}) if summaries else {}
    kind, name = str(ev.get("kind", "?")), Path(str(ev.get("path", ""))).name
    judge = "the exact oracle" if kind == "oracle" else f"{kind} {name}".strip()
    return f"{HEADLINE_HEADER}, judged by {judge}"


def plot_points(
    summaries: Sequence[dict[str, Any]], series: Series, key: str
) -> list[tuple[str, list[float], list[float]]]:
    """(legend label, xs, headline Gen PPLs) of each group on the `key` axis, in x order;
    the label adds the group's entropy (range)."""
    out = []
    for label, idx in series:
        points = sorted(
            (summaries[i][key], summaries[i][HEADLINE], summaries[i].get("entropy_per_sample_mean"))
            for i in idx
            if summaries[i].get(key) is not None and summaries[i].get(HEADLINE) is not None
        )
        ents = [e for *_, e in points if e is not None]
        if ents:
            low, high = min(ents), max(ents)
            label += f", H {low:.2f}" if high - low < 0.005 else f", H {low:.2f}–{high:.2f}"
        out.append((label, [p[0] for p in points], [p[1] for p in points]))
    return out


def _plot_axis(ax: Any, points: list[tuple[str, list[float], list[float]]], label: str) -> None:
    for k, (name, xs, ys) in enumerate(points):
        style = "-" if len(xs) > 1 else "none"
        marker = MARKERS[k % len(MARKERS)]
        ax.plot(xs, ys, ls=style, marker=marker, color=f"C{k % 10}", ms=6, lw=1.2, label=name)
    ax.set_xlabel(label)
    ax.set_ylabel("Gen PPL (per-sample mean)")
    ax.grid(alpha=0.3)

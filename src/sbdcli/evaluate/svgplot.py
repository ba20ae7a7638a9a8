"""Small inline SVG charts for the HTML report: points and lines on linear or log axes.

`svg_chart` draws series of (x, y) points with a hover title per point, optional lines
through them, horizontal reference lines and the diagonal, into one `<svg>` string that a
self-contained page can inline (no fonts, scripts or files outside it). The output depends
only on its input (no dates, no random ids), so a report regenerates byte for byte.

Not here: what is plotted (html_report.py) or any file writing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")
"""Series colours, in order."""
W, H = 470, 310
LEFT, RIGHT, TOP, BOTTOM = 58, 12, 26, 44


@dataclass
class Series:
    """One series: points (x, y, hover text, label beside the point or '')."""

    name: str
    points: list[tuple[float, float, str, str]] = field(default_factory=list)
    connect: bool = False


@dataclass(frozen=True)
class Axis:
    lo: float
    hi: float
    log: bool = False

    def frac(self, v: float) -> float:
        if self.log:
            return (math.log10(v) - math.log10(self.lo)) / (
                math.log10(self.hi) - math.log10(self.lo)
            )
        return (v - self.lo) / (self.hi - self.lo)

    def ticks(self) -> list[float]:
        if self.log:
            return _log_ticks(self.lo, self.hi)
        step = _nice_step((self.hi - self.lo) / 5)
        first = math.ceil(self.lo / step) * step
        n = int((self.hi - first) / step + 1e-9) + 1
        return [round(first + i * step, 12) for i in range(n)]


def _nice_step(raw: float) -> float:
    exp = math.floor(math.log10(raw)) if raw > 0 else 0
    for m in (1, 2, 2.5, 5, 10):
        if m * 10**exp >= raw:
            return m * 10**exp
    return 10 ** (exp + 1)


def _log_ticks(lo: float, hi: float) -> list[float]:
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    mults = (1, 2, 5) if math.log10(hi / lo) < 2.5 else (1,)
    ticks = [m * 10**d for d in decades for m in mults]
    inside = [t for t in ticks if lo <= t <= hi]
    return inside or [lo, hi]


def axis_for(values: Sequence[float], log: bool = False, pad: float = 0.08) -> Axis:
    """An axis that holds `values` with a margin (a log axis needs values > 0)."""
    vals = [v for v in values if v is not None and math.isfinite(v) and (v > 0 or not log)]
    if not vals:
        return Axis(0.1, 10.0, log) if log else Axis(0.0, 1.0)
    lo, hi = min(vals), max(vals)
    if log:
        lo_l, hi_l = math.log10(lo), math.log10(hi)
        span = max(hi_l - lo_l, 0.3)
        mid = (lo_l + hi_l) / 2
        lo_l, hi_l = min(lo_l, mid - span / 2), max(hi_l, mid + span / 2)
        return Axis(10 ** (lo_l - pad * span), 10 ** (hi_l + pad * span), True)
    span = hi - lo or max(abs(hi), 1.0)
    return Axis(lo - pad * span, hi + pad * span)


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def svg_chart(
    series: Sequence[Series],
    x: Axis,
    y: Axis,
    x_label: str,
    y_label: str,
    *,
    title: str = "",
    hlines: Sequence[tuple[float, str]] = (),
    diagonal: bool = False,
    css_class: str = "chart",
) -> str:
    """One chart as an inline `<svg>`; every point is a `<circle>` with a `<title>`."""
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM
    height = H + 14 * sum(1 for s in series if s.name)  # the legend goes under the chart

    def px(v: float) -> float:
        return round(LEFT + x.frac(v) * pw, 1)

    def py(v: float) -> float:
        return round(TOP + (1 - y.frac(v)) * ph, 1)

    out = [
        f'<svg class="{css_class}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {height}" '
        f'width="{W}" height="{height}" role="img" aria-label="{escape(title or y_label)}">',
        f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="#fff" stroke="#999"/>',
    ]
    if title:
        out.append(f'<text x="{LEFT}" y="16" class="ct">{escape(title)}</text>')
    for t in x.ticks():
        out.append(f'<line x1="{px(t)}" y1="{TOP}" x2="{px(t)}" y2="{TOP + ph}" class="grid"/>')
        out.append(f'<text x="{px(t)}" y="{TOP + ph + 14}" class="tx">{_fmt(t)}</text>')
    for t in y.ticks():
        out.append(f'<line x1="{LEFT}" y1="{py(t)}" x2="{LEFT + pw}" y2="{py(t)}" class="grid"/>')
        out.append(f'<text x="{LEFT - 4}" y="{py(t) + 4}" class="ty">{_fmt(t)}</text>')
    out.append(f'<text x="{LEFT + pw / 2}" y="{H - 8}" class="tx">{escape(x_label)}</text>')
    out.append(
        f'<text x="14" y="{TOP + ph / 2}" class="tx" '
        f'transform="rotate(-90 14 {TOP + ph / 2})">{escape(y_label)}</text>'
    )
    if diagonal:
        lo, hi = max(x.lo, y.lo), min(x.hi, y.hi)
        out.append(f'<line x1="{px(lo)}" y1="{py(lo)}" x2="{px(hi)}" y2="{py(hi)}" class="ref"/>')
    for value, label in hlines:
        if y.lo <= value <= y.hi:
            out.append(
                f'<line x1="{LEFT}" y1="{py(value)}" x2="{LEFT + pw}" '
                f'y2="{py(value)}" class="ref"/>'
            )
            out.append(
                f'<text x="{LEFT + pw - 4}" y="{py(value) - 4}" class="tr">{escape(label)}</text>'
            )
    for i, s in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        pts = [(px(a), py(b), tip, lab) for a, b, tip, lab in s.points]
        if s.connect and len(pts) > 1:
            path = " ".join(f"{a},{b}" for a, b, _, _ in pts)
            out.append(
                f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>'
            )
        for a, b, tip, lab in pts:
            out.append(
                f'<circle cx="{a}" cy="{b}" r="4" fill="{colour}" data-series="{escape(s.name)}">'
                f"<title>{escape(tip)}</title></circle>"
            )
            if lab:
                out.append(f'<text x="{a + 6}" y="{b - 5}" class="tl">{escape(lab)}</text>')
    out.append(_legend(series))
    out.append("</svg>")
    return "\n".join(out)


def _legend(series: Sequence[Series]) -> str:
    """One line per named series, under the x axis label."""
    rows = []
    for i, s in enumerate(series):
        if not s.name:
            continue
        colour = PALETTE[i % len(PALETTE)]
        y = H + 14 * i + 6
        rows.append(f'<circle cx="{LEFT + 10}" cy="{y - 4}" r="4" fill="{colour}"/>')
        rows.append(f'<text x="{LEFT + 18}" y="{y}" class="tl">{escape(s.name[:80])}</text>')
    return "\n".join(rows)

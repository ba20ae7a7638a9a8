"""Small inline SVG charts for the HTML report: points and lines on linear or log axes.

`svg_chart` draws series of (x, y) points with a hover title per point, optional lines
through them, horizontal reference lines and the diagonal, into one `<svg>` string that a
self-contained page can inline (no fonts, scripts or files outside it). Each series has its
own colour and marker shape (ten colours, eight shapes: no two of 40 series look alike), a
point's label is placed where it overlaps no other label or marker (or left out: the
legend and the hover title still name the point), and the legend sits under the axes,
off the data, long names wrapped. The output depends only on its input (no dates, no
random ids), so a report regenerates byte for byte.

Not here: what is plotted (html_report.py) or any file writing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")  # fmt: skip
"""Series colours, in order (matplotlib's tab10, as `sbd eval genppl --plot` uses)."""
SHAPES = ("circle", "square", "triangle", "diamond", "down", "pentagon", "hexagon", "star")
"""Series marker shapes, in order."""
W, H = 470, 310
LEFT, RIGHT, TOP, BOTTOM = 58, 12, 26, 44
CHAR_W, LINE_H = 5.6, 14
"""Approximate width of one 10 px character, and the legend's line height."""
Box = tuple[float, float, float, float]


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


def _style(i: int) -> tuple[str, str]:
    """(colour, shape) of series `i`: distinct for the first len(PALETTE) * len(SHAPES)."""
    return PALETTE[i % len(PALETTE)], SHAPES[i % len(SHAPES)]


def _polygon(cx: float, cy: float, r: float, corners: int, turn: float, inner: float = 1.0) -> str:
    """Corner points of a regular polygon (or a star, when `inner` < 1) around (cx, cy)."""
    n = corners * (2 if inner < 1 else 1)
    pts = []
    for k in range(n):
        rad = r * (inner if inner < 1 and k % 2 else 1.0)
        a = 2 * math.pi * k / n + turn
        pts.append(f"{round(cx + rad * math.sin(a), 1)},{round(cy - rad * math.cos(a), 1)}")
    return " ".join(pts)


def marker(shape: str, cx: float, cy: float, colour: str, attrs: str = "", inner: str = "") -> str:
    """One marker of `shape` at (cx, cy), about 8 px across; `inner` goes inside the element
    (a `<title>`), `attrs` onto it."""
    head = f'fill="{colour}" {attrs}'.strip()
    if shape == "circle":
        tag = f'<circle cx="{cx}" cy="{cy}" r="4" {head}>'
        return f"{tag}{inner}</circle>"
    if shape == "square":
        tag = (
            f'<rect x="{round(cx - 3.5, 1)}" y="{round(cy - 3.5, 1)}" width="7" height="7" {head}>'
        )
        return f"{tag}{inner}</rect>"
    corners, turn, radius, ratio = {
        "triangle": (3, 0.0, 5.0, 1.0),
        "down": (3, math.pi, 5.0, 1.0),
        "diamond": (4, 0.0, 5.0, 1.0),
        "pentagon": (5, 0.0, 4.6, 1.0),
        "hexagon": (6, 0.0, 4.4, 1.0),
        "star": (5, 0.0, 5.5, 0.45),
    }[shape]
    points = _polygon(cx, cy, radius, corners, turn, ratio)
    return f'<polygon points="{points}" {head}>{inner}</polygon>'


LABEL_SPOTS = ((6, -5, "start"), (6, 13, "start"), (-6, -5, "end"), (-6, 13, "end"),
               (0, -8, "middle"), (0, 17, "middle"))  # fmt: skip
"""Where a point's label may go, in order of preference: (dx, dy of the text's baseline
anchor, SVG text-anchor)."""


def _overlaps(box: Box, boxes: Sequence[Box]) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 < b[2] and b[0] < x1 and y0 < b[3] and b[1] < y1 for b in boxes)


def place_labels(
    points: Sequence[tuple[float, float, str]], bounds: Box, avoid: Sequence[Box] = ()
) -> list[tuple[float, float, str, str]]:
    """(x, y, anchor, text) of each label that fits beside its point (`LABEL_SPOTS`: right,
    left, above or below) without overlapping another label, any marker, the boxes to
    `avoid` or the plot's edge; the rest are left out."""
    taken: list[Box] = [*avoid, *((a - 5, b - 5, a + 5, b + 5) for a, b, _ in points)]
    placed = []
    for a, b, text in points:
        if not text:
            continue
        w = CHAR_W * len(text)
        for dx, dy, anchor in LABEL_SPOTS:
            x0 = a + dx - {"start": 0, "middle": w / 2, "end": w}[anchor]
            box = (x0, b + dy - 9, x0 + w, b + dy + 1)
            inside = bounds[0] <= box[0] and box[2] <= bounds[2] and bounds[1] <= box[1]
            if inside and box[3] <= bounds[3] and not _overlaps(box, taken):
                taken.append(box)
                placed.append((round(a + dx, 1), round(b + dy, 1), anchor, text))
                break
    return placed


def _wrap(name: str, width: int) -> list[str]:
    """`name` in lines of at most `width` characters, broken at spaces (two lines at most)."""
    if len(name) <= width:
        return [name]
    cut = name.rfind(" ", 0, width)
    cut = cut if cut > 0 else width
    rest = name[cut:].strip()
    return [name[:cut], rest if len(rest) <= width else rest[: width - 1] + "…"]


def _legend_lines(series: Sequence[Series]) -> list[tuple[int, list[str]]]:
    width = int((W - LEFT - 24) / CHAR_W)
    return [(i, _wrap(s.name, width)) for i, s in enumerate(series) if s.name]


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
    legend = _legend_lines(series)
    height = H + LINE_H * sum(len(lines) for _, lines in legend)  # the legend: under the chart

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
    avoid: list[Box] = []
    for value, label in hlines:
        if y.lo <= value <= y.hi:
            right, base = LEFT + pw - 4, py(value) - 4
            avoid.append((right - CHAR_W * len(label), base - 9, right, base + 1))
            out.append(
                f'<line x1="{LEFT}" y1="{py(value)}" x2="{LEFT + pw}" '
                f'y2="{py(value)}" class="ref"/>'
            )
            out.append(
                f'<text x="{LEFT + pw - 4}" y="{py(value) - 4}" class="tr">{escape(label)}</text>'
            )
    labels = []
    for i, s in enumerate(series):
        colour, shape = _style(i)
        pts = [(px(a), py(b), tip, lab) for a, b, tip, lab in s.points]
        if s.connect and len(pts) > 1:
            path = " ".join(f"{a},{b}" for a, b, _, _ in pts)
            out.append(
                f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>'
            )
        attrs = f'class="pt" data-series="{escape(s.name)}"'
        for a, b, tip, lab in pts:
            out.append(marker(shape, a, b, colour, attrs, f"<title>{escape(tip)}</title>"))
            labels.append((a, b, lab))
    for a, b, anchor, text in place_labels(labels, (LEFT, TOP, LEFT + pw, TOP + ph), avoid):
        end = f' style="text-anchor:{anchor}"' if anchor != "start" else ""
        out.append(f'<text x="{a}" y="{b}" class="tl"{end}>{escape(text)}</text>')
    out.append(_legend(legend))
    out.append("</svg>")
    return "\n".join(out)


def _legend(legend: Sequence[tuple[int, list[str]]]) -> str:
    """Each named series' marker and name (wrapped), under the x axis label."""
    rows, y = [], H + 6
    for i, lines in legend:
        colour, shape = _style(i)
        rows.append(marker(shape, LEFT + 10, y - 4, colour, 'class="lg"'))
        for line in lines:
            rows.append(f'<text x="{LEFT + 18}" y="{y}" class="tl">{escape(line)}</text>')
            y += LINE_H
    return "\n".join(rows)

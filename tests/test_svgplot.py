"""Tests for evaluate/svgplot.py: markers that tell series apart, labels that never collide,
a legend off the data."""

from __future__ import annotations

import re

from sbdcli.evaluate import svgplot as sv


def boxes(svg: str) -> list[tuple[float, float, float, float]]:
    """Approximate boxes of the point labels in a chart (the placement's own estimate)."""
    out = []
    for x, y, anchor, text in re.findall(
        r'<text x="([\d.]+)" y="([\d.]+)" class="tl"(?: style="text-anchor:(\w+)")?>([^<]*)</text>',
        svg,
    ):
        w = sv.CHAR_W * len(text)
        x0 = float(x) - {"": 0, "middle": w / 2, "end": w}[anchor]
        out.append((x0, float(y) - 9, x0 + w, float(y) + 1))
    return out


def test_forty_series_have_forty_looks():
    looks = {sv._style(i) for i in range(len(sv.PALETTE) * len(sv.SHAPES))}
    assert len(looks) == 40
    for shape in sv.SHAPES:
        assert sv.marker(shape, 50, 50, "#000", 'class="pt"').count('class="pt"') == 1


def test_labels_of_crowded_points_do_not_overlap():
    points = [(100.0 + i, 100.0, f"[{i}]") for i in range(12)]  # 12 points 1 px apart
    placed = sv.place_labels(points, (0, 0, 400, 300))
    assert 1 <= len(placed) < 12  # some fit, the rest are left out
    drawn = []
    for x, y, anchor, text in placed:
        w = sv.CHAR_W * len(text)
        x0 = x - {"start": 0, "middle": w / 2, "end": w}[anchor]
        box = (x0, y - 9, x0 + w, y + 1)
        assert not sv._overlaps(box, drawn)
        assert not sv._overlaps(box, [(a - 5, b - 5, a + 5, b + 5) for a, b, _ in points])
        drawn.append(box)


def test_a_label_at_the_right_edge_goes_left_of_its_point():
    ((x, _, anchor, _),) = sv.place_labels([(395.0, 150.0, "[18]")], (0, 0, 400, 300))
    assert anchor == "end" and x < 395


def test_chart_labels_do_not_overlap_and_the_legend_wraps_under_the_axes():
    long = "snapshot, τ 0.5, approx cache R 4 revise (γ 0.25) of the 4 calls/block draft, H 3.39"
    series = [sv.Series(f"[{i}] s", [(1.0 + i * 0.01, 10.0, "tip", f"[{i}]")]) for i in range(8)]
    series.append(sv.Series(long, [(1.0, 20.0, "tip", ""), (2.0, 5.0, "tip", "")], connect=True))
    svg = sv.svg_chart(series, sv.axis_for([1, 2]), sv.axis_for([5, 20], log=True), "x", "y")
    label_boxes = [b for b in boxes(svg) if b[1] < sv.H - sv.BOTTOM]
    for i, b in enumerate(label_boxes):
        assert not sv._overlaps(b, label_boxes[:i])
    assert svg.count('class="pt"') == 10 and svg.count('class="lg"') == 9
    assert svg.count("<polyline") == 1
    legend = re.findall(r'<text x="[\d.]+" y="([\d.]+)" class="tl">([^<]*)</text>', svg)
    legend = [(float(y), t) for y, t in legend if float(y) > sv.H - sv.BOTTOM]
    assert len(legend) == 10  # 8 one-line names and the long one on two lines
    assert all(len(t) * sv.CHAR_W <= sv.W - sv.LEFT - 18 for _, t in legend)
    height = float(re.search(r'height="([\d.]+)"', svg).group(1))
    assert max(y for y, _ in legend) < height


def test_a_label_keeps_off_a_reference_line_label():
    floor = (300.0, 135.0, 370.0, 146.0)  # "oracle floor", where the first choice would go
    ((x, y, anchor, text),) = sv.place_labels([(300.0, 150.0, "[18]")], (0, 0, 400, 300), [floor])
    x0 = x - {"start": 0, "middle": 0.5, "end": 1}[anchor] * sv.CHAR_W * len(text)
    assert not sv._overlaps((x0, y - 9, x0 + sv.CHAR_W * len(text), y + 1), [floor])
    svg = sv.svg_chart(
        [sv.Series("", [(127.0, 3.6, "tip", "[18]")])],
        sv.axis_for([30, 127]),
        sv.axis_for([3.3, 200], log=True),
        "NFE",
        "Gen PPL",
        hlines=[(3.3, "oracle floor")],
    )
    (label,) = boxes(svg)
    found = re.search(r'<text x="([\d.]+)" y="([\d.]+)" class="tr"', svg)
    right, base = (float(v) for v in found.groups())
    assert not sv._overlaps(label, [(right - sv.CHAR_W * 12, base - 9, right, base + 1)])

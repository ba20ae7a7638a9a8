"""The self-contained HTML report (`sbd report`, and `report.html` of `sbd demo`).

One HTML page with inline CSS, inline JavaScript and inline SVG charts, nothing fetched
from the network: the Gen PPL / entropy / NFE / seconds table of eval summaries (the
columns and cells of report.py), the Pareto charts (Gen PPL against NFE and against
seconds), a calibration chart (snapshot confidence against how often a regenerated token
survives revision, and against the oracle's probability where the data is the synthetic
language) and a per-record view with the same colours and marks as `sbd show` (the views
of views.py); hovering a token shows its id, confidence, score and stage.

`load_inputs` sorts files into records and summaries; `find_oracle` finds the synthetic
language's oracle; `build_report` returns the page as a string; `write_report` writes it
atomically. Not here: computing summaries (genppl.py) or any printing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from sbdcli import __version__
from sbdcli.artifacts.files import atomic_file, read_jsonl
from sbdcli.artifacts.printable import visible
from sbdcli.artifacts.records import read_records
from sbdcli.artifacts.rundir import data_dirs_of
from sbdcli.errors import UserError
from sbdcli.evaluate import calibration as cal
from sbdcli.evaluate import views as vw
from sbdcli.evaluate.report import AVERAGING, HEADLINE, cell, default_series, visible_columns
from sbdcli.evaluate.report import Series as Groups
from sbdcli.evaluate.svgplot import Series, axis_for, svg_chart

RecordSet = tuple[str, list[dict[str, Any]]]
SUMMARY_KEYS = ("gen_ppl_corpus", HEADLINE, "mauve")
"""A JSON object with one of these keys is an eval summary."""
MAX_RECORDS = 20
"""Records shown per file by default (the calibration uses every record)."""


def _esc(text: str) -> str:
    """Text from data in HTML: control characters shown as escapes (never raw), then
    HTML-escaped."""
    return escape(visible(text, lines=True))


# --------------------------------------------------------------------------- inputs


def _kind(obj: Mapping[str, Any], name: str) -> str:
    if "tokens" in obj:
        return "records"
    if any(k in obj for k in SUMMARY_KEYS):
        return "summaries"
    raise UserError(f"{name}: neither sample records nor eval summaries (sbd eval genppl --out)")


def load_inputs(paths: Sequence[str]) -> tuple[list[dict[str, Any]], list[RecordSet]]:
    """Eval summaries and record sets from files: JSONL of records or summaries,
    `.safetensors` record bundles, or a JSON list of summaries (the demo's results.json)."""
    summaries: list[dict[str, Any]] = []
    sets: list[RecordSet] = []
    for path in paths:
        name = "stdin" if path == "-" else path
        objs: list[Any]
        if path.endswith(".safetensors"):
            objs = list(read_records(path, validate=False))
        else:  # JSON Lines, or one `.json` document (an object or a list)
            objs = list(read_jsonl(path))
        if not objs:
            raise UserError(f"{name}: no records or summaries (empty input)")
        if not all(isinstance(o, dict) for o in objs):
            raise UserError(f"{name}: expected JSON objects")
        if _kind(objs[0], name) == "summaries":
            summaries.extend(objs)
        else:
            for i, rec in enumerate(objs):
                vw.check_viewable(rec, i)
            sets.append((name, objs))
    return summaries, sets


def find_oracle(data_dir: str | Path | None, records: Sequence[Mapping[str, Any]]) -> Any:
    """The synthetic language's oracle of `data_dir` or of the records' run, else None."""
    from sbdcli.data.synthetic import load_oracle

    named = [dict(r) for r in records if isinstance(r.get("model"), str)]
    base = Path(data_dir) if data_dir is not None else None
    for d in data_dirs_of(base, named):
        if (d / "oracle.safetensors").is_file():
            return load_oracle(d / "oracle.safetensors")
    return None


# --------------------------------------------------------------------------- page
CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:1100px;padding:0 1em;
color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:12.5px}th,td{border:1px solid #ccc;padding:3px 6px}
td{text-align:right}td.l{text-align:left}th{background:#f3f3f3}
.note{color:#666;font-size:12.5px}.charts{display:flex;flex-wrap:wrap;gap:12px}
.chart text{font:10px sans-serif;fill:#333}.chart .ct{font-size:11px;font-weight:bold}
.chart .tx{text-anchor:middle}.chart .ty{text-anchor:end}.chart .tr{text-anchor:end;fill:#666}
.chart .grid{stroke:#eee}.chart .ref{stroke:#888;stroke-dasharray:4 3}
.toks{font:13px/1.9 ui-monospace,monospace;white-space:pre-wrap;word-break:break-word}
.t{padding:1px 2px;border-radius:2px;cursor:default}
.p{font-weight:bold;background:#eee}.m{text-decoration:underline 2px;font-weight:bold}
.r{font-style:italic;outline:1px solid #555}.x{outline:2px solid #000}
del.d{color:#888;margin-right:1px}.u{background:#ccc}
.legend span{display:inline-block;padding:0 6px;margin-right:3px}
details{margin:.4em 0}summary{cursor:pointer;font-family:ui-monospace,monospace}
#tip{position:fixed;display:none;background:#222;color:#fff;padding:3px 7px;border-radius:3px;
font:12px ui-monospace,monospace;pointer-events:none;z-index:9}
"""
JS = """
(function(){
  var tip=document.getElementById('tip');
  document.addEventListener('mouseover',function(e){
    var t=e.target.closest?e.target.closest('.t'):null;
    if(!t){tip.style.display='none';return;}
    tip.textContent=t.getAttribute('data-tip');tip.style.display='block';
  });
  document.addEventListener('mousemove',function(e){
    tip.style.left=(e.clientX+12)+'px';tip.style.top=(e.clientY+14)+'px';
  });
})();
"""


def _colour_css() -> str:
    return "".join(f".c{i}{{background:{c}}}" for i, c in enumerate(vw.CONFIDENCE_COLOURS))


def _legend() -> str:
    swatches = "".join(
        f'<span class="c{i}">{_esc(label)}</span>' for i, label in enumerate(vw.bin_labels())
    )
    marks = (
        '<span class="t m">masked</span><span><del class="d">draft</del>'
        '<span class="t x">new</span> revised, changed</span>'
        '<span class="t r">kept</span> revised, kept'
    )
    return f'<p class="legend">snapshot confidence {swatches} &nbsp; {marks}</p>'


def _num(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _tip(tok: vw.TokenView) -> str:
    stage = f"stage {tok.stage} {tok.stage_name}" if tok.stage else "prompt"
    bits = [f"pos {tok.pos}", f"id {tok.id}", f"confidence {_num(tok.confidence)}"]
    bits += [f"score {_num(tok.score)}", stage]
    if tok.changed:
        bits.append(f"draft id {tok.draft_id}")
    return " · ".join(bits)


def _token_html(tok: vw.TokenView) -> str:
    b = vw.confidence_bin(tok.confidence)
    classes = ["t", "p" if tok.prompt else (f"c{b}" if b is not None else "u")]
    classes += [c for c, on in (("m", tok.masked), ("x", tok.changed)) if on]
    if tok.revised and not tok.changed:
        classes.append("r")
    span = (
        f'<span class="{" ".join(classes)}" data-pos="{tok.pos}" '
        f'data-tip="{_esc(_tip(tok))}">{_esc(tok.piece)}</span>'
    )
    if tok.changed:
        span = f'<del class="d">{_esc(tok.draft_piece or "")}</del>' + span
    return span


def _record_html(view: vw.RecordView, open_: bool) -> str:
    head = _esc(f"{view.id} · " + " · ".join(view.summary()))
    toks = _esc(view.separator).join(_token_html(t) for t in view.tokens)
    notes = "".join(f'<p class="note">note: {_esc(n)}</p>' for n in view.notes)
    attrs = ' open=""' if open_ else ""
    return (
        f'<details class="record" data-id="{_esc(view.id)}"{attrs}><summary>{head}</summary>'
        f'<div class="toks">{toks}</div>{notes}</details>'
    )


def _table(summaries: Sequence[dict[str, Any]]) -> str:
    if not summaries:
        return (
            '<p class="note">No eval summaries given (write them with sbd eval genppl --out).</p>'
        )
    cols = visible_columns(summaries)
    head = "<tr><th>#</th>" + "".join(f"<th>{_esc(h)}</th>" for _, h in cols) + "</tr>"
    rows = []
    for i, s in enumerate(summaries, start=1):
        cells = "".join(
            f'<td class="{"l" if k in ("name", "settings_short") else ""}">'
            f"{_esc(cell(s.get(k)))}</td>"
            for k, _ in cols
        )
        rows.append(f'<tr class="row"><td>{i}</td>{cells}</tr>')
    ev = summaries[0].get("evaluator") or {}
    foot = f"Evaluator: {ev.get('kind', '?')} {ev.get('path', '')}. {AVERAGING}"
    return f'<table id="summary">{head}{"".join(rows)}</table><p class="note">{_esc(foot)}</p>'


def _pareto_series(
    summaries: Sequence[dict[str, Any]], groups: Groups, key: str, label: str
) -> list[Series]:
    """One chart series per group (a line through its points in x order); a point is labelled
    with its table row number `[i]` when its group is that one summary."""
    series = []
    for name, idx in groups:
        points = []
        for i in idx:
            s = summaries[i]
            x, y = s.get(key), s.get(HEADLINE)
            if not _finite(x) or not _finite(y) or y <= 0:
                continue
            ent = cell(s.get("entropy_per_sample_mean"))
            tip = f"[{i + 1}] {s.get('name', '')}: Gen PPL {cell(y)}, {label} {cell(x)}, H {ent}"
            points.append((x, y, tip, f"[{i + 1}]" if len(idx) == 1 else ""))
        if points:
            series.append(Series(name, sorted(points), connect=len(points) > 1))
    return series


def _pareto(summaries: Sequence[dict[str, Any]], groups: Groups | None = None) -> str:
    if not summaries:
        return ""
    floor = next((s["oracle_floor_ppl"] for s in summaries if s.get("oracle_floor_ppl")), None)
    groups = groups if groups is not None else default_series(summaries)
    charts = []
    for key, label in (("nfe_per_sample", "NFE per sample"), ("seconds_per_sample", "s/sample")):
        series = _pareto_series(summaries, groups, key, label)
        if not series:
            continue
        ys = [p[1] for s in series for p in s.points] + ([floor] if floor else [])
        x_axis = axis_for([p[0] for s in series for p in s.points])
        hlines = [(floor, "oracle floor")] if floor else []
        charts.append(
            svg_chart(
                series,
                x_axis,
                axis_for(ys, log=True),
                label,
                "Gen PPL (per-sample mean)",
                title=f"Gen PPL against {label}",
                hlines=hlines,
                css_class="chart pareto",
            )
        )
    return f'<div class="charts">{"".join(charts)}</div>' if charts else ""


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _calibration(sets: Sequence[RecordSet], oracle: Any) -> str:
    series = []
    notes = []
    for name, records in sets:
        bins = cal.survival_bins(records)
        if bins:
            pts = [
                (
                    b.confidence,
                    b.value,
                    f"{name}: confidence {b.lo:g}–{b.hi:g}, n {b.n}, kept {b.value:.3f}",
                    "",
                )
                for b in bins
            ]
            series.append(Series(f"kept by revise: {name}", pts, connect=True))
    if oracle is not None:
        bins, skipped = cal.oracle_bins([r for _, recs in sets for r in recs], oracle)
        if bins:
            pts = [
                (
                    b.confidence,
                    b.value,
                    f"oracle: confidence {b.lo:g}–{b.hi:g}, n {b.n}, "
                    f"oracle probability {b.value:.3f}",
                    "",
                )
                for b in bins
            ]
            series.append(Series("oracle probability of the draft token", pts, connect=True))
        if skipped:
            notes.append(f"{skipped} records are not drafts of the oracle's language: left out.")
    if not series:
        return (
            '<p class="note">No calibration data: no revise stage lists what it replaced and '
            "no oracle was found.</p>"
        )
    chart = svg_chart(
        series,
        axis_for([0.0, 1.0], pad=0.03),
        axis_for([0.0, 1.0], pad=0.03),
        "snapshot confidence (bin mean)",
        "fraction kept / probability",
        title="Calibration of snapshot confidence",
        diagonal=True,
        css_class="chart calibration",
    )
    text = (
        "Per confidence bin (tenths): among positions a revise regenerated, the fraction where "
        "it chose the same token again (binned by the confidence before the revise); and, for "
        "the synthetic language, the mean true probability p(x_i | x_<i) of each drafted "
        "token under the oracle (binned by its snapshot confidence). Hover a point for n."
    )
    extra = "".join(f'<p class="note">{_esc(n)}</p>' for n in notes)
    return f'<div class="charts">{chart}</div><p class="note">{_esc(text)}</p>{extra}'


def _records_html(sets: Sequence[RecordSet], pieces: vw.Pieces, max_records: int) -> str:
    if not sets:
        return '<p class="note">No record files given.</p>'
    parts = [_legend()]
    for name, records in sets:
        views = [vw.record_view(r, i, pieces) for i, r in enumerate(records[:max_records])]
        shown = f"{len(views)} of {len(records)}" if len(records) > len(views) else len(views)
        parts.append(f'<section class="set"><h3>{_esc(name)} ({shown} records)</h3>')
        parts += [_record_html(v, open_=j == 0) for j, v in enumerate(views)]
        parts.append("</section>")
    return "".join(parts)


def build_report(
    summaries: Sequence[dict[str, Any]],
    sets: Sequence[RecordSet],
    codec: Any = None,
    oracle: Any = None,
    *,
    max_records: int = MAX_RECORDS,
    title: str = "sbd report",
    source: str = "",
    series: Groups | None = None,
) -> str:
    """The whole page as a string. `codec` decodes the ids (checked against every record;
    None shows ids); `oracle` adds the oracle line of the calibration chart; `series` groups
    the summaries of the Gen PPL charts as `sbd eval genppl --plot` does (default: each its
    own point, labelled with its table row)."""
    if max_records < 0:
        raise UserError(f"`max_records` must be >= 0, got {max_records}")
    if codec is not None:
        for _, records in sets:
            for i, rec in enumerate(records):
                vw.check_codec(rec, i, codec, source or "the tokenizer")
    pieces = vw.Pieces(codec)
    n_records = sum(len(r) for _, r in sets)
    meta = f"sbd {__version__} · {len(summaries)} summaries · {n_records} records"
    body = [
        f"<h1>{_esc(title)}</h1><p class='note'>{_esc(meta)}</p>",
        "<h2>Gen PPL, entropy, NFE, seconds</h2>",
        _table(summaries),
        _pareto(summaries, series),
        "<h2>Calibration</h2>",
        _calibration(sets, oracle) if sets else '<p class="note">No record files given.</p>',
        "<h2>Records</h2>",
        _records_html(sets, pieces, max_records),
    ]
    data = json.dumps({"summaries": len(summaries), "records": n_records})
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_esc(title)}</title><style>{CSS}{_colour_css()}</style></head>"
        f"<body data-report='{_esc(data)}'>{''.join(body)}<div id='tip'></div>"
        f"<script>{JS}</script></body></html>\n"
    )


def write_report(path: str | Path, page: str) -> None:
    """Write the page atomically (no partial file on failure)."""
    with atomic_file(path) as handle:
        handle.write(page)

"""Tests for the HTML report (evaluate/html_report.py, svgplot.py, calibration.py, `sbd report`,
the demo's report.html) without a browser: the page's content, its self-containment, and
the checked example under docs/."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from fake_model import one_thread  # noqa: F401 (autouse fixture)
from report_helpers import FILES, make_report, read_jsonl, working_dir
from sbdcli.cli import main
from sbdcli.data import load_codec
from sbdcli.evaluate import calibration as cal
from sbdcli.evaluate import html_report as hr
from sbdcli.evaluate import views as vw

DOCS_EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "example-report.html"


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("report")
    out = make_report(root, root / "report.html")
    return root, out.read_text()


class Tags(HTMLParser):
    """Every start tag with its attributes, and the text inside <script>/<style>."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def tags(page: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = Tags()
    parser.feed(page)
    return parser.tags


def records_of(page: str, file: str) -> str:
    """The HTML of one file's section of the records view."""
    start = page.index(f"<h3>{file} (")
    end = page.find("</section>", start)
    return page[start:end]


def test_the_page_is_self_contained(made):
    _, page = made
    assert page.startswith("<!DOCTYPE html>")
    for tag, attrs in tags(page):
        assert tag not in ("link", "img", "iframe", "object", "embed"), tag
        assert "src" not in attrs and "href" not in attrs, (tag, attrs)
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", page))
    assert urls <= {"http://www.w3.org/2000/svg"}
    assert "@import" not in page and "url(" not in page


def test_the_table_has_one_row_per_summary(made):
    root, page = made
    summaries = read_jsonl(root / FILES["summaries"])
    table = page[page.index('<table id="summary">') : page.index("</table>")]
    assert table.count('<tr class="row">') == len(summaries) == 3
    for s in summaries:
        assert f'<td class="l">{s["name"]}</td>' in table
    assert "Gen PPL (per-sample mean" in table and "NFE" in table and "s/sample" in table


def test_pareto_and_calibration_charts(made):
    _, page = made
    pareto = re.findall(r'<svg class="chart pareto".*?</svg>', page, flags=re.S)
    assert len(pareto) == 2
    for chart in pareto:
        assert chart.count('class="pt"') == chart.count("<title>") == 3  # one per summary
        assert chart.count('class="lg"') == 3  # its legend marker
        shapes = re.findall(r'<(circle|rect|polygon) [^>]*fill="([^"]+)" class="pt"', chart)
        assert len(set(shapes)) == 3  # colour and shape tell the summaries apart
        assert "oracle floor" in chart
    (calib,) = re.findall(r'<svg class="chart calibration".*?</svg>', page, flags=re.S)
    assert "oracle probability of the draft token" in calib
    assert "kept by revise: revise.jsonl" in calib
    assert "kept by revise: draft.jsonl" not in calib  # a draft has no revision


def test_record_views_mark_what_sbd_show_marks(made):
    root, page = made
    codec = load_codec(root / "run" / "data")
    pieces = vw.Pieces(codec)
    for name in ("remask", "revise", "multi"):
        section = records_of(page, FILES[name])
        for i, rec in enumerate(read_jsonl(root / FILES[name])[:3]):
            view = vw.record_view(rec, i, pieces)
            start = section.index(f'data-id="{rec["id"]}"')
            block = section[start : section.index("</details>", start)]
            assert len(re.findall(r'class="t[^"]* m[ "]', block)) == view.n_masked
            assert block.count('<del class="d">') == view.n_changed
            assert len(re.findall(r'class="t[^"]* x[ "]', block)) == view.n_changed
            assert block.count('class="t ') == len(rec["tokens"])
    remasked = records_of(page, FILES["remask"])
    assert re.search(r'class="t[^"]* m[ "]', remasked)
    assert "(3 of 4 records)" in page  # --records 3


def test_hover_text_names_id_confidence_score_and_stage(made):
    root, page = made
    rec = read_jsonl(root / FILES["remask"])[0]
    tip = re.search(r'data-pos="1" data-tip="([^"]*)"', records_of(page, FILES["remask"]))
    assert tip is not None
    text = tip.group(1)
    assert f"id {rec['tokens'][1]}" in text
    assert f"confidence {rec['confidence'][1]:.3f}" in text
    assert f"score {rec['scores'][1]:.3f}" in text and "stage 1 draft" in text


def test_calibration_numbers(made):
    root, _ = made
    recs = read_jsonl(root / FILES["revise"])
    bins = cal.survival_bins(recs)
    total = sum(b.n for b in bins)
    assert total == sum(r["stages"][-1]["n_masked"] for r in recs)
    kept = sum(
        t == old
        for r in recs
        for p, old in zip(r["stages"][-1]["positions"], r["stages"][-1]["replaced"], strict=True)
        for t in [r["tokens"][p]]
    )
    assert sum(b.value * b.n for b in bins) == pytest.approx(kept)
    assert all(b.lo <= b.confidence < b.hi for b in bins)
    oracle = hr.find_oracle(root / "run" / "data", recs)
    obins, skipped = cal.oracle_bins(recs, oracle)
    assert skipped == 0
    assert sum(b.n for b in obins) == sum(len(r["tokens"]) - 1 for r in recs)
    assert all(0.0 < b.value <= 1.0 for b in obins)


def run_report(root: Path, capsys, *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    with working_dir(root), pytest.raises(SystemExit) as info:
        main(["report", *argv])
    return int(info.value.code or 0), capsys.readouterr().err


def test_report_refuses_bad_input_in_one_line(made, tmp_path, capsys):
    root, _ = made
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"hello": 1}) + "\n")
    code, err = run_report(root, capsys, str(other), "-o", str(tmp_path / "r.html"))
    assert code == 2 and "neither sample records nor eval summaries" in err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, err = run_report(root, capsys, str(empty), "-o", str(tmp_path / "r.html"))
    assert code == 2 and "empty input" in err
    no_conf = tmp_path / "noconf.jsonl"
    rec = read_jsonl(root / FILES["draft"])[0]
    no_conf.write_text(json.dumps({k: v for k, v in rec.items() if k != "confidence"}) + "\n")
    code, err = run_report(root, capsys, str(no_conf), "-o", str(tmp_path / "r.html"))
    assert code == 2 and "no 'confidence'" in err
    assert not (tmp_path / "r.html").exists()
    code, err = run_report(root, capsys, FILES["draft"], "-o", str(tmp_path))
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_summaries_alone_and_records_alone(made, tmp_path, capsys):
    root, _ = made
    out = tmp_path / "s.html"
    assert run_report(root, capsys, FILES["summaries"], "-o", str(out))[0] == 0
    page = out.read_text()
    assert page.count('<tr class="row">') == 3 and "No record files given." in page
    assert run_report(root, capsys, FILES["draft"], "-o", str(out))[0] == 0
    page = out.read_text()
    assert "No eval summaries given" in page and '<table id="summary">' not in page


def test_demo_writes_its_report(made, tmp_path):
    from sbdcli.config import DemoConfig
    from sbdcli.demo import DemoSet, demo_report

    root, _ = made
    draft = read_jsonl(root / FILES["draft"])
    revised = read_jsonl(root / FILES["revise"])
    summaries = read_jsonl(root / FILES["summaries"])[:3]
    cfg = DemoConfig(out=tmp_path, quick=True, gammas=(0.1, 0.25, 0.5), strategies=("snapshot",))
    sets = [
        DemoSet("draft", "-", None, "2 calls/block", "draft", "d.jsonl", draft),
        DemoSet("revise", "snapshot", 0.25, "2 calls/block", "r1", "r1.jsonl", revised),
        DemoSet("revise", "snapshot", 0.5, "2 calls/block", "r2", "r2.jsonl", revised),
    ]
    demo_report(cfg, root / "run" / "data", summaries, sets)
    page = (tmp_path / "report.html").read_text()
    assert "<h3>draft (4 records)</h3>" in page  # REPORT_RECORDS = 4 of each set
    assert "<h3>revise snapshot γ0.25 (" in page and "γ0.5 (" not in page
    assert page.count('<tr class="row">') == 3
    (nfe_chart, _) = re.findall(r'<svg class="chart pareto".*?</svg>', page, flags=re.S)
    assert nfe_chart.count("<polyline") == 1  # the strategy's gammas are one line
    assert "snapshot remask + global revise (γ 0.1, 0.25, 0.5)" in nfe_chart


def test_the_docs_example_is_current_and_small():
    """docs/example-report.html: regenerate with `python tests/report_helpers.py`."""
    page = DOCS_EXAMPLE.read_text()
    assert len(page.encode()) < 300_000
    assert page.count('<tr class="row">') == 3
    assert page.count('<details class="record"') == 4 * 3 + 2
    for name in FILES.values():
        if name != FILES["summaries"]:
            assert f"<h3>{name} (" in page
    assert "/tmp" not in page and "/work" not in page

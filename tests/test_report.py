"""Tests for evaluate/report.py: cells, the markdown table, the plot."""

from __future__ import annotations

from sbdcli.evaluate import cell, markdown_table, plot_genppl, table_rows


def test_markdown_and_plot(tmp_path):
    rows = [
        {"name": "a.jsonl", "n": 4, "gen_ppl_corpus": 5.0, "gen_ppl_per_sample_mean": 6.0,
         "entropy_per_sample_mean": 3.5, "nfe_per_sample": 32.0, "seconds_per_sample": 0.1,
         "settings_short": "draft B4", "evaluator": {"kind": "oracle"}, "eos": "skip",
         "oracle_floor_ppl": 3.3},
        {"name": "b.jsonl", "n": 4, "gen_ppl_corpus": 4.0, "gen_ppl_per_sample_mean": 4.5,
         "entropy_per_sample_mean": 3.4, "nfe_per_sample": 40.0, "seconds_per_sample": 0.2,
         "settings_short": "draft B4 · revise B16", "evaluator": {"kind": "oracle"}},
    ]  # fmt: skip
    md = markdown_table(rows)
    lines = md.splitlines()
    assert lines[0].startswith("| file / group | n | Gen PPL (corpus) | Gen PPL (mean/sample)")
    assert "| a.jsonl | 4 | 5.000 | 6.000 | 3.500 | 32.00 |" in md and "entropy in nats" in md
    out = tmp_path / "p.png"
    plot_genppl(rows, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["p.png"]  # no temporary left behind


def test_cells_and_rows():
    assert [cell(v) for v in (None, 3, 2.0, 1234.5, 2.5e7, "x")] == [
        "–", "3", "2.000", "1,234", "2.500e+07", "x"
    ]  # fmt: skip
    assert table_rows([{"name": "a", "n": 2}, {"name": "b", "n": 3}]) == [["a", "2"], ["b", "3"]]

"""Tests for evaluate/report.py: cells, the markdown table, the plot."""

from __future__ import annotations

from sbdcli.evaluate import cell, markdown_table, plot_genppl, table_rows, terminal_columns
from sbdcli.evaluate.report import default_series, markdown_grid, plot_points, plot_title


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
    assert lines[0].startswith(
        "| file / group | n | Gen PPL (per-sample mean, BD3-LM/MDLM protocol) | "
        "Gen PPL (corpus, token-weighted) |"
    )  # the BD3-LM/MDLM averaging is the headline, the first Gen PPL column
    assert "| a.jsonl | 4 | 6.000 | 5.000 | 3.500 | 32.00 |" in md and "entropy in nats" in md
    assert "mean over samples of exp(NLL_i / n_i)" in md
    out = tmp_path / "p.png"
    plot_genppl(rows, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["p.png"]  # no temporary left behind


def test_the_plot_draws_the_per_sample_mean_one_line_per_series(tmp_path):
    rows = [
        {"name": "a", "gen_ppl_corpus": 5.0, "gen_ppl_per_sample_mean": 6.0,
         "nfe_per_sample": 3.0, "seconds_per_sample": 0.5, "entropy_per_sample_mean": 3.4},
        {"name": "b", "gen_ppl_corpus": 3.0, "gen_ppl_per_sample_mean": 4.0,
         "nfe_per_sample": 1.0, "seconds_per_sample": 0.2, "entropy_per_sample_mean": 3.2},
        {"name": "c", "gen_ppl_corpus": 2.0, "gen_ppl_per_sample_mean": 2.5,
         "nfe_per_sample": 2.0, "seconds_per_sample": 0.3},
    ]  # fmt: skip
    series = [("line", [0, 1]), ("point", [2])]
    assert plot_points(rows, series, "nfe_per_sample") == [
        ("line, H 3.20–3.40", [1.0, 3.0], [4.0, 6.0]),  # x order, the per-sample mean
        ("point", [2.0], [2.5]),
    ]
    assert plot_points(rows, series, "seconds_per_sample")[0][1] == [0.2, 0.5]
    assert [label for label, _ in default_series(rows)] == ["[1] a", "[2] b", "[3] c"]
    plot_genppl(rows, tmp_path / "p.png", series)
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_plot_title_names_the_judge_once():
    oracle = [{"evaluator": {"kind": "oracle", "path": "data/oracle.safetensors"}}]
    assert plot_title(oracle).endswith("judged by the exact oracle")
    model = [{"evaluator": {"kind": "sbd", "path": "runs/judge"}}]
    assert plot_title(model).endswith("judged by sbd judge")


def test_markdown_grid_aligns_and_escapes():
    md = markdown_grid(["a", "b"], [["x|y", "1"]], "lr")
    assert md.splitlines() == ["| a | b |", "|---|---:|", "| x\\|y | 1 |"]


def test_terminal_headers_say_which_averaging():
    rows = [{"gen_ppl_corpus": 5.0, "gen_ppl_per_sample_mean": 6.0, "n_low_entropy": 1}]
    headers = [h for _, h in terminal_columns(rows)]
    assert headers == ["PPL per-sample", "PPL corpus", "low-H"]


def test_cells_and_rows():
    assert [cell(v) for v in (None, 3, 2.0, 1234.5, 2.5e7, "x")] == [
        "–", "3", "2.000", "1,234", "2.500e+07", "x"
    ]  # fmt: skip
    assert table_rows([{"name": "a", "n": 2}, {"name": "b", "n": 3}]) == [["a", "2"], ["b", "3"]]

"""Evaluation: Gen PPL of sample records (with entropy and costs) and held-out perplexity.

- metrics.py: `Scores` and the metric math: scored positions, unigram entropy, Gen PPL (corpus and
  per-sample), costs, a group's summary numbers;
- grouping.py: records grouped by stage history, their sampler settings;
- judges.py: the `Judge` protocol, the oracle and sbd block-1 judges;
- hf_judge.py: the transformers causal-LM judge;
- genppl.py: the driver (`evaluate_sets`: special ids, judge choice, one summary per group);
- perplexity.py: test perplexity exp(NELBO) of a run on held-out rows;
- report.py: tables (cells, markdown) and the Gen PPL plot;
- views.py: per-token views of records (what `sbd show` and the HTML report display);
- calibration.py: snapshot confidence against survival of revision and the oracle;
- svgplot.py, html_report.py: the self-contained HTML report (`sbd report`).

docs/evaluation.md states the protocol. Not here: sampling (pipeline/), the NELBO itself
(diffusion/), the command line (cli/evaluate.py). Nothing here prints.
"""

from __future__ import annotations

from sbdcli.config import EOS_MODES, GenPplOptions
from sbdcli.evaluate.genppl import check_finished, evaluate_sets, make_judge, vocab_info
from sbdcli.evaluate.grouping import (
    NOT_SETTINGS,
    group_records,
    sampler_settings,
    short_settings,
    stage_settings,
    stage_signature,
)
from sbdcli.evaluate.hf_judge import HFJudge
from sbdcli.evaluate.judges import Judge, OracleJudge, SbdJudge
from sbdcli.evaluate.metrics import (
    ENTROPY_OVER,
    Scores,
    VocabInfo,
    costs,
    entropy_stats,
    gen_ppl,
    records_mask,
    scored_mask,
    summarize,
    unigram_entropy,
)
from sbdcli.evaluate.perplexity import PplResult, check_ppl_inputs, heldout_perplexity
from sbdcli.evaluate.report import (
    COLUMNS,
    cell,
    markdown_grid,
    markdown_table,
    plot_genppl,
    table_rows,
    terminal_columns,
    visible_columns,
)

__all__ = [
    "COLUMNS",
    "ENTROPY_OVER",
    "EOS_MODES",
    "NOT_SETTINGS",
    "GenPplOptions",
    "HFJudge",
    "Judge",
    "OracleJudge",
    "PplResult",
    "SbdJudge",
    "Scores",
    "VocabInfo",
    "cell",
    "check_finished",
    "check_ppl_inputs",
    "costs",
    "entropy_stats",
    "evaluate_sets",
    "gen_ppl",
    "group_records",
    "heldout_perplexity",
    "make_judge",
    "markdown_grid",
    "markdown_table",
    "plot_genppl",
    "records_mask",
    "sampler_settings",
    "scored_mask",
    "short_settings",
    "stage_settings",
    "stage_signature",
    "summarize",
    "table_rows",
    "terminal_columns",
    "unigram_entropy",
    "visible_columns",
    "vocab_info",
]

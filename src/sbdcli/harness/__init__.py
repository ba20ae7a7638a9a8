"""lm-evaluation-harness for sbd runs: the `sbd` lm-eval model and the task runner.

- lm.py: `SbdLM`, registered with lm-eval as `sbd` when imported (loglikelihood as a
  block-NELBO bound with common random numbers, rolling loglikelihood, generate_until
  through the draft / remask / revise pipeline);
- run.py: `run_tasks` (lm-eval's `simple_evaluate` with a `TaskManager` and a local
  `include_path`), `result_rows` for tables.

A client of `pipeline/` and `evaluate/`, one layer with demo.py. lm-eval is the optional
`harness` extra: nothing here is imported unless `sbd eval harness` runs (lm.py imports
lm-eval at module level, so `import sbdcli.harness.lm` needs the extra).
Not here: the likelihood math (evaluate/likelihood.py) or printing (cli/harness.py).
"""

from __future__ import annotations

from sbdcli.harness.run import HarnessOptions, result_rows, run_tasks

__all__ = ["HarnessOptions", "result_rows", "run_tasks"]

"""Run lm-evaluation-harness tasks on an sbd run: `sbd eval harness` without the printing.

`run_tasks` builds the `sbd` lm-eval model (lm.py), resolves the task names with lm-eval's
`TaskManager` (its built-in tasks plus `include_path`, a directory of task YAMLs, as lm-eval's
`--include_path`), refuses unknown names, and returns lm-eval's results with the model's
settings. `result_rows` flattens them into (task, metric, value, stderr) rows.

Everything runs offline when HF_HUB_OFFLINE / HF_DATASETS_OFFLINE are set and the tasks read
local files (`dataset_path: json` with `dataset_kwargs: {data_files: ...}`).

Not here: the model (lm.py), the likelihood math (evaluate/likelihood.py), printing (cli/).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sbdcli.errors import UserError


@dataclass
class HarnessOptions:
    """What `sbd eval harness` asks lm-eval for."""

    model: str
    tasks: list[str]
    include_path: Path | None = None
    device: str = "auto"
    batch_size: int = 16
    limit: float | None = None
    num_fewshot: int | None = None
    seed: int = 0
    model_args: dict[str, Any] = field(default_factory=dict)


def _task_manager(include_path: Path | None, tasks: list[str]) -> Any:
    """lm-eval's `TaskManager` that knows `tasks`: the tasks under `include_path` alone
    when they are all there (indexing lm-eval's thousands of built-in YAMLs takes many
    seconds), else the built-in ones too. Unknown names are refused in one line."""
    from lm_eval.tasks import TaskManager  # heavy optional dependency (the `harness` extra)

    if not tasks:
        raise UserError("--tasks names no task")
    if include_path is not None:
        if not include_path.is_dir():
            raise UserError(f"--include-path {include_path}: not a directory")
        try:
            local = TaskManager(include_path=str(include_path), include_defaults=False)
        except TypeError:  # an lm-eval without `include_defaults`
            local = None
        if local is not None and set(tasks) <= set(local.all_tasks):
            return local
    manager = TaskManager(include_path=str(include_path) if include_path else None)
    unknown = [t for t in tasks if t not in set(manager.all_tasks)]
    if unknown:
        raise UserError(
            f"unknown lm-eval task {unknown[0]!r} (not built in and not under --include-path)"
        )
    return manager


def run_tasks(opts: HarnessOptions) -> dict[str, Any]:
    """lm-eval's results dict for `opts.tasks` on the sbd model, plus `sbd` settings."""
    import lm_eval

    from sbdcli.harness.lm import SbdLM

    for name in ("lm-eval", "lm_eval"):  # its INFO lines would bury the table on stderr
        logging.getLogger(name).setLevel(logging.WARNING)
    manager = _task_manager(opts.include_path, opts.tasks)
    model = SbdLM(
        pretrained=opts.model,
        device=opts.device,
        batch_size=opts.batch_size,
        seed=opts.seed,
        **opts.model_args,
    )
    try:
        results = lm_eval.simple_evaluate(
            model=model,
            tasks=opts.tasks,
            num_fewshot=opts.num_fewshot,
            limit=opts.limit,
            task_manager=manager,
            random_seed=opts.seed,
            numpy_random_seed=opts.seed,
            torch_random_seed=opts.seed,
            fewshot_random_seed=opts.seed,
        )
    except ConnectionError as exc:  # the hub's offline refusal is one, as is a network error
        raise UserError(_fetch_failed(opts.tasks, exc)) from exc
    if results is None:
        raise UserError("lm-eval returned no results")
    results["sbd"] = {
        "model": model.ref.id,
        "likelihood_block": model.block,
        "mc": model.mc,
        "estimator": model.estimator,
        "exact": model.block == 1,
        "draft": model.draft_cfg.params(),
        "revise": bool(model.plan),
        "seed": opts.seed,
    }
    return _plain(results)


def _fetch_failed(tasks: list[str], exc: Exception) -> str:
    """One line for a task whose data lm-eval could not download."""
    offline = any(
        os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )
    why = " (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE are set here)" if offline else ""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (
        f"lm-eval could not fetch the data of --tasks {','.join(tasks)}: {first}{why}; "
        "it downloads each task's dataset, so run once with the network, or give local "
        "task YAMLs with --include-path"
    )


def _plain(obj: Any) -> Any:
    """A JSON-serialisable copy (lm-eval's results hold numpy scalars and callables)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


def result_rows(results: dict[str, Any]) -> list[tuple[str, str, float | None, float | None]]:
    """(task, metric, value, stderr) per metric of every task, in lm-eval's order."""
    rows = []
    for task, metrics in results.get("results", {}).items():
        for key, value in metrics.items():
            metric, _, filt = key.partition(",")
            if metric == "alias" or metric.endswith("_stderr") or not isinstance(value, float):
                continue
            err = metrics.get(f"{metric}_stderr,{filt}")
            name = metric if filt in ("", "none") else f"{metric} ({filt})"
            rows.append((task, name, value, err if isinstance(err, float) else None))
    return rows

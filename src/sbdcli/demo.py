"""The end-to-end demo on the embedded topic-markov language (what `sbd demo` runs).

Steps, each reused on a rerun when its artifact is complete (unless `fresh`):
1. prepare the synthetic default into `OUT/data`;
2. mix-scale training of a `tiny` model (blocks {4, L}, lambda 0.1) into `OUT/model`
   (an interrupted training resumes from its last checkpoint);
3. one draft with block 4 (`OUT/draft.jsonl`);
4. for every remask strategy and gamma: remask + one global revise block
   (`OUT/revise-<strategy>-g<gamma>.jsonl`);
5. oracle Gen PPL, entropy, NFE and seconds of every set (`OUT/results.json`,
   `OUT/results.md`), a Pareto plot (`OUT/pareto.png`) and the HTML report
   (`OUT/report.html`: table, charts, calibration, records coloured as `sbd show` does).

Everything is deterministic for a seed. This module orchestrates library calls only; it
does not print (the CLI renders `log` messages, progress and the table).
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sbdcli import artifacts, pipeline
from sbdcli import evaluate as ev
from sbdcli.artifacts.files import check_output_dir
from sbdcli.artifacts.rundir import RunDir
from sbdcli.config import DemoConfig, FixedSteps, SamplerConfig, train_config
from sbdcli.data import prepare_synthetic, read_manifest
from sbdcli.errors import UserError
from sbdcli.model.checkpoint import resolve_device
from sbdcli.train import setup

Log = Callable[[str], None]

DATA_SIZES = {
    True: {"num_train": 2048, "num_val": 256, "floor_samples": 1024},
    False: {"num_train": 16384, "num_val": 1024, "floor_samples": 4096},
}


def demo_data(cfg: DemoConfig, log: Log) -> Path:
    """Prepare (or reuse) the synthetic default language in OUT/data."""
    data_dir = cfg.out / "data"
    sizes = DATA_SIZES[cfg.quick]
    if not cfg.fresh and (data_dir / "manifest.json").is_file():
        manifest = read_manifest(data_dir)
        same = (
            manifest.get("source", {}).get("kind") == "synthetic"
            and manifest.get("seed") == cfg.seed
            and manifest.get("rows", {}).get("train") == sizes["num_train"]
        )
        if same:
            log(f"reusing data in {data_dir}")
            return data_dir
    log("preparing the topic-markov language")
    command = f"sbd prepare --out {data_dir} --seed {cfg.seed} --num-train {sizes['num_train']}"
    prepare_synthetic(data_dir, seed=cfg.seed, command=command, **sizes)
    return data_dir


def _train_config(cfg: DemoConfig, seq_len: int) -> Any:
    return train_config(
        "tiny",
        steps=cfg.n_steps,
        batch_size=16 if cfg.quick else None,  # None: the tiny preset's 32 rows
        block_small=cfg.draft_block,
        block_large=seq_len,
        mix_lambda=0.1,
        seed=cfg.seed,
        val_every=max(cfg.n_steps // 4, 1),
        save_every=max(cfg.n_steps // 4, 1),
        device=cfg.device,
    )


def demo_model(
    cfg: DemoConfig, data_dir: Path, log: Log, progress: Callable[[Any], None] | None
) -> Path:
    """Train (or reuse, or resume) the mix-scale tiny model in OUT/model."""
    run_dir = cfg.out / "model"
    run = RunDir(run_dir)
    tcfg = _train_config(cfg, int(read_manifest(data_dir)["seq_len"]))
    done = 0 if cfg.fresh else run.finished_steps()
    if done >= tcfg.steps and run.model_path.is_file():
        log(f"reusing the trained model in {run_dir} ({done} steps)")
        return run_dir
    if run_dir.exists() and done == 0:
        shutil.rmtree(run_dir)
    resume = done > 0
    log(f"{'resuming' if resume else 'training'} a tiny mix-scale model ({tcfg.steps} steps)")
    trainer = setup(tcfg, data_dir, run_dir, resume=resume, runs_root=cfg.out)
    trainer.fit(progress)
    return run_dir


def _read(path: Path) -> list[dict[str, Any]]:
    return list(artifacts.read_records(str(path)))


def _reusable(path: Path, cfg: DemoConfig) -> bool:
    if cfg.fresh or not path.is_file():
        return False
    try:
        return len(_read(path)) == cfg.n_samples
    except UserError:
        return False


def demo_draft(cfg: DemoConfig, ref: Any, log: Log) -> list[dict[str, Any]]:
    """Draft n samples with block B(1) (reused when OUT/draft.jsonl is complete)."""
    path = cfg.out / "draft.jsonl"
    if _reusable(path, cfg):
        log(f"reusing {path}")
        return _read(path)
    length = ref.model.config.seq_len
    steps = max(1, math.ceil(cfg.draft_block / cfg.tokens_per_call))
    scfg = SamplerConfig(block_size=cfg.draft_block, reveal=FixedSteps(steps))
    log(f"drafting {cfg.n_samples} samples (block {cfg.draft_block}, {steps} calls per block)")
    prompts = pipeline.draft_prompts(ref, cfg.n_samples, cfg.seed, None)
    records: list[dict[str, Any]] = []
    for batch in pipeline.batched(prompts, 64):
        records.extend(
            pipeline.draft_batch(ref, batch, length, scfg, cfg.seed, n_records=len(prompts))
        )
    artifacts.write_records(records, str(path))
    return records


def demo_revise(
    cfg: DemoConfig, ref: Any, drafts: list[dict[str, Any]], strategy: str, gamma: float
) -> tuple[Path, list[dict[str, Any]]]:
    """Remask the drafts with (strategy, gamma), revise with one global block."""
    path = cfg.out / f"revise-{strategy}-g{gamma:g}.jsonl"
    if _reusable(path, cfg):
        return path, _read(path)
    length = ref.model.config.seq_len
    n_masked = math.floor(gamma * (length - 1))
    steps = max(1, math.ceil(n_masked / cfg.tokens_per_call))
    rcfg = pipeline.RemaskConfig(gamma=gamma, strategy=strategy, seed=cfg.seed)
    scfg = SamplerConfig(block_size=0, reveal=FixedSteps(steps))
    records: list[dict[str, Any]] = []
    for batch in pipeline.batched(drafts, 64):
        remasked = pipeline.remask_batch([dict(r) for r in batch], rcfg, ref)
        records.extend(pipeline.revise_batch(remasked, ref, scfg, cfg.seed))
    artifacts.write_records(records, str(path))
    return path, records


def _row(summary: dict[str, Any], stage: str, strategy: str, gamma: float | None) -> dict:
    return {"stage": stage, "strategy": strategy, "gamma": gamma, **summary}


def demo_eval(
    cfg: DemoConfig, data_dir: Path, sets: list[tuple[str, str, float | None, list]]
) -> list[dict[str, Any]]:
    """Oracle Gen PPL of every set; writes results.json, results.md, pareto.png, report.html."""
    opts = ev.GenPplOptions(evaluator="oracle", data_dir=data_dir, group=False, seed=cfg.seed)
    named = [
        (f"{stage} {strategy} {gamma if gamma is not None else ''}".strip(), recs)
        for stage, strategy, gamma, recs in sets
    ]
    summaries = ev.evaluate_sets(named, opts)
    rows = [
        _row(s, stage, strategy, gamma)
        for s, (stage, strategy, gamma, _) in zip(summaries, sets, strict=True)
    ]
    artifacts.write_json(cfg.out / "results.json", rows)
    with artifacts.atomic_file(cfg.out / "results.md") as handle:
        handle.write(ev.markdown_table(summaries))
    ev.plot_genppl(summaries, cfg.out / "pareto.png")
    demo_report(cfg, data_dir, summaries, sets)
    return rows


REPORT_RECORDS = 4
"""Records the demo's report.html shows per set (its calibration uses every record)."""


def demo_report(
    cfg: DemoConfig,
    data_dir: Path,
    summaries: list[dict[str, Any]],
    sets: list[tuple[str, str, float | None, list]],
) -> None:
    """OUT/report.html: the table, the charts, and the draft with every strategy's revise
    at the middle gamma (html_report.py)."""
    from sbdcli.data import load_codec
    from sbdcli.data.synthetic import load_oracle
    from sbdcli.evaluate import html_report

    middle = cfg.gammas[len(cfg.gammas) // 2] if cfg.gammas else None
    shown = [
        (f"{stage} {strategy} γ{gamma:g}" if gamma is not None else stage, recs)
        for stage, strategy, gamma, recs in sets
        if gamma is None or gamma == middle
    ]
    page = html_report.build_report(
        summaries,
        shown,
        load_codec(data_dir),
        load_oracle(data_dir / "oracle.safetensors"),
        max_records=REPORT_RECORDS,
        title="sbd demo: Structural Block Diffusion on topic-markov",
        source=str(data_dir),
    )
    html_report.write_report(cfg.out / "report.html", page)


def check_demo(cfg: DemoConfig) -> None:
    """What can be refused before any work: an `out` that is a file, an unusable device."""
    check_output_dir(cfg.out)
    resolve_device(cfg.device)


def run_demo(
    cfg: DemoConfig,
    log: Log = lambda _: None,
    train_progress: Callable[[Any], None] | None = None,
    step: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every demo step; return one result row per (stage, strategy, gamma)."""
    check_demo(cfg)
    cfg.out.mkdir(parents=True, exist_ok=True)
    data_dir = demo_data(cfg, log)
    run_dir = demo_model(cfg, data_dir, log, train_progress)
    ref = pipeline.load_model_ref(run_dir, cfg.device)
    drafts = demo_draft(cfg, ref, log)
    sets: list[tuple[str, str, float | None, list]] = [("draft", "-", None, drafts)]
    for strategy in cfg.strategies:
        for gamma in cfg.gammas:
            if step is not None:
                step(f"remask {strategy} gamma {gamma:g} + global revise")
            _, records = demo_revise(cfg, ref, drafts, strategy, gamma)
            sets.append(("revise", strategy, gamma, records))
    log("scoring every set with the oracle")
    return demo_eval(cfg, data_dir, sets)

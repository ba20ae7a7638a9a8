"""The end-to-end demo on the embedded topic-markov language (what `sbd demo` runs).

Steps, each reused on a rerun when its artifact is complete (unless `fresh`):
1. prepare the synthetic default into `OUT/data`;
2. mix-scale training of a `tiny` model (blocks {4, L}, lambda 0.1) into `OUT/model`
   (an interrupted training resumes from its last checkpoint);
3. one draft with block 4 at 2 calls per block (`OUT/draft.jsonl`);
4. for every remask strategy and gamma: remask + one global revise block
   (`OUT/revise-<strategy>-g<gamma>.jsonl`);
5. the plain drafts the revises are measured against: 1, 3 and 4 calls per block
   (`OUT/draft-c<calls>.jsonl`), the confident order at 2 (`OUT/draft-c2-confident.jsonl`),
   and a threshold revise on the approximate cache of the 4-calls (one token per call) draft
   (`BEST_REVISE`, `OUT/revise-c4-...jsonl`);
6. oracle Gen PPL, entropy, NFE and seconds of every set (`OUT/results.json`,
   `OUT/results.md` with the summary `demo_summary` computes: the best setting and every
   revise against the plain draft of the nearest NFE and seconds), a plot of Gen PPL
   against NFE and seconds (`OUT/pareto.png`: one line per strategy across its gammas, one
   for the plain drafts) and the HTML report (`OUT/report.html`: table, charts,
   calibration, records coloured as `sbd show` does).

Everything is deterministic for a seed. This module orchestrates library calls only; it
does not print (the CLI renders `log` messages, progress and the table).
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sbdcli import artifacts, pipeline
from sbdcli import evaluate as ev
from sbdcli.artifacts.files import check_output_dir
from sbdcli.artifacts.rundir import RunDir
from sbdcli.config import (
    ApproxCache,
    DemoConfig,
    FixedSteps,
    SamplerConfig,
    Threshold,
    train_config,
)
from sbdcli.data import prepare_synthetic, read_manifest
from sbdcli.errors import UserError
from sbdcli.evaluate.report import HEADLINE
from sbdcli.model.checkpoint import resolve_device
from sbdcli.train import setup

Log = Callable[[str], None]

DEMO_SEQ_LEN = 128
"""Sequence length of the demo's data (the synthetic default)."""
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
    prepare_synthetic(data_dir, None, DEMO_SEQ_LEN, seed=cfg.seed, command=command, **sizes)
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


PLAIN_CALLS = (1, 2, 3, 4)
"""Calls per block of the plain drafts (block 4: 4, 2, 4/3 and 1 tokens per call)."""
BEST_REVISE = {"gamma": 0.25, "threshold": 0.5, "refresh": 4}
"""The revise of the one-token-per-call draft (snapshot remask, one global block, threshold
decoding on the approximate cache): the setting docs/results.md found to lower that
draft's Gen PPL."""


@dataclass
class DemoSet:
    """One setting of the demo: its table cells, its records file and its records."""

    stage: str  # draft or revise
    strategy: str  # remask strategy of a revise; "-" for a plain draft
    gamma: float | None
    draft: str  # the draft it starts from: calls per block, order
    name: str  # the row's name in results.md and the plot
    file: str
    records: list[dict[str, Any]] = field(default_factory=list)


def _calls(cfg: DemoConfig) -> int:
    """Calls per block of the demo's main draft (every remask strategy revises it)."""
    return max(1, math.ceil(cfg.draft_block / cfg.tokens_per_call))


def _plain_calls(cfg: DemoConfig) -> list[int]:
    """Calls per block of the plain drafts: `PLAIN_CALLS` up to the block, and the block."""
    return sorted({c for c in PLAIN_CALLS if c <= cfg.draft_block} | {cfg.draft_block})


def _draft_label(calls: int, order: str = "random") -> str:
    tail = "" if order == "random" else f", {order} order"
    return f"{calls} call{'s' if calls > 1 else ''}/block{tail}"


def _sample(cfg: DemoConfig, s: DemoSet, make: Callable[[], list[dict[str, Any]]]) -> DemoSet:
    """Fill `s.records` from its finished file, or by `make` (then written)."""
    s.records, _ = pipeline.reuse_or_write(cfg.out / s.file, cfg.n_samples, make, cfg.fresh)
    return s


def demo_draft(
    cfg: DemoConfig, ref: Any, log: Log, calls: int | None = None, order: str = "random"
) -> DemoSet:
    """Draft n samples with block B(1) at `calls` per block (default: the demo's draft)."""
    main = calls is None
    calls = _calls(cfg) if calls is None else calls
    label = _draft_label(calls, order)
    file = (
        "draft.jsonl" if main else f"draft-c{calls}{'' if order == 'random' else '-' + order}.jsonl"
    )
    policy = FixedSteps(calls, confident=order == "confident")
    scfg = SamplerConfig(block_size=cfg.draft_block, reveal=policy)
    name = "draft" if main else f"draft {label}"
    found = pipeline.finished(cfg.out / file, cfg.n_samples) is not None and not cfg.fresh
    log(f"reusing {cfg.out / file}" if found else f"drafting {cfg.n_samples} samples ({label})")
    s = DemoSet("draft", "-", None, label, name, file)
    return _sample(cfg, s, lambda: pipeline.draft_set(ref, cfg.n_samples, cfg.seed, scfg))


def demo_revise(cfg: DemoConfig, ref: Any, draft: DemoSet, strategy: str, gamma: float) -> DemoSet:
    """Remask the main draft with (strategy, gamma), revise with one global block."""
    length = ref.model.config.seq_len
    steps = max(1, math.ceil(math.floor(gamma * (length - 1)) / cfg.tokens_per_call))
    rcfg = pipeline.RemaskConfig(gamma=gamma, strategy=strategy, seed=cfg.seed)
    scfg = SamplerConfig(block_size=0, reveal=FixedSteps(steps))
    s = DemoSet("revise", strategy, gamma, draft.draft, f"revise {strategy} {gamma}",
                f"revise-{strategy}-g{gamma:g}.jsonl")  # fmt: skip
    return _sample(cfg, s, lambda: pipeline.revise_set(ref, draft.records, rcfg, scfg, cfg.seed))


def demo_best_revise(cfg: DemoConfig, ref: Any, draft: DemoSet) -> DemoSet:
    """The threshold revise (`BEST_REVISE`) of the one-token-per-call draft."""
    gamma, tau, refresh = (BEST_REVISE[k] for k in ("gamma", "threshold", "refresh"))
    rcfg = pipeline.RemaskConfig(gamma=gamma, strategy="snapshot", seed=cfg.seed)
    scfg = SamplerConfig(block_size=0, reveal=Threshold(tau), cache=ApproxCache(refresh))
    how = f"τ {tau:g}, approx cache R {refresh}"
    name = f"revise snapshot {gamma} {how} of the {draft.draft} draft"
    file = f"revise-c{cfg.draft_block}-snapshot-g{gamma:g}-tau{tau:g}-approx{refresh}.jsonl"
    s = DemoSet("revise", f"snapshot, {how}", gamma, draft.draft, name, file)
    return _sample(cfg, s, lambda: pipeline.revise_set(ref, draft.records, rcfg, scfg, cfg.seed))


def _row(summary: dict[str, Any], s: DemoSet) -> dict[str, Any]:
    return {"stage": s.stage, "strategy": s.strategy, "gamma": s.gamma, "draft": s.draft,
            **summary}  # fmt: skip


def plot_series(sets: list[DemoSet], cfg: DemoConfig) -> list[tuple[str, list[int]]]:
    """The plot's groups: the plain drafts as one line across their calls per block, each
    remask strategy as one line across its gammas, every other setting its own point."""
    plain = [i for i, s in enumerate(sets) if s.stage == "draft" and s.draft.endswith("block")]
    calls = ", ".join(str(c) for c in _plain_calls(cfg))
    groups = [(f"plain draft ({calls} calls/block)", plain)]
    for i, s in enumerate(sets):
        if s.stage == "draft" and i not in plain:
            groups.append((f"plain draft, {s.draft}", [i]))
    gammas = ", ".join(f"{g:g}" for g in cfg.gammas)
    for strategy in cfg.strategies:
        idx = [i for i, s in enumerate(sets) if s.stage == "revise" and s.strategy == strategy]
        groups.append((f"{strategy} remask + global revise (γ {gammas})", idx))
    for i, s in enumerate(sets):
        if s.stage == "revise" and s.strategy not in cfg.strategies:
            groups.append((f"{s.strategy} revise (γ {s.gamma:g}) of the {s.draft} draft", [i]))
    return groups


def demo_eval(cfg: DemoConfig, data_dir: Path, sets: list[DemoSet]) -> list[dict[str, Any]]:
    """Oracle Gen PPL of every set; writes results.json, results.md, pareto.png, report.html."""
    opts = ev.GenPplOptions(evaluator="oracle", data_dir=data_dir, group=False, seed=cfg.seed)
    summaries = ev.evaluate_sets([(s.name, s.records) for s in sets], opts)
    rows = [_row(summary, s) for summary, s in zip(summaries, sets, strict=True)]
    artifacts.write_json(cfg.out / "results.json", rows)
    with artifacts.atomic_file(cfg.out / "results.md") as handle:
        handle.write(ev.markdown_table(summaries))
        handle.write("\n" + "\n".join(f"- {line}" for line in demo_summary(rows)) + "\n")
    ev.plot_genppl(summaries, cfg.out / "pareto.png", plot_series(sets, cfg))
    demo_report(cfg, data_dir, summaries, sets)
    return rows


def _nearest(rows: list[dict[str, Any]], to: dict[str, Any], key: str) -> dict[str, Any]:
    return min(rows, key=lambda r: abs(math.log(r[key] / to[key])))


def _ppl(row: dict[str, Any]) -> str:
    return f"{row[HEADLINE]:.3f}"


def demo_summary(rows: list[dict[str, Any]]) -> list[str]:
    """What the table says, computed from its rows: the best setting, and every revise
    against the plain random-order draft of the nearest NFE and of the nearest seconds."""
    plain = [r for r in rows if r["stage"] == "draft" and r["draft"].endswith("block")]
    revises = [r for r in rows if r["stage"] == "revise"]
    best = min(rows, key=lambda r: r[HEADLINE])
    lines = [
        f"Lowest per-sample Gen PPL: {best['name']} ({_ppl(best)}, "
        f"{best['nfe_per_sample']:.0f} NFE, {1e3 * best['seconds_per_sample']:.1f} ms/sample)."
    ]
    if best["stage"] == "draft":
        lines.append(
            f"The plain draft at {best['draft']} is the best setting at this scale: "
            "no remask + revise setting lowers its Gen PPL."
        )
    for key, what in (("nfe_per_sample", "NFE"), ("seconds_per_sample", "seconds")):
        wins = [r for r in revises if r[HEADLINE] < _nearest(plain, r, key)[HEADLINE]]
        lines.append(
            f"Matched by {what} (each revise against the plain draft of the nearest {what}): "
            f"{len(wins)} of {len(revises)} revises have the lower Gen PPL"
            + (f" ({'; '.join(r['name'] for r in wins)})." if wins else ".")
        )
    return lines + _added_lines(rows)


def _added_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The confident order against the random one, the threshold revise against its draft."""
    lines = []
    by_draft = {r["draft"]: r for r in rows if r["stage"] == "draft"}
    for conf in (r for r in rows if r["stage"] == "draft" and "confident" in r["draft"]):
        rand = by_draft.get(conf["draft"].split(",")[0])
        if rand is not None:
            lines.append(
                f"Confident order at {rand['draft']}: Gen PPL {_ppl(conf)} (entropy "
                f"{conf['entropy_per_sample_mean']:.3f}) against {_ppl(rand)} "
                f"({rand['entropy_per_sample_mean']:.3f}) for the random order."
            )
    for rev in (r for r in rows if r["stage"] == "revise" and "τ" in r["strategy"]):
        base = by_draft[rev["draft"]]
        lines.append(
            f"{rev['name']}: Gen PPL {_ppl(base)} → {_ppl(rev)} for "
            f"{rev['nfe_per_sample'] / base['nfe_per_sample']:.2f}x the draft's NFE and "
            f"{rev['seconds_per_sample'] / base['seconds_per_sample']:.2f}x its seconds."
        )
    return lines


REPORT_RECORDS = 4
"""Records the demo's report.html shows per set (its calibration uses every record)."""


def demo_report(
    cfg: DemoConfig,
    data_dir: Path,
    summaries: list[dict[str, Any]],
    sets: list[DemoSet],
) -> None:
    """OUT/report.html: the table, the charts, and the draft with every strategy's revise
    at the middle gamma (html_report.py)."""
    from sbdcli.data import load_codec
    from sbdcli.data.synthetic import load_oracle
    from sbdcli.evaluate import html_report

    middle = cfg.gammas[len(cfg.gammas) // 2] if cfg.gammas else None
    shown = [
        (f"{s.stage} {s.strategy} γ{s.gamma:g}" if s.gamma is not None else s.name, s.records)
        for s in sets
        if s.gamma is None or (s.gamma == middle and s.strategy in cfg.strategies)
    ]
    page = html_report.build_report(
        summaries,
        shown,
        load_codec(data_dir),
        load_oracle(data_dir / "oracle.safetensors"),
        max_records=REPORT_RECORDS,
        title="sbd demo: Structural Block Diffusion on topic-markov",
        source=str(data_dir),
        series=plot_series(sets, cfg),
    )
    html_report.write_report(cfg.out / "report.html", page)


def check_demo(cfg: DemoConfig) -> None:
    """What can be refused before any work: an `out` that is a file, an unusable device, a
    training setting (steps) or a sample count that cannot run."""
    check_output_dir(cfg.out)
    resolve_device(cfg.device)
    _train_config(cfg, DEMO_SEQ_LEN)  # validates the training settings
    if cfg.n_samples < 1:
        raise UserError(f"--samples must be >= 1, got {cfg.n_samples}")


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
    draft = demo_draft(cfg, ref, log)
    sets = [draft]
    for strategy in cfg.strategies:
        for gamma in cfg.gammas:
            if step is not None:
                step(f"remask {strategy} gamma {gamma:g} + global revise")
            sets.append(demo_revise(cfg, ref, draft, strategy, gamma))
    sets += [demo_draft(cfg, ref, log, c) for c in _plain_calls(cfg) if c != _calls(cfg)]
    sets.append(demo_draft(cfg, ref, log, _calls(cfg), "confident"))
    best = next(s for s in sets if s.draft == _draft_label(cfg.draft_block))
    if step is not None:
        step(f"threshold revise of the {best.draft} draft")
    sets.append(demo_best_revise(cfg, ref, best))
    log("scoring every set with the oracle")
    return demo_eval(cfg, data_dir, sets)

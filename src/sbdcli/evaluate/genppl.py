"""The Gen PPL driver of `sbd eval genppl`: from record sets to one summary per group.

`evaluate_sets` finds the records' special ids (`vocab_info`: `data_dir`, else the
records' run directory, else BOS = tokens[0]), refuses unfinished samples
(`check_finished`) and sets with fewer records than their draft declared unless
`allow_partial` (`check_complete`), resolves `evaluator` to a judge (`make_judge`: the
oracle, an sbd block-1 run, or a transformers causal LM), then for every file (or stage
group of a file) asks the judge for its scores through the `judges.Judge` protocol and
summarizes them (metrics.summarize), with the count of low-entropy samples when a
threshold is given or the draft recorded one (`low_entropy_setting`).
docs/evaluation.md states the protocol in prose.

Not here: the metric math (metrics.py), grouping (grouping.py), the judges themselves
(judges.py, hf_judge.py), tables and plots (report.py). It never prints: notes for the
user are returned in the summaries.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sbdcli import distributed
from sbdcli.artifacts import read_json
from sbdcli.artifacts.records import DraftTally
from sbdcli.artifacts.rundir import data_dirs_of
from sbdcli.config import REDRAW_WINDOW, GenPplOptions
from sbdcli.data import Codec, load_codec
from sbdcli.errors import UserError
from sbdcli.evaluate.grouping import group_labels, group_records
from sbdcli.evaluate.hf_judge import HFJudge
from sbdcli.evaluate.judges import Judge, OracleJudge, SbdJudge
from sbdcli.evaluate.metrics import Advance, Scores, VocabInfo, check_eos, summarize


# --------------------------------------------------------------------------- records
def vocab_info(records: Sequence[dict[str, Any]], data_dir: Path | None) -> VocabInfo:
    """Special ids from `data_dir`, else the records' run data manifest, else BOS = tokens[0]."""
    for base in data_dirs_of(data_dir, records):
        if (base / "manifest.json").is_file():
            return VocabInfo.from_manifest(read_json(base / "manifest.json", "manifest"), str(base))
    first = records[0]["tokens"][0] if records[0]["tokens"] else None
    return VocabInfo(first, first, None, None, None, "position 0 of the records")


def check_finished(records: Sequence[dict[str, Any]], info: VocabInfo) -> list[str]:
    """Refuse samples that still hold [MASK]; note remasked-but-unrevised records."""
    if info.mask_id is not None:
        for i, rec in enumerate(records):
            if info.mask_id in rec["tokens"]:
                pos = rec["tokens"].index(info.mask_id)
                raise UserError(
                    f"record {i} (id {rec['id']!r}) holds [MASK] at position {pos}: "
                    "not a finished sample"
                )
    pending = sum(1 for r in records if r["masked"])
    if not pending:
        return []
    return [
        f"{pending} records still list masked positions (remask without revise): "
        "their current tokens were scored"
    ]


# --------------------------------------------------------------------------- judge choice
def _oracle_dir(records: Sequence[dict[str, Any]], data_dir: Path | None) -> Path | None:
    for base in data_dirs_of(data_dir, records):
        if (base / "oracle.safetensors").is_file():
            return base
    return None


def _records_codec(records: Sequence[dict[str, Any]], data_dir: Path | None) -> Codec | None:
    """The codec of the records' run (or `data_dir`), None when neither is reachable."""
    for base in data_dirs_of(data_dir, records):
        if (base / "manifest.json").is_file():
            return load_codec(base)
    return None


def _is_sbd_model(path: Path) -> bool:
    """An sbd run directory, an sbd model.safetensors, or a BD3-LM/MDLM HF directory."""
    if path.is_file():
        return path.suffix == ".safetensors"
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        return (path / "model.safetensors").is_file()
    cfg = read_json(cfg_path, "config")
    if not isinstance(cfg, dict):
        return False
    if "model_type" in cfg:
        return str(cfg["model_type"]).lower() in ("bd3lm", "mdlm")
    return "model" in cfg


def _oracle_judge(records: Sequence[dict[str, Any]], oracle_dir: Path | None) -> OracleJudge:
    if oracle_dir is None:
        model = records[0]["model"]
        raise UserError(
            f"`evaluator` oracle: no oracle.safetensors found via the records' model "
            f"'{model}'; pass `data_dir` DIR of the synthetic language"
        )
    manifest = oracle_dir / "manifest.json"
    meta = read_json(manifest, "manifest") if manifest.is_file() else {}
    return OracleJudge(oracle_dir, meta)


def make_judge(opts: GenPplOptions, records: Sequence[dict[str, Any]], info: VocabInfo) -> Judge:
    """Resolve `evaluator` (or its default) to a judge object; UserError when impossible."""
    spec = opts.evaluator
    oracle_dir = _oracle_dir(records, opts.data_dir)
    if spec is None:
        if oracle_dir is None:
            raise UserError(
                "`evaluator` is required: these records do not come from a run trained on the "
                "synthetic language (give a transformers causal-LM directory, an sbd run "
                "trained with `block_size` 1, or 'oracle' with `data_dir` DIR)"
            )
        spec = "oracle"
    if spec == "oracle":
        return _oracle_judge(records, oracle_dir)
    path = Path(spec)
    if not path.exists():
        raise UserError(f"`evaluator` {spec}: not 'oracle' and no such file or directory")
    if _is_sbd_model(path):
        run = path if path.is_dir() else path.parent
        return SbdJudge.load(run, opts.device, opts.batch_size, opts.eos, opts.precision)
    return HFJudge(
        path,
        device=opts.device,
        batch_size=opts.batch_size,
        context=opts.context,
        stride=opts.stride,
        codec=_records_codec(records, opts.data_dir),
        special_ids=info.special,
        eos=opts.eos,
        precision=opts.precision,
    )


# --------------------------------------------------------------------------- driver
Group = tuple[str, str, str, list[dict[str, Any]]]
"""(file, group label, row name, records) of one summary."""


def _groups(sets: Sequence[tuple[str, list[dict[str, Any]]]], opts: GenPplOptions) -> list[Group]:
    """Every file's records, split by stage group unless `group` is off."""
    out = []
    for name, recs in sets:
        groups = group_records(recs) if opts.group else [("all stages", recs)]
        labels = group_labels(groups) if opts.group else ["all stages"]
        for label, (_, grp) in zip(labels, groups, strict=True):
            out.append((name, label, name if len(groups) == 1 else f"{name} · {label}", grp))
    return out


def check_complete(row: str, records: Sequence[dict[str, Any]], allow: bool) -> dict[str, Any]:
    """`n_declared` and `partial` of one group; a partial group is refused unless `allow`.

    A group is partial when it holds fewer records of a draft than that draft's `n_records`.
    """
    tally = DraftTally()
    for rec in records:
        tally.add(rec)
    short = tally.shortfall()
    if short is not None and not allow:
        raise UserError(
            f"{row}: {short[0]} of the {short[1]} records its draft declared (a cut or "
            "partial set); pass `allow_partial` to score it anyway"
        )
    return {"n_declared": tally.declared(), "partial": short is not None}


def _partial_note(row: str, completeness: dict[str, Any], n: int) -> list[str]:
    if not completeness["partial"]:
        return []
    declared = completeness["n_declared"]
    return [f"{row} is partial: {n} records scored, its drafts declared {declared}"]


def _scores(judge: Judge, grp: list[dict[str, Any]], chunk: int, progress: Advance) -> Scores:
    """The judge's scores of one group. Under a launch of P processes, chunk k of `chunk`
    consecutive records is scored by process k mod P and every process gets all scores
    (sbdcli.distributed); in one process the judge sees the whole group at once."""
    world = distributed.world()
    if world.size == 1:
        return judge.score(grp, progress)
    chunks = [grp[i : i + chunk] for i in range(0, len(grp), chunk)]
    parts = list(
        distributed.map_ordered(lambda c: judge.score(c, progress), chunks, world, everywhere=True)
    )
    notes = list(dict.fromkeys(n for p in parts for n in p.notes))
    nll, ntok = (np.concatenate([getattr(p, k) for p in parts]) for k in ("nll", "ntok"))
    return Scores(nll, ntok, notes)


def low_entropy_setting(
    records: Sequence[dict[str, Any]], opts: GenPplOptions
) -> tuple[float, int] | None:
    """(threshold, window) of the low-entropy count: `low_entropy` / `low_entropy_window`,
    else what the records' draft entries recorded for their redraw, else off (None)."""
    drafts = [r["stages"][0] for r in records if r["stages"] and r["stages"][0]["name"] == "draft"]
    recorded = next((d for d in drafts if d.get("redraw_low_entropy") is not None), None)
    threshold = opts.low_entropy
    if threshold is None and recorded is not None:
        threshold = float(recorded["redraw_low_entropy"])
    if threshold is None:
        return None
    window = opts.low_entropy_window
    if window is None:
        window = int(recorded["redraw_window"]) if recorded is not None else REDRAW_WINDOW
    return threshold, window


def _group_summary(
    judge: Judge,
    grp: list[dict[str, Any]],
    notes: list[str],
    info: VocabInfo,
    opts: GenPplOptions,
    progress: Advance,
) -> dict[str, Any]:
    """One group's summary: its scores under the judge, the run-wide notes, the extras."""
    scores = _scores(judge, grp, opts.batch_size, progress)
    scores.notes = [*scores.notes, *notes]
    low = low_entropy_setting(grp, opts)
    summary = summarize(grp, scores, info, opts.eos, judge.describe(), low)
    summary.update(judge.extras(grp, opts))
    return summary


def evaluate_sets(
    sets: Sequence[tuple[str, list[dict[str, Any]]]],
    opts: GenPplOptions,
    progress: Advance = None,
) -> list[dict[str, Any]]:
    """Judge every (name, records) set; one summary per file, or per stage group of a file."""
    check_eos(opts.eos)
    every = [r for _, recs in sets for r in recs]
    if not every:
        raise UserError("no records to evaluate (empty input)")
    info = vocab_info(every, opts.data_dir)
    notes = check_finished(every, info)
    groups = _groups(sets, opts)
    complete = [check_complete(row, grp, opts.allow_partial) for _, _, row, grp in groups]
    judge = make_judge(opts, every, info)
    judge.check(every, info)
    summaries = []
    for (name, label, row, grp), done in zip(groups, complete, strict=True):
        summary: dict[str, Any] = {"file": name, "group": label, "name": row}
        extra = _partial_note(row, done, len(grp))
        summary.update(_group_summary(judge, grp, [*notes, *extra], info, opts, progress))
        summary.update(done)
        summaries.append(summary)
    return summaries

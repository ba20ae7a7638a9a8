"""Which sample records belong together in `sbd eval genppl`, and how a group is named.

Records are grouped by their stage history (docs/evaluation.md, "Input and output"): the
stage names with their settings; seeds, costs, batch sizes, per-record remask counts and the
model reference do not split a group. Also: a group's sampler settings (seeds listed per
stage) with a one-line form for tables, and records stacked by length for batched judges.

Plain dictionaries in, plain dictionaries out: no metrics, no judges, no files.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

NOT_SETTINGS = frozenset(
    {"nfe", "seconds", "cache_writes", "seed", "batch_size", "n_masked", "model"}
    | {"vocab_size", "mask_id", "bos_id", "n_records"}
    | {"redraws", "redraw_nfe", "low_entropy"}
    | {"n_tokens", "n_markers", "windows"}
)
"""Stage-entry keys that are costs, seeds, per-batch/per-record outcomes (a draft's
redraw count of the record among them; an encoded text's length, markers and windows) or
the model's identity (its name, its vocabulary ids), and the draft's record count, not
settings: records that differ only in these belong to the same group."""


def stage_settings(stage: dict[str, Any]) -> dict[str, Any]:
    """A stage entry without its costs and seed: the parameters that define a group."""
    return {
        k: v
        for k, v in stage.items()
        if k not in NOT_SETTINGS
        and not k.endswith("_seconds")
        and isinstance(v, (str, int, float, bool, type(None)))
    }


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def stage_signature(rec: dict[str, Any]) -> str:
    """Human-readable stage history, e.g. `draft(block_size=4, top_p=0.9) → revise(...)`.

    A full block's size is the record's own length (encoded texts differ in length), so
    `block=full` alone stands for it."""
    parts = []
    for stage in rec["stages"]:
        params = stage_settings(stage)
        if params.get("block") == "full":
            params.pop("block_size", None)
        name = params.pop("name", "?")
        inner = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(params.items()))
        parts.append(f"{name}({inner})")
    return " → ".join(parts) if parts else "(no stages)"


def group_records(records: Sequence[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Records grouped by stage signature, groups in order of first appearance."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        groups.setdefault(stage_signature(rec), []).append(rec)
    return list(groups.items())


def sampler_settings(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Settings carried by a group's records: stage parameters, seeds per stage, length."""
    stages = [dict(stage_settings(s)) for s in records[0]["stages"]]
    for j, entry in enumerate(stages):
        seeds = sorted(
            {r["stages"][j].get("seed") for r in records if j < len(r["stages"])} - {None}
        )
        entry["seeds"] = seeds
    lengths = sorted({len(r["tokens"]) for r in records})
    prompts = sorted({r["prompt_len"] for r in records})
    models = sorted({r["model"] for r in records})
    return {"stages": stages, "length": lengths, "prompt_len": prompts, "model": models}


def short_settings(settings: dict[str, Any], seeds: bool = True) -> str:
    """One line for tables: `draft B4 p0.9 float64 · remask snapshot γ0.25 · revise B128`
    (each stage's first seed appended unless `seeds` is off)."""
    names = {"strategy": "", "block": "B", "block_size": "B", "top_p": "p", "gamma": "γ"}
    names.update(steps_per_block="S", temperature="T")
    out, seeds_on = [], seeds
    for st in settings["stages"]:
        bits = [str(st.get("name", "?"))]
        block = "block" if st.get("block") == "full" else "block_size"
        for key in ("strategy", block, "steps_per_block", "gamma", "top_p", "temperature"):
            if st.get(key) is not None and not (key == "temperature" and st[key] == 1.0):
                bits.append(f"{names[key]}{_fmt(st[key])}")
        if st.get("first_hitting"):
            bits.append("first-hitting")
        if st.get("name") != "remask" and st.get("threshold") is not None:
            bits.append(f"τ{_fmt(st['threshold'])}")  # adaptive decoding's TAU
        if st.get("schedule") not in (None, "fixed"):
            bits.append(f"{st['schedule']}-schedule")
        if st.get("dtype") is not None:
            bits.append(str(st["dtype"]))
        seeds = (st.get("seeds") or []) if seeds_on else []
        if seeds:
            bits.append(f"seed {seeds[0]}" + ("…" if len(seeds) > 1 else ""))
        out.append(" ".join(bits))
    return " · ".join(out)


def group_labels(groups: Sequence[tuple[str, list[dict[str, Any]]]]) -> list[str]:
    """The human label of each (signature, records) group, as tables show it.

    The short settings line without seeds (`draft B4 S2 p0.9 · remask snapshot γ0.25 ·
    revise Bfull`); groups that share one get the settings that tell them apart, e.g.
    `draft B4 p0.9 (draft cache approx)`.
    """
    labels = [short_settings(sampler_settings(recs), seeds=False) for _, recs in groups]
    for label in set(labels):
        same = [i for i, other in enumerate(labels) if other == label]
        if len(same) > 1:
            for i, extra in zip(same, _differences([groups[i][1][0] for i in same]), strict=True):
                labels[i] = f"{label} ({extra})"
    return labels


def _differences(records: Sequence[dict[str, Any]]) -> list[str]:
    """Per record, the stage settings in which the records' histories differ."""
    histories = [[stage_settings(st) for st in rec["stages"]] for rec in records]
    out: list[list[str]] = [[] for _ in records]
    for j in range(max(len(h) for h in histories)):
        stages = [h[j] if j < len(h) else {} for h in histories]
        for key in sorted({k for st in stages for k in st} - {"name"}):
            values = [st.get(key) for st in stages]
            if len({repr(v) for v in values}) > 1:
                for i, (st, v) in enumerate(zip(stages, values, strict=True)):
                    out[i].append(f"{st.get('name', '?')} {key.replace('_', '-')} {_human(v)}")
    return [", ".join(bits) or f"group {i + 1}" for i, bits in enumerate(out)]


def _human(value: Any) -> str:
    """A setting's value as the command line writes it: none, on, off, numbers."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return _fmt(value)

"""MAUVE between generated and reference texts (`sbd eval mauve`), as the field reports it.

MAUVE (Pillutla et al., 2021) compares the two text distributions in the feature space of a
causal LM: every text is encoded by the featurizer (the field uses GPT-2 Large) and its
feature is the **last layer's hidden state at the final token**, as the `mauve-text`
package's own featurizer takes it; `mauve.compute_mauve` then quantises the pooled
features with k-means and integrates the divergence frontier. The `mauve-text` package is
GPL-3.0 licensed: it is the optional `mauve` extra, imported only here and only when called.

Lengths are matched: every text is cut to the same number of featurizer tokens, `tokens`
(default: the shortest generated text, at most the featurizer's context); reference texts
shorter than that are dropped, and at most as many references as generated texts are used,
so both sides have the same count and length. Fewer than `MIN_SAMPLES` texts on either side
is refused (k-means on a handful of points says nothing).

`read_samples` reads the texts of either side (a data directory's val rows, sample records,
JSONL with `text`, plain lines). Not here: printing (cli/harness.py), Gen PPL (genppl.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sbdcli.artifacts import read_records, validate_record
from sbdcli.artifacts.files import is_json_document, loads_json, parse_json_line, read_input_bytes
from sbdcli.errors import UserError
from sbdcli.evaluate.grouping import sampler_settings, short_settings
from sbdcli.evaluate.hf_judge import load_causal_lm, model_context
from sbdcli.evaluate.metrics import costs, finite

MIN_SAMPLES = 20
"""Fewest texts per side MAUVE is computed on (its k-means needs at least 2 buckets of ~10)."""


# --------------------------------------------------------------------------- inputs
def read_texts(path: str | Path) -> list[str]:
    """Texts of a data directory (its val rows, decoded), a record file (their `text`),
    a JSONL file of objects with `text`, or a plain text file (one text per line)."""
    return read_samples(path)[0]


def read_samples(path: str | Path) -> tuple[list[str], list[dict[str, Any]] | None]:
    """`read_texts`, and the sample records when the file holds records (else None). The
    file is read once, so it may be a FIFO or a /dev/fd path; a `.json` file is one JSON
    document (an object or a list of them), as every sbd reader takes it."""
    p = Path(path)
    if p.is_dir():
        return _val_texts(p), None
    if p.suffix == ".safetensors":
        records = list(read_records(str(p)))
        return [str(r["text"]) for r in records], records
    name = str(path)
    try:
        data = read_input_bytes(name).decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{name}: not UTF-8 text") from None
    if is_json_document(name):
        objs = _document(data, name)
    else:
        lines = [line for line in data.splitlines() if line.strip()]
        if not (lines and lines[0].lstrip().startswith("{")):
            return lines, None
        objs = [_object(line, name, i) for i, line in enumerate(lines, start=1)]
    if objs and all("tokens" in o for o in objs):
        records = [dict(validate_record(o, i)) for i, o in enumerate(objs)]
        return [str(r["text"]) for r in records], records
    return [_text_of(o, f"{name}:{i}") for i, o in enumerate(objs, start=1)], None


def _document(data: str, name: str) -> list[dict[str, Any]]:
    try:
        loaded = loads_json(data)
    except ValueError as exc:
        raise UserError(f"{name} is not valid JSON: {exc}") from None
    objs = loaded if isinstance(loaded, list) else [loaded]
    for i, obj in enumerate(objs):
        if not isinstance(obj, dict):
            raise UserError(f"{name}: element {i} is not a JSON object")
    return objs


def _object(line: str, name: str, number: int) -> dict[str, Any]:
    obj = parse_json_line(line, name, number)
    if not isinstance(obj, dict):
        raise UserError(f"{name}:{number}: not a JSON object")
    return obj


def _text_of(obj: dict[str, Any], where: str) -> str:
    if not isinstance(obj.get("text"), str):
        raise UserError(f"{where}: expected an object with a 'text' string")
    return obj["text"]


def _val_texts(data_dir: Path) -> list[str]:
    from sbdcli.data import load_split
    from sbdcli.data.datadir import load_codec

    if not (data_dir / "manifest.json").is_file():
        raise UserError(f"{data_dir}: not a data directory (no manifest.json)")
    codec, rows = load_codec(data_dir), load_split(data_dir, "val")
    return [codec.decode(row.tolist()[1:], skip_special=True) for row in rows]


# --------------------------------------------------------------------------- features
def _ids(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


@torch.inference_mode()
def featurize(
    model: Any, ids: Sequence[Sequence[int]], device: str = "cpu", batch_size: int = 16
) -> np.ndarray:
    """(N, D) last-layer hidden states at each text's final token (right-padded batches)."""
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    feats: list[Any] = [None] * len(ids)
    for lo in range(0, len(order), batch_size):
        part = order[lo : lo + batch_size]
        width = len(ids[part[0]])
        x = torch.zeros(len(part), width, dtype=torch.long)
        attn = torch.zeros(len(part), width, dtype=torch.long)
        for r, i in enumerate(part):
            x[r, : len(ids[i])] = torch.as_tensor(ids[i])
            attn[r, : len(ids[i])] = 1
        out = model(input_ids=x.to(device), attention_mask=attn.to(device),
                    output_hidden_states=True)  # fmt: skip
        last = out.hidden_states[-1]  # (b, width, D)
        ends = attn.sum(-1) - 1
        for r, i in enumerate(part):
            feats[i] = last[r, int(ends[r])].float().cpu().numpy()
    return np.stack(feats)


def _matched(
    p: list[list[int]], q: list[list[int]], tokens: int | None, context: int
) -> tuple[list[list[int]], list[list[int]], int]:
    """Both sides cut to the same token count and the references to the same count."""
    n = min(len(s) for s in p) if tokens is None else tokens
    n = min(n, context)
    if n < 1:
        raise UserError("a generated text is empty: nothing to featurize")
    q = [s[:n] for s in q if len(s) >= n][: len(p)]
    return [s[:n] for s in p], q, n


def _check_count(what: str, count: int) -> None:
    if count < MIN_SAMPLES:
        raise UserError(
            f"MAUVE needs at least {MIN_SAMPLES} {what} texts, got {count} (after length matching)"
        )


def mauve_summary(
    generated: Sequence[str],
    reference: Sequence[str],
    featurizer: str | Path,
    *,
    name: str = "",
    reference_name: str = "",
    tokens: int | None = None,
    device: str = "cpu",
    batch_size: int = 16,
    seed: int = 25,
    scaling: float = 5.0,
    records: Sequence[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """MAUVE of `generated` against `reference` with features of `featurizer` (a summary).

    With the generated texts' sample `records`, the summary also carries their NFE,
    seconds and sampler settings, as a row of `sbd eval genppl` does."""
    _check_count("generated", len(generated))
    try:
        import mauve  # GPL-3.0 (the optional `mauve` extra)
    except ImportError:
        raise UserError("MAUVE needs the mauve-text package: pip install 'sbdcli[mauve]'") from None
    try:
        model, tokenizer = load_causal_lm(featurizer, device)
    except UserError as exc:
        raise UserError(str(exc).replace("evaluator", "featurizer", 1)) from None
    p_ids, q_ids, n = _matched(
        _ids(tokenizer, generated),
        _ids(tokenizer, reference),
        tokens,
        model_context(model, tokenizer),
    )
    _check_count("generated", len(p_ids))
    _check_count("reference", len(q_ids))
    p_feat = featurize(model, p_ids, device, batch_size)
    q_feat = featurize(model, q_ids, device, batch_size)
    out = mauve.compute_mauve(p_features=p_feat, q_features=q_feat, seed=seed,
                              mauve_scaling_factor=scaling, verbose=False)  # fmt: skip
    settings = {"tokens": n, "n_reference": len(q_ids), "buckets": int(out.num_buckets),
                "scaling": scaling, "seed": seed}  # fmt: skip
    short = (f"MAUVE vs {reference_name}: {n} tokens, {len(q_ids)} references, "
             f"{settings['buckets']} buckets, c={scaling:g}, seed {seed}")  # fmt: skip
    summary: dict[str, Any] = {"name": name, "n": len(p_ids), "mauve": float(out.mauve),
                               "frontier_integral": float(out.frontier_integral)}  # fmt: skip
    if records:
        sampler = sampler_settings(records)
        summary.update(costs(records))
        settings["sampler"] = sampler
        short = f"{short_settings(sampler)} · {short}"
    summary.update(
        reference=reference_name,
        evaluator={"kind": "mauve", "path": str(featurizer), "feature": "last hidden, final token"},
        settings=settings,
        settings_short=short,
    )
    return finite(summary)

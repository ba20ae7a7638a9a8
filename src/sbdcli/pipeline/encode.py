"""Text in: a person's texts become sample records (`sbd encode`), and the rules for them.

`read_texts` reads texts (one per line, JSONL with a `text` field and optional `prompt` and
`id` -- a `.json` file holding one JSON document of such objects --, or a whole file as one
text) from a file, a FIFO, a /dev/fd path or stdin, refusing binary or empty input before
anything is written. `encode_records` turns them into records (docs/records.md, "Encoded records"):
BOS, the prompt's ids (fixed), the text's ids with its mask markers as [MASK] ids listed in
`masked`, confidence 1.0 as a placeholder (no model committed these tokens: the `encode`
stage entry says `confidence: "unknown"`), and an `encode` entry that names the vocabulary
like a draft entry. A text may be up to `MAX_LENGTH_FACTOR` x the trained length L; longer
than L it is scored and revised in windows (diffusion/windows.py).

`refuse_snapshot`, `hold_markers` and `check_revisable` are the rules the remask and revise
stages apply to such records. Not here: marker parsing and the round-trip check
(data/markers.py), the stages (stages.py), the one-process edit (edit.py).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sbdcli.artifacts.files import (
    is_json_document,
    loads_json,
    parse_json_line,
    read_input_bytes,
)
from sbdcli.artifacts.records import Record, StageEntry, draft_entry
from sbdcli.data.codec import Codec
from sbdcli.data.datadir import load_codec, read_manifest
from sbdcli.data.markers import DEFAULT_MARKER, encode_marked
from sbdcli.diffusion.windows import plan
from sbdcli.errors import UserError
from sbdcli.pipeline.modelref import ModelRef

MAX_LENGTH_FACTOR = 16
"""Longest text, in multiples of the trained length L (as the sampler's --length)."""
TEXT_FORMATS = ("lines", "jsonl", "whole")
SCORE_STRATEGIES = ("posthoc", "masked", "random")
"""Remask strategies that work on encoded records (snapshot needs a draft's confidence)."""


@dataclass(frozen=True)
class TextItem:
    """One text to encode: its record id, the fixed prompt before it, and the text."""

    id: str
    text: str
    prompt: str = ""


@dataclass(frozen=True)
class Target:
    """What the records are encoded for: the codec, the ids and the trained length."""

    codec: Codec
    model: str
    vocab_size: int
    mask_id: int
    bos_id: int | None
    seq_len: int

    @property
    def start_id(self) -> int:
        """The id a sequence starts with: BOS, or [MASK] for a model without one."""
        return self.bos_id if self.bos_id is not None else self.mask_id

    @property
    def limit(self) -> int:
        return MAX_LENGTH_FACTOR * self.seq_len


def target_from_model(ref: ModelRef) -> Target:
    """Encode for a loaded model: its run's tokenizer, its ids and trained length."""
    cfg = ref.model.config
    if ref.codec is None:
        raise UserError(f"{ref.path} has no tokenizer (no data/manifest.json beside it)")
    if ref.codec.vocab_size != cfg.vocab_size or ref.codec.mask_id != cfg.mask_id:
        raise UserError(f"{ref.path}: its tokenizer's vocabulary is not the model's")
    return Target(ref.codec, ref.id, cfg.vocab_size, cfg.mask_id, cfg.bos_id, cfg.seq_len)


def target_from_data(directory: str) -> Target:
    """Encode for a data directory's tokenizer (records name no model: later stages need -m)."""
    manifest = read_manifest(directory)
    codec = load_codec(directory)
    seq_len = int(manifest.get("seq_len") or 0)
    if seq_len < 1:
        raise UserError(f"{directory}: the manifest names no seq_len")
    return Target(codec, "", codec.vocab_size, codec.mask_id, codec.bos_id, seq_len)


# --------------------------------------------------------------------------- reading
def _read_bytes(path: str) -> tuple[str, str]:
    """(name, UTF-8 text) of a file, FIFO, /dev/fd path or stdin; binary input is refused."""
    name = "stdin" if path == "-" else path
    if path == "-" and sys.stdin.isatty():
        raise UserError("no input: pipe text in or pass a FILE")
    data = read_input_bytes(path)
    if b"\x00" in data:
        raise UserError(f"{name}: binary input (NUL bytes); expected UTF-8 text")
    try:
        return name, data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{name}: not UTF-8 text (byte {exc.start}); binary input?") from None


def _text_item(obj: Any, where: str, default_id: str) -> TextItem:
    """A JSON object with a string `text` (optional `prompt` and `id`) as a text to encode."""
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
        raise UserError(f"{where}: expected an object with a string 'text' field")
    prompt = obj.get("prompt", "")
    if not isinstance(prompt, str):
        raise UserError(f"{where}: field 'prompt' must be a string")
    rid = obj.get("id")
    return TextItem(str(rid) if rid is not None else default_id, obj["text"], prompt)


def _document_items(data: str, name: str) -> list[TextItem]:
    """The texts of a `.json` document: one object, or a list of objects (`t1`, `t2`, ...)."""
    try:
        loaded = loads_json(data)
    except ValueError as exc:
        raise UserError(f"{name} is not valid JSON: {exc}") from None
    objs = loaded if isinstance(loaded, list) else [loaded]
    return [_text_item(o, f"{name}: element {i}", f"t{i}") for i, o in enumerate(objs, start=1)]


def read_texts(path: str, fmt: str) -> list[TextItem]:
    """Every text of the input (all read and checked before any record is written)."""
    if fmt not in TEXT_FORMATS:
        raise UserError(f"unknown text format {fmt!r} ({', '.join(TEXT_FORMATS)})")
    name, data = _read_bytes(path)
    if fmt == "whole":
        items = [TextItem("t1", data)]
    elif fmt == "jsonl" and path != "-" and is_json_document(path):
        items = _document_items(data, name)
    else:
        items = []
        for lineno, line in enumerate(data.splitlines(), start=1):
            if not line.strip():
                continue
            items.append(
                _text_item(parse_json_line(line, name, lineno), f"{name}:{lineno}", f"t{lineno}")
                if fmt == "jsonl"
                else TextItem(f"t{lineno}", line)
            )
    if not items:
        raise UserError(f"{name}: no text to encode (empty input)")
    for item in items:
        if not item.text.strip():
            raise UserError(f"{name}: text {item.id!r} is empty")
    return items


# --------------------------------------------------------------------------- records
def _entry(
    target: Target, item_len: int, marker: str, markers: int, extra: dict[str, Any]
) -> StageEntry:
    sha = target.codec.describe().get("sha256")
    return cast(
        StageEntry,
        {
            "name": "encode",
            "n_tokens": item_len,
            "seq_len": target.seq_len,
            "windows": len(plan(item_len, target.seq_len)),
            "mask_token": marker,
            "n_markers": markers,
            "confidence": "unknown",
            "model": target.model or None,
            "tokenizer": sha,
            "vocab_size": target.vocab_size,
            "mask_id": target.mask_id,
            "bos_id": target.bos_id,
            **extra,
            "nfe": 0,
        },
    )


def encode_item(
    item: TextItem, target: Target, marker: str = DEFAULT_MARKER, exact: bool = True
) -> tuple[Record, int]:
    """One text as a record (stage entry without `n_records` and `seconds`) and its markers."""
    limit = target.limit
    where = f"text {item.id!r}"
    prompt = encode_marked(target.codec, item.prompt, marker, limit, where + " prompt", exact=exact)
    if prompt.n_markers:
        raise UserError(f"{where}: a mask marker inside the prompt (the prompt is kept fixed)")
    body = encode_marked(target.codec, item.text, marker, limit, where, exact=exact)
    if not body.ids:
        raise UserError(f"{where}: the text encodes to no tokens")
    head = [target.start_id, *prompt.ids]
    tokens = head + body.ids
    if len(tokens) > limit:
        raise UserError(
            f"{where}: {len(tokens)} tokens, more than {MAX_LENGTH_FACTOR} x the model's "
            f"trained length {target.seq_len} ({limit})"
        )
    rec: dict[str, Any] = {
        "id": item.id,
        "tokens": tokens,
        "confidence": [1.0] * len(tokens),
        "masked": [len(head) + i for i in body.masked],
        "prompt_len": len(head),
        "nfe": 0,
        "stages": [],
        "text": target.codec.decode(tokens[1:]),
        "model": target.model,
    }
    return cast(Record, rec), body.n_markers


def encode_records(
    items: Sequence[TextItem], target: Target, marker: str = DEFAULT_MARKER, exact: bool = True
) -> list[Record]:
    """Every text as a record; any bad text fails the whole call (no partial output)."""
    start = time.perf_counter()
    encoded = [encode_item(item, target, marker, exact) for item in items]
    seen: set[str] = set()
    for rec, _ in encoded:
        if rec["id"] in seen:
            raise UserError(f"two texts have the id {rec['id']!r} (ids must be unique)")
        seen.add(rec["id"])
    seconds = round((time.perf_counter() - start) / len(items), 6)
    extra = {"n_records": len(items)}
    for rec, markers in encoded:
        entry = _entry(target, len(rec["tokens"]), marker, markers, extra)
        rec["stages"] = [cast(StageEntry, {**entry, "seconds": seconds})]
    return [rec for rec, _ in encoded]


# --------------------------------------------------------------------------- stage rules
def is_encoded(rec: Mapping[str, Any]) -> bool:
    """Whether the record came from text (`sbd encode`), not from a draft."""
    entry = draft_entry(rec)
    return entry is not None and entry.get("name") == "encode"


def refuse_snapshot(records: Sequence[Mapping[str, Any]], strategy: str) -> None:
    """The snapshot strategy needs a draft's confidence, which encoded records lack."""
    if strategy != "snapshot":
        return
    for rec in records:
        if is_encoded(rec):
            raise UserError(
                f"text {rec.get('id')!r} was encoded (not drafted): it has no snapshot confidence "
                f"for --strategy snapshot; use --strategy {', '.join(SCORE_STRATEGIES)}"
            )


def held_markers(rec: Mapping[str, Any], mask_id: int | None) -> list[int]:
    """Masked positions that still hold [MASK] (unfilled markers): a remask keeps them."""
    if mask_id is None:
        return []
    tokens = rec["tokens"]
    return [p for p in rec["masked"] if tokens[p] == mask_id]


def hold_markers(records: Sequence[Mapping[str, Any]], eligible: Sequence[Any]) -> list[list[int]]:
    """Each record's unfilled markers, taken out of its `eligible` mask (in place): a remask
    selects them whatever the scores, and its gamma counts only the other positions."""
    held = [held_markers(r, record_mask_id(r)) for r in records]
    for e, h in zip(eligible, held, strict=True):
        e[h] = False
    return held


def record_mask_id(rec: Mapping[str, Any]) -> int | None:
    """The [MASK] id the record's first (draft or encode) entry names, if any."""
    entry = draft_entry(rec)
    value = entry.get("mask_id") if entry is not None else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def check_revisable(records: Sequence[Mapping[str, Any]]) -> None:
    """An encoded text with no marker that was never remasked has nothing to revise."""
    for rec in records:
        stages = rec.get("stages", [])
        remasked = any(isinstance(s, dict) and s.get("name") == "remask" for s in stages)
        if is_encoded(rec) and not rec["masked"] and not remasked:
            raise UserError(
                f"text {rec.get('id')!r} has no mask marker "
                "and was not remasked, so there is nothing to revise (add [MASK] markers or "
                "pipe it through sbd remask)"
            )


def check_tokenizer(rec: Mapping[str, Any], ref: ModelRef, index: int) -> None:
    """Text encoded with another tokenizer than the stage model's is refused."""
    entry = draft_entry(rec)
    sha = entry.get("tokenizer") if entry is not None and entry.get("name") == "encode" else None
    mine = ref.codec.describe().get("sha256") if ref.codec is not None else None
    if sha is not None and mine is not None and sha != mine:
        raise UserError(
            f"record {index} (id {rec.get('id')!r}) was encoded with another tokenizer "
            f"(sha256 {str(sha)[:12]}) than {ref.id}'s ({str(mine)[:12]})"
        )

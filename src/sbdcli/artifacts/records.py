"""The sample record on disk: its typed form, validation, JSONL streams, `.safetensors` bundles.

The format (every field, its type, who sets it, the stage entries) is written down in
docs/records.md; `Record` and `StageEntry` are its typed form. `read_records` /
`write_records` / `RecordWriter` read and write JSONL (`-` = stdin/stdout) or one
`.safetensors` bundle; `validate_record` names the record and the field in its messages
(and, given `ModelIds`, refuses records drafted with another vocabulary); `DraftTally`
counts records against the `n_records` their draft declared (a cut input shows);
`group_by_length` groups records that stack into one tensor. Not here: what a stage does to
a record (pipeline/).

torch and safetensors are imported inside the functions that use them: the command line
imports artifacts/ at start-up, and `sbd --help` should not pay torch's ~1 s import.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict, cast

from sbdcli.artifacts.files import JsonlWriter, read_jsonl
from sbdcli.artifacts.tensors import load_tensors, save_tensors
from sbdcli.errors import UserError

RECORD_SCHEMA = "sbd.records"
RECORD_SCHEMA_VERSION = 1
REQUIRED_KEYS: dict[str, type | tuple[type, ...]] = {
    "id": str,
    "tokens": list,
    "confidence": list,
    "masked": list,
    "prompt_len": int,
    "nfe": int,
    "stages": list,
    "text": str,
    "model": str,
}
"""The required fields of `Record` and the JSON type `validate_record` checks for each."""


# --------------------------------------------------------------------------- typed form
class _StageName(TypedDict):
    name: str


class StageEntry(_StageName, total=False):
    """One element of a record's `stages`: `name`, then parameters, then cost (docs/records.md).

    Only `name` is required; which other keys a stage writes depends on its kind (draft,
    remask, revise). Entries written by other tools may carry further keys.
    """

    block_size: int
    block: int | str
    length: int
    steps_per_block: int | None
    first_hitting: bool
    schedule: str
    top_p: float
    temperature: float
    dtype: str
    unmask: str
    kv_cache: bool
    cache: str
    refresh: int | None
    compile: bool
    seed: int
    strategy: str
    gamma: float | None
    scope: str
    threshold: float | None
    passes: int
    n_masked: int
    positions: list[int]
    replaced: list[int]
    replaced_confidence: list[float]
    model: str
    vocab_size: int
    mask_id: int
    bos_id: int | None
    n_records: int
    batch_size: int
    nfe: int
    seconds: float


class _RequiredFields(TypedDict):
    id: str
    tokens: list[int]
    confidence: list[float]
    masked: list[int]
    prompt_len: int
    nfe: int
    stages: list[StageEntry]
    text: str
    model: str


class Record(_RequiredFields, total=False):
    """A sample record (docs/records.md): the required fields of `REQUIRED_KEYS`, plus these.

    Per-token lists have one value per element of `tokens`. Stages may add fields, never
    rename them; fields this type does not list are carried along unchanged.
    """

    confidence_nucleus: list[float]
    step: list[int]
    scores: list[float]
    stop: int


def group_by_length(records: Sequence[Mapping[str, Any]]) -> dict[int, list[int]]:
    """Indices of records grouped by `len(tokens)` (records of one length stack into a tensor)."""
    groups: dict[int, list[int]] = {}
    for j, rec in enumerate(records):
        groups.setdefault(len(rec["tokens"]), []).append(j)
    return groups


# --------------------------------------------------------------------------- validation
def _where(index: int, rec: Mapping[str, Any]) -> str:
    rid = rec.get("id")
    return f"record {index}" + (f" (id {rid!r})" if isinstance(rid, str) else "")


def _check_int_list(values: list[Any], where: str, field: str) -> None:
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise UserError(f"{where}: field '{field}' must be a list of integers")


@dataclass(frozen=True)
class ModelIds:
    """What a stage's model says about ids: records drafted by it must agree (docs/records.md)."""

    name: str
    vocab_size: int
    mask_id: int
    bos_id: int | None

    def describe(self) -> str:
        return f"vocab_size {self.vocab_size}, mask_id {self.mask_id}, bos_id {self.bos_id}"


MODEL_ID_KEYS = ("vocab_size", "mask_id", "bos_id")
"""The draft stage entry's keys that name the drafting model's vocabulary."""


def validate_record(
    rec: Mapping[str, Any],
    index: int = 0,
    vocab_size: int | None = None,
    model: ModelIds | None = None,
) -> Record:
    """Check a sample record against docs/records.md; return it unchanged or raise UserError.

    `index` (the record's place in its stream) and its `id` name the record in messages;
    with `vocab_size` (default: `model`'s), token ids must lie in [0, vocab_size); with
    `model`, the vocabulary the draft entry records must be the model's.
    """
    where = _where(index, rec)
    for key, kind in REQUIRED_KEYS.items():
        if key not in rec:
            raise UserError(f"{where}: missing field '{key}'")
        value = rec[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise UserError(f"{where}: field '{key}' has the wrong type")
    for j, stage in enumerate(rec["stages"]):
        if not isinstance(stage, dict) or not isinstance(stage.get("name"), str):
            raise UserError(f"{where}: stages[{j}] must be an object with a 'name'")
    if model is not None:
        _check_model_ids(rec, where, model)
        vocab_size = model.vocab_size if vocab_size is None else vocab_size
    _check_sequence(rec, where, vocab_size)
    _check_positions(rec, where)
    if rec["nfe"] < 0:
        raise UserError(f"{where}: field 'nfe' must be >= 0")
    return cast(Record, rec)


def _check_model_ids(rec: Mapping[str, Any], where: str, model: ModelIds) -> None:
    """The draft entry's `vocab_size`, `mask_id`, `bos_id` (where recorded) match `model`."""
    entry = draft_entry(rec)
    if entry is None or not any(k in entry for k in MODEL_ID_KEYS):
        return  # records of older versions: only the token range is checked
    if all(entry.get(k, getattr(model, k)) == getattr(model, k) for k in MODEL_ID_KEYS):
        return
    drafted = ", ".join(f"{k} {entry.get(k, '?')}" for k in MODEL_ID_KEYS)
    how = "encoded for a vocabulary" if entry.get("name") == "encode" else "drafted by a model"
    raise UserError(
        f"{where}: {how} with {drafted}, but {model.name} has "
        f"{model.describe()} (another vocabulary)"
    )


def _check_sequence(rec: Mapping[str, Any], where: str, vocab_size: int | None) -> None:
    """`tokens` are ids (inside the vocabulary when known); `confidence` one probability each."""
    tokens, conf = rec["tokens"], rec["confidence"]
    length = len(tokens)
    _check_int_list(tokens, where, "tokens")
    if length == 0:
        raise UserError(f"{where}: field 'tokens' is empty")
    if vocab_size is not None and any(t < 0 or t >= vocab_size for t in tokens):
        bad = next(t for t in tokens if t < 0 or t >= vocab_size)
        raise UserError(f"{where}: token id {bad} is outside the vocabulary (size {vocab_size})")
    if len(conf) != length:
        raise UserError(f"{where}: field 'confidence' has {len(conf)} values for {length} tokens")
    if not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in conf):
        raise UserError(f"{where}: field 'confidence' must be a list of numbers")
    if any(not math.isfinite(c) or c < 0.0 or c > 1.0 for c in conf):
        raise UserError(f"{where}: field 'confidence' must hold probabilities in [0, 1]")


def _check_positions(rec: Mapping[str, Any], where: str) -> None:
    """`masked`: ascending positions after the prompt; `prompt_len` inside the sequence."""
    masked, length = rec["masked"], len(rec["tokens"])
    _check_int_list(masked, where, "masked")
    if any(b <= a for a, b in itertools.pairwise(masked)):
        raise UserError(f"{where}: field 'masked' must be strictly ascending")
    if masked and (masked[0] < 0 or masked[-1] >= length):
        raise UserError(f"{where}: field 'masked' has a position outside [0, {length})")
    if not 0 <= rec["prompt_len"] <= length:
        raise UserError(f"{where}: field 'prompt_len' must lie in [0, {length}]")
    if masked and masked[0] < rec["prompt_len"]:
        raise UserError(f"{where}: field 'masked' includes prompt position {masked[0]}")


# --------------------------------------------------------------------------- draft tally
DRAFT_OUTCOMES = frozenset(
    {"nfe", "seconds", "batch_size", "redraws", "redraw_nfe", "low_entropy"}
    | {"n_tokens", "windows", "n_markers"}  # an encode entry's per-text values
)
"""Draft-entry (or encode-entry) keys that differ between records of one command."""


def draft_entry(rec: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The record's first stage entry when it is a `draft` or an `encode` (text in), or None.

    Both name the vocabulary (`vocab_size`, `mask_id`, `bos_id`) and the records written
    together (`n_records`).
    """
    stages = rec.get("stages")
    first = stages[0] if isinstance(stages, list) and stages else None
    if isinstance(first, dict) and first.get("name") in ("draft", "encode"):
        return cast(Mapping[str, Any], first)
    return None


def declared_records(rec: Mapping[str, Any]) -> int | None:
    """`n_records` of the record's draft entry: how many records its draft wrote, or None."""
    entry = draft_entry(rec)
    n = entry.get("n_records") if entry is not None else None
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else None


class DraftTally:
    """Records seen per draft command against the `n_records` each draft declared.

    Records belong to one draft when their drafting `model` and draft entry agree on every
    key but `DRAFT_OUTCOMES`. Records without `n_records` (older versions) are not counted.
    """

    def __init__(self) -> None:
        self._drafts: dict[str, list[int]] = {}  # draft key -> [seen, declared]

    def add(self, rec: Mapping[str, Any]) -> None:
        declared, entry = declared_records(rec), draft_entry(rec)
        if declared is None or entry is None:
            return
        params = {k: v for k, v in entry.items() if k not in DRAFT_OUTCOMES}
        key = json.dumps([rec.get("model"), params], sort_keys=True, default=str)
        self._drafts.setdefault(key, [0, declared])[0] += 1

    def declared(self) -> int | None:
        """Records all counted drafts declared together; None when none declared any."""
        return sum(d for _, d in self._drafts.values()) if self._drafts else None

    def shortfall(self) -> tuple[int, int] | None:
        """(seen, declared) summed over the drafts with fewer records seen than declared."""
        short = [(s, d) for s, d in self._drafts.values() if s < d]
        if not short:
            return None
        return sum(s for s, _ in short), sum(d for _, d in short)


# --------------------------------------------------------------------------- bundles
def _is_per_token(value: Any, length: int) -> bool:
    return (
        isinstance(value, list)
        and len(value) == length
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    )


def _bundle_tensors(
    records: Sequence[Mapping[str, Any]],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Split records into flat per-token tensors and the JSON-only remainder."""
    import torch

    lengths = [len(r["tokens"]) for r in records]
    shared = set.intersection(*(set(r) for r in records)) - {"masked"}
    per_token = sorted(
        k
        for k in shared
        if all(_is_per_token(r[k], n) for r, n in zip(records, lengths, strict=False))
    )
    tensors: dict[str, Any] = {"lengths": torch.tensor(lengths, dtype=torch.int64)}
    for key in per_token:
        flat = [v for r in records for v in r[key]]
        is_int = all(isinstance(v, int) for v in flat)
        tensors[key] = torch.tensor(flat, dtype=torch.int64 if is_int else torch.float64)
    mask = torch.zeros(sum(lengths), dtype=torch.bool)
    offset = 0
    for r, n in zip(records, lengths, strict=False):
        if r.get("masked"):
            mask[torch.tensor(r["masked"]) + offset] = True
        offset += n
    tensors["masked"] = mask
    rest = [{k: v for k, v in r.items() if k not in per_token and k != "masked"} for r in records]
    return tensors, rest


def save_record_bundle(path: str | os.PathLike[str], records: Sequence[Record]) -> None:
    """Write records as one safetensors bundle (per-token lists become flat tensors)."""
    if not records:
        raise UserError("no records to write")
    tensors, rest = _bundle_tensors(records)
    header = {"records": rest, "per_token": sorted(k for k in tensors if k != "lengths")}
    save_tensors(path, tensors, RECORD_SCHEMA, header, version=RECORD_SCHEMA_VERSION)


def _check_bundle(
    path: str | os.PathLike[str], tensors: Mapping[str, Any], header: Mapping[str, Any]
) -> tuple[list[int], list[Mapping[str, Any]]]:
    """The bundle's (lengths, JSON records), checked to agree with each other and with every
    per-token tensor; a bundle that does not is a UserError (never a shortened read)."""
    metas, per_token, lengths = (
        header.get("records"),
        header.get("per_token"),
        tensors.get("lengths"),
    )
    if not isinstance(metas, list) or not all(isinstance(m, dict) for m in metas):
        raise UserError(f"{path}: record bundle header has no list of records")
    if not isinstance(per_token, list) or lengths is None or lengths.ndim != 1:
        raise UserError(f"{path}: record bundle lacks its per-token index (lengths, per_token)")
    counts = lengths.tolist()
    if len(counts) != len(metas):
        raise UserError(
            f"{path}: inconsistent record bundle: its header lists {len(metas)} records "
            f"for {len(counts)} lengths"
        )
    if any(not isinstance(n, int) or n < 0 for n in counts):
        raise UserError(f"{path}: inconsistent record bundle: a negative length")
    total = sum(counts)
    for key in per_token:
        tensor = tensors.get(key) if isinstance(key, str) else None
        if tensor is None or tensor.ndim != 1 or tensor.numel() != total:
            raise UserError(
                f"{path}: inconsistent record bundle: per-token tensor {key!r} does not hold "
                f"{total} values (the sum of its lengths)"
            )
    return counts, metas


def load_record_bundle(path: str | os.PathLike[str]) -> list[Record]:
    """Read records back (not validated) from a bundle written by `save_record_bundle`."""
    tensors, header = load_tensors(path, schema=RECORD_SCHEMA)
    if header.get("schema_version", 1) > RECORD_SCHEMA_VERSION:
        raise UserError(f"{path}: record bundle version is newer than this sbd understands")
    lengths, metas = _check_bundle(path, tensors, header)
    records: list[Record] = []
    offset = 0
    for meta, n in zip(metas, lengths, strict=True):
        rec = dict(meta)
        for key in header["per_token"]:
            chunk = tensors[key][offset : offset + n]
            if key == "masked":
                rec[key] = chunk.nonzero().flatten().tolist()
            else:
                rec[key] = chunk.tolist()
        records.append(cast(Record, rec))
        offset += n
    return records


# --------------------------------------------------------------------------- streams
def read_records(
    path: str = "-", validate: bool = True, vocab_size: int | None = None
) -> Iterator[Record]:
    """Yield sample records from JSONL (lazily) or a `.safetensors` bundle, validated.

    With `validate=False` records are yielded as read (the caller validates them later).
    """
    source: Iterable[Mapping[str, Any]]
    source = load_record_bundle(path) if str(path).endswith(".safetensors") else read_jsonl(path)
    for index, rec in enumerate(source):
        yield validate_record(rec, index, vocab_size) if validate else cast(Record, rec)


class RecordWriter:
    """Write records to stdout/JSONL (streamed) or collect them into a `.safetensors` bundle."""

    def __init__(self, path: str = "-") -> None:
        self.path = str(path)
        self.bundle = self.path.endswith(".safetensors")
        self._records: list[Record] = []
        self._jsonl = None if self.bundle else JsonlWriter(self.path)

    def __enter__(self) -> RecordWriter:
        if self._jsonl is not None:
            self._jsonl.__enter__()
        return self

    def write(self, rec: Record) -> None:
        if self._jsonl is not None:
            self._jsonl.write(dict(rec))
        else:
            self._records.append(rec)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._jsonl is not None:
            self._jsonl.__exit__(exc_type, exc, tb)
        elif exc_type is None:
            save_record_bundle(self.path, self._records)


def write_records(records: Iterable[Record], path: str = "-") -> int:
    """Write every record to `path`; return how many were written."""
    count = 0
    with RecordWriter(path) as writer:
        for rec in records:
            writer.write(rec)
            count += 1
    return count

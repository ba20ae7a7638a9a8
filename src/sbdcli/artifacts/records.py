"""The sample record on disk: validation, JSONL streams of records, `.safetensors` bundles.

The format (every field, its type, who sets it) is written down in docs/records.md;
`Record` is its typed form. `read_records` / `write_records` / `RecordWriter` read and
write JSONL (`-` = stdin/stdout) or one `.safetensors` bundle; `validate_record` names the
record and the field in its messages. Not here: what a stage does to a record (pipeline/).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterable, Iterator
from typing import Any

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


# --------------------------------------------------------------------------- records
def _where(index: int, rec: dict[str, Any]) -> str:
    rid = rec.get("id")
    return f"record {index}" + (f" (id {rid!r})" if isinstance(rid, str) else "")


def _check_int_list(values: list[Any], where: str, field: str) -> None:
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise UserError(f"{where}: field '{field}' must be a list of integers")


def validate_record(
    rec: dict[str, Any], index: int = 0, vocab_size: int | None = None
) -> dict[str, Any]:
    """Check a sample record against ARCHITECTURE §4; return it unchanged or raise UserError."""
    where = _where(index, rec)
    for key, kind in REQUIRED_KEYS.items():
        if key not in rec:
            raise UserError(f"{where}: missing field '{key}'")
        value = rec[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise UserError(f"{where}: field '{key}' has the wrong type")
    tokens, conf, masked = rec["tokens"], rec["confidence"], rec["masked"]
    length = len(tokens)
    _check_int_list(tokens, where, "tokens")
    if vocab_size is not None and any(t < 0 or t >= vocab_size for t in tokens):
        bad = next(t for t in tokens if t < 0 or t >= vocab_size)
        raise UserError(f"{where}: token id {bad} is outside the vocabulary (size {vocab_size})")
    if len(conf) != length:
        raise UserError(f"{where}: field 'confidence' has {len(conf)} values for {length} tokens")
    if not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in conf):
        raise UserError(f"{where}: field 'confidence' must be a list of numbers")
    if any(not math.isfinite(c) or c < 0.0 or c > 1.0 for c in conf):
        raise UserError(f"{where}: field 'confidence' must hold probabilities in [0, 1]")
    _check_int_list(masked, where, "masked")
    if any(b <= a for a, b in itertools.pairwise(masked)):
        raise UserError(f"{where}: field 'masked' must be strictly ascending")
    if masked and (masked[0] < 0 or masked[-1] >= length):
        raise UserError(f"{where}: field 'masked' has a position outside [0, {length})")
    if not 0 <= rec["prompt_len"] <= length:
        raise UserError(f"{where}: field 'prompt_len' must lie in [0, {length}]")
    if masked and masked[0] < rec["prompt_len"]:
        raise UserError(f"{where}: field 'masked' includes prompt position {masked[0]}")
    if rec["nfe"] < 0:
        raise UserError(f"{where}: field 'nfe' must be >= 0")
    for j, stage in enumerate(rec["stages"]):
        if not isinstance(stage, dict) or not isinstance(stage.get("name"), str):
            raise UserError(f"{where}: stages[{j}] must be an object with a 'name'")
    return rec


def _is_per_token(value: Any, length: int) -> bool:
    return (
        isinstance(value, list)
        and len(value) == length
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    )


def _bundle_tensors(records: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict]]:
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


def save_record_bundle(path: str | os.PathLike[str], records: list[dict[str, Any]]) -> None:
    """Write records as one safetensors bundle (per-token lists become flat tensors)."""
    if not records:
        raise UserError("no records to write")
    tensors, rest = _bundle_tensors(records)
    header = {"records": rest, "per_token": sorted(k for k in tensors if k != "lengths")}
    save_tensors(path, tensors, RECORD_SCHEMA, header, version=RECORD_SCHEMA_VERSION)


def load_record_bundle(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read records back from a bundle written by `save_record_bundle`."""
    tensors, header = load_tensors(path, schema=RECORD_SCHEMA)
    if header.get("schema_version", 1) > RECORD_SCHEMA_VERSION:
        raise UserError(f"{path}: record bundle version is newer than this sbd understands")
    lengths = tensors["lengths"].tolist()
    records: list[dict[str, Any]] = []
    offset = 0
    for meta, n in zip(header["records"], lengths, strict=False):
        rec = dict(meta)
        for key in header["per_token"]:
            chunk = tensors[key][offset : offset + n]
            if key == "masked":
                rec[key] = chunk.nonzero().flatten().tolist()
            else:
                rec[key] = chunk.tolist()
        records.append(rec)
        offset += n
    return records


def read_records(
    path: str = "-", validate: bool = True, vocab_size: int | None = None
) -> Iterator[dict[str, Any]]:
    """Yield sample records from JSONL (lazily) or a `.safetensors` bundle, validated."""
    source: Iterable[dict[str, Any]]
    source = load_record_bundle(path) if str(path).endswith(".safetensors") else read_jsonl(path)
    for index, rec in enumerate(source):
        yield validate_record(rec, index, vocab_size) if validate else rec


class RecordWriter:
    """Write records to stdout/JSONL (streamed) or collect them into a `.safetensors` bundle."""

    def __init__(self, path: str = "-") -> None:
        self.path = str(path)
        self.bundle = self.path.endswith(".safetensors")
        self._records: list[dict[str, Any]] = []
        self._jsonl = None if self.bundle else JsonlWriter(self.path)

    def __enter__(self) -> RecordWriter:
        if self._jsonl is not None:
            self._jsonl.__enter__()
        return self

    def write(self, rec: dict[str, Any]) -> None:
        if self._jsonl is not None:
            self._jsonl.write(rec)
        else:
            self._records.append(rec)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._jsonl is not None:
            self._jsonl.__exit__(exc_type, exc, tb)
        elif exc_type is None:
            save_record_bundle(self.path, self._records)


def write_records(records: Iterable[dict[str, Any]], path: str = "-") -> int:
    """Write every record to `path`; return how many were written."""
    count = 0
    with RecordWriter(path) as writer:
        for rec in records:
            writer.write(rec)
            count += 1
    return count

"""On-disk formats: safetensors with a JSON header, JSONL record streams, atomic writes.

This is the only module that knows file formats. It offers
- `save_tensors` / `load_tensors`: safetensors files whose metadata carries a schema name,
  a schema version and a JSON header (config, provenance);
- `read_jsonl` / `JsonlWriter`: newline-delimited JSON, `-` meaning stdin/stdout, read lazily
  line by line and written line by line (flushed, so pipes stream);
- `read_records` / `write_records`: the sample record (ARCHITECTURE §4) as JSONL or as one
  `.safetensors` bundle, with validation whose messages name the record and the field;
- `atomic_file` / `atomic_dir`: write under a temporary name and rename, so a failure never
  leaves a partial file or directory and never destroys what was already there.

It is not a place for model or sampling logic; it never imports torch models.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

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


# --------------------------------------------------------------------------- atomic writes
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(tmp: str | os.PathLike[str], target: Path, directory: bool = False) -> None:
    """Give a temporary file or directory the usual permissions, then rename it into place.

    mkstemp/mkdtemp create private (0600/0700) entries; a normal write would honour umask.
    """
    os.chmod(tmp, (0o777 if directory else 0o666) & ~_umask())
    os.replace(tmp, target)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary sibling of `path` for writing; rename it over `path` on success.

    On any exception the temporary file is removed and `path` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        encoding = None if "b" in mode else "utf-8"
        with open(tmp, mode, encoding=encoding) as handle:
            yield handle
        _publish(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to `path` for a writer that wants a file name."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _publish(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a directory under a temporary name; swap it in for `path` on success.

    An existing `path` is replaced only after the new one is complete; on failure the
    temporary directory is removed and `path` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    _publish(tmp, target, directory=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_file(path) as handle:
        json.dump(obj, handle, indent=2, sort_keys=False)
        handle.write("\n")


def read_json(path: str | os.PathLike[str], what: str = "JSON file") -> Any:
    """Read a JSON file; a missing or malformed file is a `UserError` naming `what`."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} not found: {p}")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{what} {p} is not valid JSON: {exc}") from None


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- safetensors
def save_tensors(
    path: str | os.PathLike[str],
    tensors: dict[str, Any],
    schema: str,
    header: dict[str, Any] | None = None,
    version: int = 1,
) -> None:
    """Save torch tensors to `path` atomically with {schema, schema_version, header} metadata."""
    from safetensors.torch import save_file

    metadata = {
        "schema": schema,
        "schema_version": str(version),
        "header": json.dumps(header or {}, sort_keys=True),
    }
    contiguous = {k: v.contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(contiguous, str(tmp), metadata=metadata)
        _sort_metadata(tmp)


def _sort_metadata(path: Path) -> None:
    """Rewrite the safetensors JSON header with sorted metadata keys, in place.

    safetensors writes `__metadata__` from a Rust HashMap, in a random order per call, so
    identical tensors would get different bytes (and sha256). Same length: only reordered.
    """
    with open(path, "r+b") as handle:
        size = int.from_bytes(handle.read(8), "little")
        raw = handle.read(size)
        text = raw.decode("utf-8").rstrip(" ")
        obj = json.loads(text)
        obj["__metadata__"] = dict(sorted(obj.get("__metadata__", {}).items()))
        new = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(new) == len(text.encode("utf-8")):
            handle.seek(8)
            handle.write(new)


def read_tensor_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The raw string metadata of a safetensors file (without loading tensors)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except FileNotFoundError:
        raise UserError(f"file not found: {path}") from None
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise UserError(f"{path} is not a readable safetensors file: {exc}") from None


def load_tensors(
    path: str | os.PathLike[str],
    schema: str | None = None,
    device: str = "cpu",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load (tensors, header) from a safetensors file; check its schema when given."""
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise UserError(f"file not found: {p}")
    meta = read_tensor_metadata(p)
    if schema is not None and meta.get("schema") != schema:
        found = meta.get("schema", "none")
        raise UserError(f"{p} has schema '{found}', expected '{schema}'")
    try:
        header = json.loads(meta.get("header", "{}"))
        tensors = load_file(str(p), device=device)
    except Exception as exc:
        raise UserError(f"{p} is not a readable safetensors file: {exc}") from None
    header.setdefault("schema_version", int(meta.get("schema_version", "1")))
    return tensors, header


# --------------------------------------------------------------------------- JSONL
def _open_text_in(path: str) -> IO[str]:
    if path == "-":
        return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8")
    p = Path(path)
    if not p.is_file():
        raise UserError(f"input file not found: {p}")
    try:
        return open(p, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read {p}: {exc.strerror}") from None


def read_jsonl(path: str = "-") -> Iterator[dict[str, Any]]:
    """Yield one JSON object per non-empty line, lazily; bad lines are a `UserError`."""
    name = "stdin" if path == "-" else str(path)
    handle = _open_text_in(path)
    try:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{name}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise UserError(f"{name}:{lineno}: expected a JSON object per line")
            yield obj
    except UnicodeDecodeError:
        raise UserError(f"{name}: not UTF-8 text") from None
    finally:
        if path != "-":
            handle.close()


class JsonlWriter:
    """Write JSON objects one per line to stdout (`-`) or atomically to a file.

    Use as a context manager; on an exception a file target is left untouched.
    Each line is flushed so a downstream stage can start on the first record.
    """

    def __init__(self, path: str = "-") -> None:
        self.path = path
        self._ctx: contextlib.AbstractContextManager[IO[Any]] | None = None
        self._handle: IO[str] | None = None

    def __enter__(self) -> JsonlWriter:
        if self.path == "-":
            self._handle = sys.stdout
        else:
            self._ctx = atomic_file(self.path)
            self._handle = self._ctx.__enter__()
        return self

    def write(self, obj: dict[str, Any]) -> None:
        assert self._handle is not None, "JsonlWriter used outside its context"
        self._handle.write(json.dumps(obj, separators=(",", ":"), allow_nan=False) + "\n")
        self._handle.flush()

    def __exit__(self, *exc: Any) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(*exc)


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

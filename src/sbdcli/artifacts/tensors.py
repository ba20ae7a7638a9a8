"""safetensors files whose metadata carries a schema name, a schema version and a JSON header.

`save_tensors` writes atomically with sorted metadata (identical tensors, identical bytes);
`load_tensors` checks the schema; `read_tensor_metadata` reads the header without the
tensors. An input that is not a regular file (a FIFO, `<(...)`) is first copied to a
temporary file (safetensors maps files). safetensors only: nothing here unpickles. Not
here: what a schema means.

torch and safetensors are imported inside the functions that use them: the command line
imports artifacts/ at start-up, and `sbd --help` should not pay torch's ~1 s import.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sbdcli.artifacts.files import atomic_path, is_special, loads_json
from sbdcli.errors import UserError


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
        try:
            save_file(contiguous, str(tmp), metadata=metadata)
        except Exception as exc:  # safetensors reports I/O failures as its own error type
            io_error = _io_error(exc, path)
            if io_error is None:
                raise
            raise io_error from exc
        _sort_metadata(tmp)


def _io_error(exc: Exception, path: str | os.PathLike[str]) -> OSError | None:
    """The OSError behind a safetensors "I/O error: ... (os error N)", naming `path`."""
    match = re.search(r"os error (\d+)", str(exc))
    if match is None:
        return None
    errno = int(match[1])
    return OSError(errno, os.strerror(errno), str(path))


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
    if not p.exists() or p.is_dir():
        raise UserError(f"file not found: {p}")
    with _mappable(p) as local:
        meta = read_tensor_metadata(local)
        if schema is not None and meta.get("schema") != schema:
            found = meta.get("schema", "none")
            raise UserError(f"{p} has schema '{found}', expected '{schema}'")
        try:
            header = loads_json(meta.get("header", "{}"))
            tensors = load_file(str(local), device=device)
        except Exception as exc:
            raise UserError(f"{p} is not a readable safetensors file: {exc}") from None
    if not isinstance(header, dict):
        raise UserError(f"{p} is not a readable safetensors file: its header is not an object")
    header.setdefault("schema_version", int(meta.get("schema_version", "1")))
    return tensors, header


@contextlib.contextmanager
def _mappable(path: Path) -> Iterator[Path]:
    """`path`, or for a FIFO or /dev/fd input a temporary copy of its bytes."""
    if not is_special(path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="sbd-") as scratch:
        local = Path(scratch) / "input.safetensors"
        try:
            with open(path, "rb") as src, open(local, "wb") as dst:
                shutil.copyfileobj(src, dst)
        except OSError as exc:
            raise UserError(f"cannot read {path}: {exc.strerror}") from None
        yield local

"""A data directory on disk: its manifest, its token rows, its codec.

A data directory (written by `sbd prepare`, see prepare.py) holds
- `train-00000.safetensors`, ... and `val-00000.safetensors`, ...: tensor `tokens`,
  int32 [rows, L], schema "sbd.tokens". With `row_format` "sbd" (the default, and the
  synthetic language) every row starts with BOS; with "bd3lm" a row is L raw stream tokens
  (BD3-LM's OpenWebText rows). Either way position 0 is context, never masked or scored.
- `manifest.json` (schema "sbd.data"): source, tokenizer (kind, sha256, ids), vocab_size,
  mask_id, bos_id, eos_id, seq_len, row_format, rows/tokens/documents per split, shards,
  seed, command (a manifest without `row_format` is "sbd").
- `tokenizer.json` for text tokenizers; `oracle.safetensors` for the synthetic language.

`read_manifest`, `data_label` (the short name runs are named after), `load_split` (all
rows in memory), `TokenRows` (rows read lazily from the shards, for corpora larger than
memory), `load_codec`. Not here: writing rows (prepare.py).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from sbdcli import __version__
from sbdcli.artifacts.files import read_json
from sbdcli.artifacts.tensors import load_tensors, read_tensor_metadata
from sbdcli.data.codec import (
    Codec,
    codec_from_manifest,
)
from sbdcli.errors import UserError

SCHEMA = "sbd.data"
SCHEMA_VERSION = 1
TOKENS_SCHEMA = "sbd.tokens"
MANIFEST = "manifest.json"
SPLITS = ("train", "val")


def build_manifest(
    codec: Codec,
    seq_len: int,
    seed: int,
    command: str,
    source: dict[str, Any],
    stats: dict[str, dict[str, Any]],
    row_format: str = "sbd",
) -> dict[str, Any]:
    manifest = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created_by": f"sbd {__version__}",
        "source": source,
        "tokenizer": codec.describe(),
        "vocab_size": codec.vocab_size,
        "mask_id": codec.mask_id,
        "bos_id": codec.bos_id,
        "eos_id": codec.eos_id,
        "seq_len": seq_len,
        "row_format": row_format,
        "rows": {s: stats[s]["rows"] for s in SPLITS},
        "tokens": {s: stats[s]["rows"] * seq_len for s in SPLITS},
        "documents": {s: stats[s]["documents"] for s in SPLITS},
        "shards": {s: stats[s]["shards"] for s in SPLITS},
        "seed": seed,
        "command": command,
    }
    if "stream_tokens" in stats["train"]:
        manifest["stream_tokens"] = {s: stats[s]["stream_tokens"] for s in SPLITS}
        manifest["dropped_tokens"] = {s: stats[s]["dropped_tokens"] for s in SPLITS}
    return manifest


def row_format(manifest: dict[str, Any]) -> str:
    """The manifest's row format; "sbd" for manifests written before it was recorded."""
    return str(manifest.get("row_format", "sbd"))


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    text = json.dumps(manifest, indent=2) + "\n"
    (directory / MANIFEST).write_text(text, encoding="utf-8")


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a data directory (or of a run's `data/` copy), checked."""
    p = Path(directory)
    manifest = read_json(p / MANIFEST, what="data manifest")
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise UserError(f"{p / MANIFEST} is not an sbd data manifest")
    if int(manifest.get("schema_version", 0)) > SCHEMA_VERSION:
        raise UserError(f"{p / MANIFEST} is newer than this sbd understands; upgrade sbd")
    return manifest


def load_split(directory: str | os.PathLike[str], split: str = "train") -> Any:
    """All rows of a split, shards concatenated: torch int64 (rows, L)."""
    if split not in SPLITS:
        raise UserError(f"unknown split '{split}' (choose train or val)")
    p = Path(directory)
    manifest = read_manifest(p)
    names = manifest.get("shards", {}).get(split) or []
    if not names:
        raise UserError(f"{p} has no {split} rows")
    parts = []
    for name in names:
        tensors, _ = load_tensors(p / name, schema=TOKENS_SCHEMA)
        parts.append(tensors["tokens"])  # (rows, L) int32
    tokens = torch.cat(parts).long()  # (R, L)
    if tokens.shape[1] != manifest["seq_len"]:
        found, expected = tokens.shape[1], manifest["seq_len"]
        raise UserError(f"{p}: shards hold rows of {found} tokens, manifest says {expected}")
    return tokens


def load_codec(directory: str | os.PathLike[str]) -> Codec:
    """The codec a data directory (or RUN/data) was written with."""
    p = Path(directory)
    return codec_from_manifest(read_manifest(p), p)


class TokenRows:
    """Rows (int32 `tokens` [rows, L]) of one split, read lazily from its safetensors shards."""

    def __init__(self, data_dir: Path, split: str, manifest: dict[str, Any]) -> None:
        names = manifest.get("shards", {}).get(split)
        paths = (
            [data_dir / n for n in names]
            if names
            else sorted(data_dir.glob(f"{split}*.safetensors"))
        )
        if not paths or not all(p.is_file() for p in paths):
            raise UserError(f"{data_dir} lacks its {split} rows (run 'sbd prepare' again)")
        self._shards = []
        counts = []
        for path in paths:
            schema = read_tensor_metadata(path).get("schema")
            if schema != TOKENS_SCHEMA:
                raise UserError(f"{path} has schema '{schema}', expected '{TOKENS_SCHEMA}'")
            handle = safe_open(str(path), framework="pt")
            view = handle.get_slice("tokens")
            self._shards.append((handle, view))
            counts.append(int(view.get_shape()[0]))
        self.seq_len = int(self._shards[0][1].get_shape()[1])
        self.starts = torch.tensor([0, *counts]).cumsum(0)  # (n_shards + 1,)
        self.n_rows = int(self.starts[-1])

    def get(self, index: torch.Tensor) -> torch.Tensor:
        """Rows at global indices `index` (n,) as int64 (n, L)."""
        shard = torch.searchsorted(self.starts, index, right=True) - 1
        rows = []
        for s, i in zip(shard.tolist(), index.tolist(), strict=True):
            local = i - int(self.starts[s])
            rows.append(self._shards[s][1][local : local + 1])
        return torch.cat(rows).long() if rows else torch.empty(0, self.seq_len, dtype=torch.long)

    def head(self, n: int) -> torch.Tensor:
        """The first n rows (all when n is 0 or too large), int64 (n, L)."""
        n = self.n_rows if n <= 0 else min(n, self.n_rows)
        return self.get(torch.arange(n))


def data_label(data_dir: Path) -> str:
    """A short name of what a data directory holds, for run names: the synthetic language's
    or the dataset's name, else the first input file's stem, else the directory's name
    (`topic-markov`, `openwebtext`, `tinyshakespeare`); letters, digits, '.', '_', '-'."""
    source: Any = {}
    if (data_dir / "manifest.json").is_file():
        manifest = read_manifest(data_dir)
        source = manifest.get("source") if isinstance(manifest, dict) else {}
    source = source if isinstance(source, dict) else {}
    name = str(source.get("name") or "").rstrip("/").rpartition("/")[2]
    paths = source.get("paths") or []
    if not name and paths and isinstance(paths, list):
        name = Path(str(paths[0])).stem
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name or data_dir.resolve().name).strip("-.")
    return name[:40] or "data"


def read_data_manifest(data_dir: Path) -> dict[str, Any]:
    """The data directory's manifest; a missing one is a UserError that says what to run."""
    if not (data_dir / "manifest.json").is_file():
        raise UserError(f"no data at {data_dir}: manifest.json missing (run 'sbd prepare' first)")
    return read_manifest(data_dir)

"""Which model a sampling stage uses, and the name records give it.

`ModelRef` bundles a loaded denoiser with its record name `model` =
"<path>@<first 12 hex of sha256(model.safetensors)>" (path with symlinks resolved,
relative to the working directory when inside it) and the codec that decodes its ids
(the run's `data/` copy, when there is one). `default_model_path`: an explicit path wins,
then `$SBD_MODEL`, then `./runs/latest`. `ModelCache` loads each model once and, without
-m, resolves the model a record names (refusing one whose weights changed since).

Not here: checkpoint formats (model/checkpoint.py) and the stages themselves (stages.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sbdcli.artifacts.files import sha256_file
from sbdcli.artifacts.records import Record
from sbdcli.data.datadir import load_codec
from sbdcli.errors import UserError
from sbdcli.model.checkpoint import load_model, model_not_found, resolve_device

__all__ = ["ModelCache", "ModelRef", "default_model_path", "load_model_ref", "resolve_device"]


@dataclass
class ModelRef:
    """A loaded model with the name records give it and the codec that decodes its ids."""

    model: Any
    path: str
    sha12: str
    codec: Any = None
    device: str = "cpu"

    @property
    def id(self) -> str:
        return f"{self.path}@{self.sha12}"

    def decode(self, tokens: list[int]) -> str:
        """Decoded text without the leading BOS; empty when no tokenizer is known."""
        if self.codec is None:
            return ""
        bos = self.model.config.bos_id
        body = tokens[1:] if tokens and bos is not None and tokens[0] == bos else tokens
        return self.codec.decode(body)


def default_model_path(explicit: str | None) -> Path:
    """-m wins, then $SBD_MODEL, then ./runs/latest; a missing model is a UserError."""
    for source, value in (("-m", explicit), ("SBD_MODEL", os.environ.get("SBD_MODEL"))):
        if value:
            path = Path(value)
            if not path.exists():
                raise model_not_found(value, source)
            return path
    latest = Path("runs") / "latest"
    if not latest.exists():
        raise UserError("no model: pass -m RUN, set SBD_MODEL, or train one (./runs/latest)")
    return latest


def _record_path(path: Path) -> str:
    """The path records store: symlinks resolved, relative to the working directory if inside."""
    real = path.resolve()
    try:
        return real.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return real.as_posix()


def _weights_file(path: Path) -> Path | None:
    if path.is_file():
        return path
    candidate = path / "model.safetensors"
    return candidate if candidate.is_file() else None


def _load_codec(path: Path) -> Any:
    """The codec of a run (RUN/data) or of a checkpoint directory with a manifest; else None."""
    base = path if path.is_dir() else path.parent
    for candidate in (base / "data", base):
        if (candidate / "manifest.json").is_file():
            return load_codec(candidate)
    return None


def load_model_ref(path: str | Path, device: str = "cpu") -> ModelRef:
    """Load a run directory or checkpoint and describe it for records."""
    p = Path(path)
    if not p.exists():
        raise model_not_found(path)
    weights = _weights_file(p)
    sha12 = sha256_file(weights)[:12] if weights is not None else "unknown"
    device = resolve_device(device)
    model = load_model(str(p), device=device)
    return ModelRef(model, _record_path(p), sha12, _load_codec(p), device)


class ModelCache:
    """Loads each model once: -m if given, else the model a record names."""

    def __init__(self, explicit: str | None, device: str = "cpu") -> None:
        self.explicit, self.device = explicit, device
        self._refs: dict[str, ModelRef] = {}

    def for_record(self, rec: Record) -> ModelRef:
        if self.explicit:
            return self.get(self.explicit)
        name = rec.get("model", "")
        path, _, sha = name.rpartition("@")
        if not path:
            raise UserError(f"record {rec.get('id')!r} names no model; pass -m RUN")
        if not Path(path).exists():
            raise UserError(f"the records' model {path} does not exist here; pass -m RUN")
        ref = self.get(path)
        if sha not in ("unknown", ref.sha12):
            raise UserError(
                f"model {path} changed since record {rec.get('id')!r} was written "
                f"({sha} -> {ref.sha12}); pass -m to choose a model explicitly"
            )
        return ref

    def get(self, path: str) -> ModelRef:
        if path not in self._refs:
            self._refs[path] = load_model_ref(path, self.device)
        return self._refs[path]

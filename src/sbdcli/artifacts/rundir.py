"""The run directory `RUN/`: its whole layout, in one place that every reader uses.

    RUN/config.json      what was trained: model config, training config, data provenance
    RUN/model.safetensors  the weights to sample from (EMA when enabled)
    RUN/metrics.jsonl    one JSON line per optimizer step (validation on some)
    RUN/data/            copies of the data's manifest, tokenizer and oracle
    RUN/state/           exact resume state; state/trainer.json holds the step counters
    RUN/.lock            the writer's lock (`RunLock`, held by `sbd train`; names its pid)
    runs/latest          a relative symlink to the newest run under `runs/`

`RunDir` names these files and reads them (`config`, `trained_block_sizes`, `trainer_state`,
`finished_steps`, ...); `run_dir_of_records` finds the run a record set came from.
Not here: what training does with them (train/) or the tensors inside state/ (train/checkpoint.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sbdcli.artifacts.files import atomic_file, atomic_path, read_json, write_json
from sbdcli.errors import UserError

if sys.platform != "win32":
    import fcntl  # POSIX only; where it is missing a run directory is not locked

RUN_SCHEMA = "sbd.run"
DATA_COPIES = ("manifest.json", "tokenizer.json", "oracle.safetensors")
LOCK_FILE = ".lock"
FIRST_WRITES = ("config.json", "metrics.jsonl", "model.safetensors", "data", LOCK_FILE)
"""What a first run writes before its first checkpoint (state/ comes with the checkpoint)."""


class RunLock:
    """An exclusive OS lock on `RUN/.lock`, held while this object lives (and released by
    the kernel when the process dies); the file names the holder's pid. With `probe`, only
    check that nobody holds it: nothing is created or written and the lock is not kept.
    Not taken on Windows (no `fcntl`)."""

    def __init__(self, path: Path, probe: bool = False) -> None:
        self.path, self._fd = path, -1
        if sys.platform == "win32" or (probe and not path.is_file()):
            return
        self._fd = _open_lock_file(path, probe)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._refuse()
        if probe:
            self.release()
            return
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def _refuse(self) -> None:
        holder = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "unknown"
        self.release()
        raise UserError(
            f"{self.path.parent} is being written by another sbd process (pid {holder}); "
            "wait for it or choose another `out`"
        ) from None

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = -1

    def __del__(self) -> None:
        self.release()


def _open_lock_file(path: Path, probe: bool) -> int:
    """A descriptor of `path`: read-only for a probe, else created (with its directory)."""
    try:
        if probe:
            return os.open(path, os.O_RDONLY)
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise UserError(f"cannot lock the run directory {path.parent}: {exc.strerror}") from None


@dataclass(frozen=True)
class RunDir:
    """Paths and readers of one run directory (nothing is created until written)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))  # accept a str too

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def model_path(self) -> Path:
        return self.path / "model.safetensors"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def data_dir(self) -> Path:
        """The run's copies of its data files (manifest, tokenizer, oracle)."""
        return self.path / "data"

    @property
    def state_dir(self) -> Path:
        return self.path / "state"

    @property
    def lock_path(self) -> Path:
        return self.path / LOCK_FILE

    def lock(self) -> RunLock:
        """Take the run's writer lock (a UserError naming the holder when it is taken)."""
        return RunLock(self.lock_path)

    def check_unlocked(self) -> None:
        """A UserError naming the holder when a live writer holds the lock; writes nothing."""
        RunLock(self.lock_path, probe=True)

    def entries(self) -> list[str]:
        """Names in the run directory (empty when it does not exist)."""
        return sorted(p.name for p in self.path.iterdir()) if self.path.is_dir() else []

    def is_unfinished(self) -> bool:
        """A first run stopped before its first checkpoint: config.json and what precedes
        the first save, no state/, nothing else (a directory sbd may start over)."""
        if self.has_state() or not self.has_config():
            return False
        if self.config_or_empty().get("schema") != RUN_SCHEMA:
            return False
        return all(n in FIRST_WRITES or n.endswith(".tmp") for n in self.entries())

    def clear_unfinished(self) -> None:
        """Remove what an unfinished first run wrote (not the lock)."""
        for name in self.entries():
            if name == LOCK_FILE:
                continue
            entry = self.path / name
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    @property
    def trainer_state_path(self) -> Path:
        return self.state_dir / "trainer.json"

    # ------------------------------------------------------------------ config.json
    def has_config(self) -> bool:
        return self.config_path.is_file()

    def config(self) -> dict[str, Any]:
        """RUN/config.json (a UserError when missing or unreadable)."""
        obj = read_json(self.config_path, "run config")
        if not isinstance(obj, dict):
            raise UserError(f"{self.config_path} is not a run config (expected an object)")
        return obj

    def config_or_empty(self) -> dict[str, Any]:
        return self.config() if self.has_config() else {}

    def write_config(self, config: dict[str, Any]) -> None:
        """Write RUN/config.json atomically, stamped with the run schema."""
        write_json(self.config_path, {"schema": RUN_SCHEMA, "schema_version": 1, **config})

    def recorded_data_dir(self) -> Path | None:
        """The data directory the run was trained on, as config.json records it."""
        recorded = (self.config_or_empty().get("data") or {}).get("dir")
        return Path(recorded) if isinstance(recorded, str) and recorded else None

    def trained_block_sizes(self) -> list[int] | None:
        """Block sizes the run was trained with (from config.json), None if unknown.

        Also reads a BD3-LM Hugging Face directory's config.json (`block_size`)."""
        if not self.has_config():
            return None
        cfg = self.config()
        if "block_size" in cfg and "model_type" in cfg:  # BD3-LM HF dir
            return [int(cfg["block_size"])]
        train = cfg.get("train")
        if not isinstance(train, dict) or "block_small" not in train:
            return None
        lam = float(train.get("mix_lambda", 0.0))
        small = int(train["block_small"])
        large = int(train.get("block_large", small))
        if lam == 0.0:
            return [small]
        return [large] if lam == 1.0 else sorted({small, large})

    # ------------------------------------------------------------------ state
    def has_state(self) -> bool:
        return self.trainer_state_path.is_file()

    def trainer_state(self) -> dict[str, Any]:
        """RUN/state/trainer.json, the resume state's counters (a UserError when missing,
        unreadable or not an object)."""
        obj = read_json(self.trainer_state_path, "resume state")
        if not isinstance(obj, dict):
            raise UserError(f"{self.trainer_state_path} is not an sbd training state")
        return obj

    def finished_steps(self) -> int:
        """Optimizer steps the run has saved (0 when it has no readable state)."""
        if not self.has_state():
            return 0
        try:
            return int(json.loads(self.trainer_state_path.read_text()).get("step", 0))
        except (ValueError, OSError, AttributeError):
            return 0

    # ------------------------------------------------------------------ data copies, metrics
    def copy_data_files(self, data_dir: Path) -> None:
        """Copy the manifest, tokenizer and oracle (those present) into RUN/data."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for name in DATA_COPIES:
            src = data_dir / name
            if src.is_file():
                with atomic_path(self.data_dir / name) as tmp:
                    shutil.copyfile(src, tmp)

    def truncate_metrics(self, step: int) -> None:
        """Drop metric lines written after the checkpoint being resumed (a crash after it)."""
        path = self.metrics_path
        if not path.is_file():
            return
        kept = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
        with atomic_file(path) as handle:
            handle.write("".join(f"{ln}\n" for ln in kept))

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one JSON line to the metrics file (flushed, so `tail -f` follows it)."""
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def metrics(self) -> list[dict[str, Any]]:
        """Every metrics line, in order (empty when there is no metrics file)."""
        if not self.metrics_path.is_file():
            return []
        return [json.loads(ln) for ln in self.metrics_path.read_text().splitlines() if ln]


# --------------------------------------------------------------------------- runs/
def new_run_dir(runs_root: Path, preset_name: str, data_name: str | None = None) -> Path:
    """A fresh `runs_root/<preset>-<data>-<YYYYmmdd-HHMMSS>[-n]` path (not created), e.g.
    `runs/tiny-topic-markov-20260101-120000`; without a data name `<preset>-<time>`."""
    parts = [preset_name, *([data_name] if data_name else []), time.strftime("%Y%m%d-%H%M%S")]
    base = "-".join(parts)
    path, n = runs_root / base, 1
    while path.exists():
        n += 1
        path = runs_root / f"{base}-{n}"
    return path


def point_latest(run_dir: Path, runs_root: Path) -> str | None:
    """Make `runs_root/latest` a relative symlink to `run_dir` when the run lives there.

    Returns the run it pointed at before when that was another one (the link moved)."""
    if run_dir.resolve().parent != runs_root.resolve():
        return None
    link = runs_root / "latest"
    before = os.readlink(link) if link.is_symlink() else None
    tmp = runs_root / f".latest.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(run_dir.name)
    os.replace(tmp, link)
    return before if before not in (None, run_dir.name) else None


# --------------------------------------------------------------------------- records -> run
def parse_model_field(model: str) -> tuple[str, str | None]:
    """Split a record's `model` field "<path>@<sha12>" into (path, sha or None)."""
    path, sep, sha = model.rpartition("@")
    return (path, sha) if sep and path else (model, None)


def is_run_dir(path: Path) -> bool:
    return (path / "data" / "manifest.json").is_file() or (path / "config.json").is_file()


def run_dir_of_records(records: Iterable[dict[str, Any]]) -> RunDir | None:
    """The run directory named by the records' `model` fields, if one exists here."""
    paths = {parse_model_field(r["model"])[0] for r in records}
    for raw in sorted(paths):
        p = Path(raw)
        if not p.exists():  # a model that is not here names no run (never its parent, '.')
            continue
        run = p if p.is_dir() else p.parent
        if is_run_dir(run):
            return RunDir(run)
    return None


def data_dirs_of(data_dir: Path | None, records: Iterable[dict[str, Any]]) -> list[Path]:
    """Where a record set's data files may be: the given directory, then its run's copies."""
    run = run_dir_of_records(records)
    return [d for d in (data_dir, run.data_dir if run else None) if d is not None]

"""Plain files: atomic writes, JSON, hashing, JSONL streams.

- `atomic_file` / `atomic_path` / `atomic_dir`: write under a temporary name and rename, so a
  failure never leaves a partial file or directory and never destroys what was there;
- `read_json` / `write_json`, `sha256_file`;
- `read_jsonl` / `JsonlWriter`: newline-delimited JSON, `-` meaning stdin/stdout, read lazily
  line by line and written line by line (flushed, so pipes stream).

Not here: what the JSON means (records.py, rundir.py) or tensors (tensors.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from sbdcli.errors import UserError


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


def _temporary(target: Path, directory: bool = False) -> str:
    """A new temporary sibling `.<name>.<pid>.<random>.tmp` of `target` (file or directory),
    after removing the temporaries that writers of `target` which are gone left behind."""
    if not directory and target.is_dir():
        raise UserError(f"{target} is a directory (expected a file to write)")
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    prefix, parent = f".{target.name}.{os.getpid()}.", target.parent
    if directory:
        return tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=parent)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=parent)
    os.close(fd)
    return tmp


def check_output_path(path: str | os.PathLike[str]) -> None:
    """Refuse, before any work, an output file path that cannot be written: a directory,
    or one under a file. (`-`, stdout, is always fine.)"""
    if str(path) == "-":
        return
    target = Path(path)
    if target.is_dir():
        raise UserError(f"{target} is a directory (expected a file to write)")
    _check_parents(target)


def check_output_dir(path: str | os.PathLike[str]) -> None:
    """Refuse, before any work, an output directory (`out`) that cannot be made: a file,
    or a path under a file."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise UserError(f"`out` {target} exists and is not a directory")
    _check_parents(target)


def _check_parents(target: Path) -> None:
    """The nearest existing ancestor of `target` must be a directory."""
    parent = next((p for p in target.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UserError(f"{target}: {parent} is not a directory")


def _naming(exc: OSError, target: Path | str) -> OSError:
    """The same error, naming the file the user asked for rather than its temporary."""
    if exc.errno is None:
        return exc
    return type(exc)(exc.errno, exc.strerror, str(target))


def _alive(pid: int) -> bool:
    """Whether a process with this pid exists (one we may not signal still exists)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Remove `.<name>.<pid>.*.tmp` and `.<name>.old-<pid>` siblings of `target` whose writer
    process no longer exists (a writer killed mid-write); a live writer's are kept."""
    removed = []
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(?:(\d+)\..+\.tmp|old-(\d+))$")
    with contextlib.suppress(OSError):
        for entry in target.parent.iterdir():
            match = pattern.match(entry.name)
            if match is None or _alive(int(match[1] or match[2])):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
            removed.append(entry)
    return removed


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary sibling of `path` for writing; rename it over `path` on success.

    On any exception the temporary file is removed and `path` is left as it was.
    """
    encoding = None if "b" in mode else "utf-8"
    with atomic_path(path) as tmp, open(tmp, mode, encoding=encoding) as handle:
        yield handle


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to `path` for a writer that wants a file name."""
    target = Path(path)
    tmp = _temporary(target)
    try:
        yield Path(tmp)
        _publish(tmp, target)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise _naming(exc, target) from exc
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
    tmp = Path(_temporary(target, directory=True))
    try:
        yield tmp
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _naming(exc, target) from exc
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
        line = json.dumps(obj, separators=(",", ":"), allow_nan=False) + "\n"
        try:
            self._handle.write(line)
            self._handle.flush()
        except OSError as exc:
            if self.path != "-":
                raise  # atomic_file names the file
            raise _naming(exc, "stdout") from exc

    def __exit__(self, *exc: Any) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(*exc)

"""Plain files: atomic writes, JSON, hashing, JSONL streams.

- `atomic_file` / `atomic_path` / `atomic_dir`: write under a temporary name and rename, so a
  failure never leaves a partial file or directory and never destroys what was there; a
  target that exists and is not a regular file (a device such as /dev/null, a FIFO, a
  /dev/fd path) is written straight through instead, and a failed write to it (ENOSPC,
  EPIPE) is a `UserError` naming it;
- `read_json` / `write_json` / `loads_json` (JSON with a nesting limit), `sha256_file`;
- `read_input_bytes`: a whole input (file, FIFO, /dev/fd path or stdin) for readers of text;
  `parse_json_line`: one JSON Lines line, the one parser every JSONL reader uses;
- `read_jsonl` / `JsonlWriter`: newline-delimited JSON, `-` meaning stdin/stdout, read lazily
  line by line and written line by line (flushed, so pipes stream); inputs may be FIFOs and
  /dev/fd paths (`-i <(cat d.jsonl)`);
- `is_json_document`: the one rule that tells a `.json` document from JSON Lines.

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
import stat
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
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(target)
        prefix, parent = f".{target.name}.{os.getpid()}.", target.parent
        if directory:
            return tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=parent)
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=parent)
    except OSError as exc:  # it names the temporary: name the path asked for
        raise _naming(exc, target) from exc
    os.close(fd)
    return tmp


def is_special(path: str | os.PathLike[str]) -> bool:
    """Whether `path` exists and is not a regular file or a directory (a character or
    block device, a FIFO, a socket): such a target is opened and written, never replaced."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _resolved(path: str | os.PathLike[str]) -> Path:
    """The file a symbolic link names (replaced in place of the link, which is kept)."""
    target = Path(path)
    return Path(os.path.realpath(target)) if target.is_symlink() else target


def _failed_write(exc: OSError, target: Path | str) -> UserError:
    """A write straight through to a device or FIFO failed (ENOSPC, EPIPE, ...): one line."""
    reason = exc.strerror or str(exc)
    return UserError(f"{target}: {reason}")


@contextlib.contextmanager
def _through(target: Path, mode: str) -> Iterator[IO[Any]]:
    """Open a device or FIFO for writing; every failure, the final flush included, names it."""
    encoding = None if "b" in mode else "utf-8"
    try:
        with open(target, mode, encoding=encoding) as handle:
            yield handle
    except OSError as exc:
        raise _failed_write(exc, target) from None


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
    if is_special(path):
        with _through(Path(path), mode) as handle:
            yield handle
        return
    encoding = None if "b" in mode else "utf-8"
    with atomic_path(path) as tmp, open(tmp, mode, encoding=encoding) as handle:
        yield handle


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to `path` for a writer that wants a file name.

    A device or FIFO `path`: the temporary lies in the system's temporary directory and
    its bytes are copied to `path` on success."""
    if is_special(path):
        with tempfile.TemporaryDirectory(prefix="sbd-") as scratch:
            tmp = Path(scratch) / Path(path).name
            yield tmp
            with _through(Path(path), "wb") as out, open(tmp, "rb") as src:
                shutil.copyfileobj(src, out)
        return
    target = _resolved(path)
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


def is_json_document(path: str | os.PathLike[str]) -> bool:
    """Whether `path` names one JSON document (`.json`) rather than JSON Lines (`.jsonl`,
    any other name, `-`): the one rule every writer and reader of sbd follows."""
    return str(path).lower().endswith(".json")


MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects sbd reads (a record nests 4 levels deep)."""


class JsonDepthError(ValueError):
    """JSON nested deeper than `MAX_JSON_DEPTH` levels."""

    def __init__(self) -> None:
        super().__init__(f"nested deeper than {MAX_JSON_DEPTH} levels")


def _depth_exceeds(obj: Any, limit: int) -> bool:
    """Whether `obj` nests arrays and objects more than `limit` levels deep (no recursion)."""
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if not isinstance(value, (dict, list)):
            continue
        if depth > limit:
            return True
        children = value.values() if isinstance(value, dict) else value
        stack.extend((child, depth + 1) for child in children)
    return False


def loads_json(text: str | bytes) -> Any:
    """`json.loads` with a nesting limit: deeper text raises `JsonDepthError` (a
    `ValueError`), never a RecursionError."""
    try:
        obj = json.loads(text)
    except RecursionError:
        raise JsonDepthError() from None
    if _depth_exceeds(obj, MAX_JSON_DEPTH):
        raise JsonDepthError()
    return obj


def _check_readable(p: Path, what: str) -> None:
    """An input path must exist and not be a directory (a FIFO or a /dev/fd path is fine)."""
    if not p.exists():
        raise UserError(f"{what} not found: {p}")
    if p.is_dir():
        raise UserError(f"{what} {p} is a directory (expected a file)")


def parse_json_line(line: str, name: str, lineno: int) -> Any:
    """One line of JSON Lines (`loads_json`); malformed or too deep is a `UserError` naming
    `name:lineno`. Every reader of JSON Lines parses its lines here."""
    try:
        return loads_json(line)
    except json.JSONDecodeError as exc:
        raise UserError(f"{name}:{lineno}: not valid JSON ({exc.msg})") from None
    except JsonDepthError as exc:
        raise UserError(f"{name}:{lineno}: not valid JSON ({exc})") from None


def read_input_bytes(path: str, what: str = "input file") -> bytes:
    """Every byte of an input: a file, a FIFO, a /dev/fd path (`<(cmd)`) or stdin (`-`).
    A missing path, a directory or a failed read is a `UserError`."""
    if path == "-":
        return sys.stdin.buffer.read()
    p = Path(path)
    _check_readable(p, what)
    try:
        return p.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {p}: {exc.strerror or exc}") from None


def read_json(path: str | os.PathLike[str], what: str = "JSON file") -> Any:
    """Read a JSON file; a missing or malformed file is a `UserError` naming `what`."""
    p = Path(path)
    _check_readable(p, what)
    try:
        return loads_json(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
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
    _check_readable(p, "input file")
    try:
        return open(p, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read {p}: {exc.strerror}") from None


def read_jsonl(path: str = "-") -> Iterator[dict[str, Any]]:
    """Yield one JSON object per non-empty line, lazily; bad lines are a `UserError`.

    A `.json` path (`is_json_document`) holds one JSON document instead: an object, or a
    list of objects, yielded in order (what `JsonlWriter` writes to such a path)."""
    if path != "-" and is_json_document(path):
        yield from _document_objects(path)
        return
    name = "stdin" if path == "-" else str(path)
    handle = _open_text_in(path)
    try:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            obj = parse_json_line(line, name, lineno)
            if not isinstance(obj, dict):
                raise UserError(f"{name}:{lineno}: expected a JSON object per line")
            yield obj
    except UnicodeDecodeError:
        raise UserError(f"{name}: not UTF-8 text") from None
    finally:
        if path != "-":
            handle.close()


def _document_objects(path: str) -> Iterator[dict[str, Any]]:
    """The objects of a `.json` document: the object itself, or a list's elements."""
    loaded = read_json(path, "input file")
    objs = loaded if isinstance(loaded, list) else [loaded]
    for index, obj in enumerate(objs):
        if not isinstance(obj, dict):
            raise UserError(f"{path}: element {index} is not a JSON object")
        yield obj


class JsonlWriter:
    """Write JSON objects one per line to stdout (`-`) or atomically to a file; to a `.json`
    path (`is_json_document`), one JSON list of them, written atomically at the end.

    Use as a context manager; on an exception a file target is left untouched.
    Each line is flushed so a downstream stage can start on the first record.
    """

    def __init__(self, path: str = "-") -> None:
        self.path = path
        self._ctx: contextlib.AbstractContextManager[IO[Any]] | None = None
        self._handle: IO[str] | None = None
        self._document: list[dict[str, Any]] | None = None

    def __enter__(self) -> JsonlWriter:
        if self.path == "-":
            self._handle = sys.stdout
        elif is_json_document(self.path):
            self._document = []
        else:
            self._ctx = atomic_file(self.path)
            self._handle = self._ctx.__enter__()
        return self

    def write(self, obj: dict[str, Any]) -> None:
        if self._document is not None:
            json.dumps(obj, allow_nan=False)  # refused now, as a JSON line would be
            self._document.append(obj)
            return
        assert self._handle is not None, "JsonlWriter used outside its context"
        line = json.dumps(obj, separators=(",", ":"), allow_nan=False) + "\n"
        try:
            self._handle.write(line)
            self._handle.flush()
        except OSError as exc:
            if self.path != "-":
                raise  # atomic_file names the file
            raise _naming(exc, "stdout") from exc

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(exc_type, exc, tb)
        elif self._document is not None and exc_type is None:
            with atomic_file(self.path) as handle:
                json.dump(self._document, handle, indent=1, allow_nan=False)
                handle.write("\n")

"""Document sources for `sbd prepare`: text files, JSONL files, `datasets` datasets.

Each source is re-iterable (BPE training reads the corpus twice), streams documents with
bounded memory, reports progress in its own unit (bytes for files, documents for
datasets) and describes itself for the manifest. Opening a source checks what can be
checked up front (files exist, the dataset loads, the field exists) so user mistakes fail
before any output is written. This module does not tokenize or pack (see `sbdcli.data`).
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sbdcli.artifacts.files import loads_json
from sbdcli.errors import UserError

Advance = Callable[[int], None]
BLOCK = 1 << 20  # bytes read per step from a text file (progress granularity)
BLANK_LINE = rb"\n(?:[ \t\r\f\v]*\n)+"  # one or more blank (or whitespace-only) lines


class Source:
    """A re-iterable stream of documents (str) with a progress unit and total."""

    unit: str = "docs"
    total: int | None = None

    def documents(self, advance: Advance | None = None) -> Iterator[str]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError


def expand_paths(patterns: list[str], what: str) -> list[Path]:
    """Files named directly, by glob pattern, or as a directory (its files, sorted)."""
    paths: list[Path] = []
    for pattern in patterns:
        p = Path(pattern)
        if p.is_dir():
            paths.extend(sorted(q for q in p.iterdir() if q.is_file()))
        elif p.exists():
            paths.append(p)
        elif glob.has_magic(pattern) and (found := sorted(glob.glob(pattern))):
            paths.extend(Path(f) for f in found)
        else:
            raise UserError(f"{what} not found: {pattern}")
    for p in paths:
        if not os.access(p, os.R_OK) or not p.is_file():
            raise UserError(f"cannot read {what} {p}")
    if not paths:
        raise UserError(f"no {what}s given")
    return paths


def _read_blocks(path: Path, advance: Advance | None) -> Iterator[bytes]:
    try:
        with open(path, "rb") as handle:
            while block := handle.read(BLOCK):
                if advance is not None:
                    advance(len(block))
                yield block
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None


def _decode(raw: bytes, path: Path, offset: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (near byte {offset + exc.start})") from None


class TextFiles(Source):
    """Documents of text files separated by `doc_sep` (None = a blank line)."""

    unit = "bytes"

    def __init__(self, patterns: list[str], doc_sep: str | None = None) -> None:
        self.paths = expand_paths(patterns, "input file")
        self.doc_sep = doc_sep
        if doc_sep == "":
            raise UserError("`doc_sep` must not be empty (omit it to split on blank lines)")
        sep = BLANK_LINE if doc_sep is None else re.escape(doc_sep.encode())
        self._split = re.compile(sep)
        self.total = sum(p.stat().st_size for p in self.paths)

    def documents(self, advance: Advance | None = None) -> Iterator[str]:
        for path in self.paths:
            carry, base = b"", 0  # base: file offset of carry[0]
            for block in _read_blocks(path, advance):
                data, pos = carry + block, 0
                for match in self._split.finditer(data):
                    yield from self._clean(data[pos : match.start()], path, base + pos)
                    pos = match.end()
                carry, base = data[pos:], base + pos  # may continue in the next block
            yield from self._clean(carry, path, base)

    @staticmethod
    def _clean(raw: bytes, path: Path, offset: int) -> Iterator[str]:
        raw = raw.strip(b"\r\n")
        if raw.strip():
            yield _decode(raw, path, offset)

    def describe(self) -> dict[str, Any]:
        sep = "blank line" if self.doc_sep is None else self.doc_sep
        return {"kind": "text", "paths": [str(p) for p in self.paths], "doc_sep": sep}


class JsonlFiles(Source):
    """One document per JSON line: the string at `field`."""

    unit = "bytes"

    def __init__(self, patterns: list[str], field: str = "text") -> None:
        self.paths = expand_paths(patterns, "input file")
        self.field = field
        self.total = sum(p.stat().st_size for p in self.paths)

    def documents(self, advance: Advance | None = None) -> Iterator[str]:
        for path in self.paths:
            yield from self._file(path, advance)

    def _file(self, path: Path, advance: Advance | None) -> Iterator[str]:
        try:
            with open(path, "rb") as handle:
                for lineno, line in enumerate(handle, start=1):
                    if advance is not None:
                        advance(len(line))
                    if line.strip() and (doc := self._field(line, path, lineno)).strip():
                        yield doc
        except OSError as exc:
            raise UserError(f"cannot read {path}: {exc.strerror}") from None

    def _field(self, line: bytes, path: Path, lineno: int) -> str:
        try:
            obj = loads_json(line)
        except (ValueError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}:{lineno}: not valid JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise UserError(f"{path}:{lineno}: expected a JSON object per line")
        if self.field not in obj:
            known = ", ".join(sorted(obj)) or "none"
            raise UserError(f"{path}:{lineno}: no field '{self.field}' (fields: {known})")
        value = obj[self.field]
        if not isinstance(value, str):
            raise UserError(f"{path}:{lineno}: field '{self.field}' is not a string")
        return value

    def describe(self) -> dict[str, Any]:
        return {"kind": "jsonl", "paths": [str(p) for p in self.paths], "field": self.field}


LOCAL_BUILDERS = {
    ".parquet": "parquet",
    ".json": "json",
    ".jsonl": "json",
    ".arrow": "arrow",
    ".csv": "csv",
    ".txt": "text",
}


class HFDataset(Source):
    """A `datasets.load_dataset` split: a hub name, a local folder, or local data files.

    `datasets` >= 4 no longer runs loading scripts, so the script-based `openwebtext` fails;
    its parquet copy `Skylion007/openwebtext` (or local parquet files) works.
    """

    unit = "docs"

    def __init__(
        self,
        name: str,
        config: str | None = None,
        split: str = "train",
        field: str = "text",
        streaming: bool = False,
    ) -> None:
        self.name, self.config, self.split = name, config, split
        self.field, self.streaming = field, streaming
        self.dataset = self._load()
        columns = self._columns()
        if columns is not None and field not in columns:
            known = ", ".join(columns) or "none"
            raise UserError(f"dataset {name} has no field '{field}' (fields: {known})")
        self.total = None if streaming else len(self.dataset)

    def _load(self) -> Any:
        import datasets  # slow to import (~1-2 s); only hub/parquet sources need it

        bars = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()  # stderr belongs to the CLI
        try:
            return self._load_quietly()
        finally:
            if bars:
                datasets.enable_progress_bars()

    def _load_quietly(self) -> Any:
        import datasets  # slow to import (~1-2 s); only hub/parquet sources need it

        path = Path(self.name)
        try:
            if path.is_file() and path.suffix in LOCAL_BUILDERS:
                builder = LOCAL_BUILDERS[path.suffix]
                return datasets.load_dataset(
                    builder, data_files={self.split: str(path)}, split=self.split,
                    streaming=self.streaming,
                )  # fmt: skip
            if path.is_dir() and (path / "state.json").is_file():
                return self._from_disk(path)
            return datasets.load_dataset(
                self.name, self.config, split=self.split, streaming=self.streaming
            )
        except UserError:
            raise
        except Exception as exc:  # datasets raises many types (hub, file, config errors)
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UserError(f"cannot load dataset {self.name}: {message}") from None

    def _from_disk(self, path: Path) -> Any:
        import datasets  # slow to import (~1-2 s); only hub/parquet sources need it

        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if self.split not in loaded:
                raise UserError(f"dataset {path} has no split '{self.split}'")
            loaded = loaded[self.split]
        return loaded.to_iterable_dataset() if self.streaming else loaded

    def _columns(self) -> list[str] | None:
        columns = getattr(self.dataset, "column_names", None)
        if columns is None and self.streaming:  # some streams only know after one example
            first = next(iter(self.dataset), None)
            columns = sorted(first) if isinstance(first, dict) else None
        return list(columns) if columns is not None else None

    def documents(self, advance: Advance | None = None) -> Iterator[str]:
        data = self.dataset.select_columns([self.field])
        for batch in data.iter(batch_size=1000):
            values = batch[self.field]
            if advance is not None:
                advance(len(values))
            for value in values:
                if value is None:
                    continue
                if not isinstance(value, str):
                    kind = type(value).__name__
                    raise UserError(f"dataset field '{self.field}' holds {kind}, not text")
                if value.strip():  # blank documents are skipped, as in text files
                    yield value

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "dataset",
            "name": self.name,
            "config": self.config,
            "split": self.split,
            "field": self.field,
            "streaming": self.streaming,
        }

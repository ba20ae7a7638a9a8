"""The package layout holds: imports point downward, packages of one layer do not import
each other, diffusion/ stays pure math, only cli/ touches typer and rich, every module
says what it is, no module grows past `MAX_LINES` unless `LONG_MODULES` lists it with its
reason (so a module's growth past the limit is a visible decision in this file).

Imports are read from the sources (module level and inside functions alike)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "sbdcli"
LAYERS = {
    "errors": 0,
    "config": 1,
    "artifacts": 2,
    "distributed": 2,  # splitting work across processes: needs only errors; pipeline/,
    # evaluate/ and cli/ all split work, so it sits below them, beside artifacts/
    "data": 3,
    "model": 3,
    "diffusion": 3,
    "train": 4,
    "pipeline": 4,
    "evaluate": 4,
    "demo": 5,
    "serve": 5,  # the HTTP server: a client of pipeline/ and evaluate/, like demo.py
    "harness": 5,  # the lm-eval model: a client of pipeline/ and evaluate/, like serve/
    "cli": 6,
    "__main__": 7,
}
"""Layer of each top-level part of sbdcli; a part may import only lower layers (and itself)."""
DIFFUSION_MAY_IMPORT = {"config", "errors", "diffusion"}
CLI_ONLY = {"typer", "rich", "click"}
SERVER_STACK = {"fastapi", "starlette", "uvicorn", "sse_starlette", "prometheus_client"}
"""Imported only by serve/ (and started by cli/serve.py through it)."""
MAX_LINES = 450
"""The size past which a module must be listed in `LONG_MODULES`."""
LONG_MODULES = {
    "config.py": "every settings dataclass with its field docs, the one place a default "
    "lives (the command line, stage entries and docs read these fields)",
    "diffusion/sampler.py": "one engine for draft and revise: the block loop, the per-sample "
    "state and the draw rules share it (the network call is calls.py, the counts reveal.py)",
}
"""Modules allowed past `MAX_LINES` (path under sbdcli/ -> why it stays one module)."""


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py")


def part_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def imported(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module name) of every import in the file, absolute names."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
            out += [(node.lineno, n) for n in names]
    return out


def sbd_part(name: str) -> str | None:
    """'sbdcli.evaluate.metrics.gen_ppl' -> 'evaluate'; the bare package -> None."""
    parts = name.split(".")
    if parts[0] != "sbdcli" or len(parts) < 2 or parts[1] not in LAYERS:
        return None
    return parts[1]


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_downward(path):
    here = part_of(path)
    for line, name in imported(path):
        there = sbd_part(name)
        if there is None or there == here:
            continue
        where = f"{path.relative_to(PACKAGE)}:{line} imports {name}"
        assert LAYERS[there] < LAYERS[here], f"{where}: not a lower layer"
        if here == "diffusion":
            assert there in DIFFUSION_MAY_IMPORT, f"{where}: diffusion/ imports only config, errors"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_the_cli_imports_typer_and_rich(path):
    if part_of(path) in ("cli", "__main__"):
        return
    for line, name in imported(path):
        assert name.split(".")[0] not in CLI_ONLY, f"{path.relative_to(PACKAGE)}:{line} {name}"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_serve_imports_the_server_stack(path):
    if part_of(path) == "serve":
        return
    for line, name in imported(path):
        assert name.split(".")[0] not in SERVER_STACK, f"{path.relative_to(PACKAGE)}:{line} {name}"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_module_says_what_it_is_and_stays_small(path):
    name = str(path.relative_to(PACKAGE))
    doc = ast.get_docstring(ast.parse(path.read_text()))
    assert doc, f"{name} has no module docstring"
    lines = len(path.read_text().splitlines())
    if name not in LONG_MODULES:
        assert lines <= MAX_LINES, (
            f"{name} has {lines} lines (limit {MAX_LINES}): split it, or list it in "
            "LONG_MODULES with the reason it stays one module"
        )


@pytest.mark.parametrize("name", sorted(LONG_MODULES))
def test_a_listed_long_module_is_long(name):
    """An entry of LONG_MODULES names a module that exists and is past the limit (a module
    that shrank leaves the list, so the list stays the true set of exceptions)."""
    path = PACKAGE / name
    assert path.is_file(), f"LONG_MODULES lists {name}, which does not exist"
    lines = len(path.read_text().splitlines())
    assert lines > MAX_LINES, f"{name} has {lines} lines: remove it from LONG_MODULES"


def test_no_document_outside_the_repository_is_cited():
    for path in [*modules(), PACKAGE / "__init__.py"]:
        text = path.read_text()
        for marker in ("ARCHITECTURE", "METHOD §", "METHOD.md"):
            assert marker not in text, f"{path.relative_to(PACKAGE)} cites {marker}"

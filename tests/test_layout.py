"""The package layout holds: imports point downward, packages of one layer do not import
each other, diffusion/ stays pure math, only cli/ touches typer and rich, every module
says what it is, no module grows past `MAX_LINES` unless `LONG_MODULES` lists it with its
reason (so a module's growth past the limit is a visible decision in this file); and, for
every Python file of the repository, no edit of `sys.path` (scripts run as modules from the
root), and no benchmark or experiment that replaces a library attribute (they measure the
library as it ships, through its public functions), reads a clock of its own (they time
through bench/timer.py) or writes a markdown table by hand (they write through the
library's `markdown_grid`).

Imports are read from the sources (module level and inside functions alike)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "sbdcli"
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
    "pipeline/stages.py": "draft, remask and revise share the stage entry, the record checks "
    "and the per-record generators and seeds (each entry also says its precision); "
    "remask_batch with its scorers is the part to split out next",
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


def repository_files(*folders: str) -> list[Path]:
    """The Python files under the given top-level folders of the repository."""
    return sorted(p for f in folders for p in (ROOT / f).rglob("*.py"))


def test_no_file_edits_sys_path():
    for path in repository_files("src", "bench", "experiments", "tests", "examples"):
        for node in ast.walk(ast.parse(path.read_text())):
            func = node.func if isinstance(node, ast.Call) else None
            if isinstance(func, ast.Attribute) and ast.unparse(func.value) == "sys.path":
                raise AssertionError(f"{path.relative_to(ROOT)}:{node.lineno} edits sys.path")


def library_names(tree: ast.AST) -> set[str]:
    """Names a file binds to sbdcli modules or objects (`import sbdcli.x as y`, `from
    sbdcli.x import y`)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names
                      if a.name.split(".")[0] == "sbdcli"}  # fmt: skip
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "sbdcli":
            names |= {a.asname or a.name for a in node.names}
    return names


def test_benchmarks_and_experiments_replace_no_library_attribute():
    for path in repository_files("bench", "experiments"):
        tree = ast.parse(path.read_text())
        lib = library_names(tree)
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else []
            if isinstance(node, ast.AugAssign | ast.AnnAssign):
                targets = [node.target]
            patched = [t for t in targets if isinstance(t, ast.Attribute)]
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "setattr":
                patched.append(node.args[0])
            for t in patched:
                base = t.value if isinstance(t, ast.Attribute) else t
                while isinstance(base, ast.Attribute):
                    base = base.value
                assert not (isinstance(base, ast.Name) and base.id in lib), (
                    f"{path.relative_to(ROOT)}:{node.lineno} replaces {ast.unparse(t)}"
                )


CLOCKS = {"perf_counter", "perf_counter_ns", "monotonic", "monotonic_ns", "time", "time_ns"}
"""Wall clocks of the `time` module: only bench/timer.py reads one in bench/ and experiments/."""


def test_benchmarks_and_experiments_time_through_one_timer_and_one_table_writer():
    for path in repository_files("bench", "experiments"):
        where = path.relative_to(ROOT)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and where != Path("bench/timer.py"):
                name = ast.unparse(node.func)
                bare = name in CLOCKS - {"time"}  # from time import perf_counter
                clock = bare or (name.startswith("time.") and name.split(".", 1)[1] in CLOCKS)
                assert not clock, f"{where}:{node.lineno} reads {name}: time with bench.timer"
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                rule = "|---" in node.value.replace(" ", "")
                assert not rule, f"{where}:{node.lineno} writes a table: use markdown_grid"

"""Tests for cli/helptext.py: every command's --help reads without Python (no `<bool>`,
`None`, `False`, `list[...]` or backticked field names), writes every default one way
([default: ...]), shows one example pipeline, and
the sampling commands list their options in the Model, Sampling, Cache, Output and Run
panels."""

from __future__ import annotations

import re

import pytest
import typer

from sbdcli.cli import app, main
from sbdcli.cli.helptext import PANEL_COMMANDS

PYTHON = re.compile(r"<(bool|int|float|str|path)>|\bNone\b|\bFalse\b|\bTrue\b|list\[|`\w+`")


def command_paths() -> list[list[str]]:
    """Every command of the tree: ["draft"], ["eval", "genppl"], ..."""
    paths: list[list[str]] = []

    def walk(cmd: object, path: list[str]) -> None:
        subs = getattr(cmd, "commands", {})
        if not subs:
            paths.append(path)
        for name, sub in subs.items():
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return paths


def help_text(path: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main([*path, "--help"])
    assert info.value.code in (0, None)
    return capsys.readouterr().out


@pytest.mark.parametrize("path", command_paths(), ids=" ".join)
def test_help_shows_no_python_and_one_example(path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # one line per help text: nothing split by wrapping
    text = help_text(path, capsys)
    found = sorted({m.group(0) for m in PYTHON.finditer(text)})
    assert not found, f"sbd {' '.join(path)} --help shows {found}"
    assert "(default" not in text, "a default written inline instead of as [default: ...]"
    examples = [line for line in text.splitlines() if "Example: sbd " in line]
    assert len(examples) == 1, f"sbd {' '.join(path)} --help: {len(examples)} examples"


@pytest.mark.parametrize("name", PANEL_COMMANDS)
def test_sampling_commands_group_their_options_in_panels(name, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    text = help_text([name], capsys)
    panels = set(re.findall(r"╭─ (\w+) ─", text))
    assert {"Model", "Sampling", "Output", "Run"} <= panels, panels
    if name != "remask":  # remask makes no network call that a cache could serve
        assert "Cache" in panels


def test_the_root_help_lists_every_command(capsys):
    text = help_text([], capsys)
    for path in command_paths():
        assert path[0] in text

"""Tests for the CLI frame: version, help on every command, one-line errors with exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.main import get_command

from sbdcli import __version__
from sbdcli.cli import app, main


def run_main(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return int(info.value.code or 0)


def test_version(capsys):
    assert run_main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"sbd {__version__}"


def test_python_dash_m_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "sbdcli", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"sbd {__version__}"


def _all_commands(group, prefix=()):
    for name, cmd in group.commands.items():
        yield (*prefix, name), cmd
        if hasattr(cmd, "commands"):
            yield from _all_commands(cmd, (*prefix, name))


def test_every_command_has_help_text():
    commands = list(_all_commands(get_command(app)))
    assert commands, "no subcommands registered"
    for path, cmd in commands:
        assert (cmd.help or cmd.short_help or "").strip(), f"sbd {' '.join(path)} lacks help"
        for param in cmd.params:
            if param.name != "help" and getattr(param, "help", None) is not None:
                assert param.help.strip(), f"sbd {' '.join(path)} --{param.name} lacks help"


def test_unknown_option_is_one_line_exit_2(capsys):
    assert run_main(["--no-such-flag"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no-such-flag" in err[0]

"""How `--help` reads: value types in words, and the sampling options in panels.

Typer prints an option's Python type (`<bool>`, `<int>`, `<list[str]>`); `plain_help`
walks the click command tree typer builds for `sbd` and gives every option a metavar in
words instead (a flag shows none; N, X, TEXT, PATH otherwise), and lists the options of the
sampling commands in panels (Model, Sampling, Cache, Output, Run, from `PANELS`). It runs
on the tree `main` executes, so every `--help` shows the result.

Not here: the options and their help text (options.py, sampling.py and the commands).
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

PANELS: dict[str, tuple[str, ...]] = {
    "Model": ("--model", "--data"),
    "Sampling": (
        "--block", "--stages", "--gammas", "-n", "--length", "--prompts", "--prompt",
        "--stop-at-eos", "--reveal", "--revise-steps-per-block", "--top-p", "--temperature",
        "--sampling-dtype", "--gamma", "--strategy", "--scope", "--threshold", "--passes",
        "--infill", "--redraw-low-entropy", "--redraw-window", "--redraw-attempts",
    ),
    "Cache": ("--cache",),
    "Output": ("--input", "--output", "--records", "--diff", "--format", "--whole",
               "--mask-token", "--allow-normalize"),
    "Run": ("--seed", "--batch-size", "--device"),
}  # fmt: skip
"""The panel each option of a sampling command is listed in (the others: Options)."""
PANEL_COMMANDS = ("draft", "remask", "revise", "generate", "edit")
"""Commands whose options are grouped in `PANELS`."""
METAVARS: dict[Any, str] = {bool: "", int: "N", float: "X", str: "TEXT", Path: "PATH"}
"""The word shown for a value of each type (a flag: none)."""


def _panel(opts: list[str]) -> str | None:
    for name, flags in PANELS.items():
        if any(o in flags for o in opts):
            return name
    return None


def _plain(param: Any, panels: bool) -> None:
    """One option: its metavar in words, and its panel (an argument: no type column; its
    help says what it takes)."""
    if getattr(param, "param_type_name", "") == "argument":
        param.display_type_rich = lambda ctx: None  # typer offers no setting for this column
        return
    if getattr(param, "param_type_name", "") != "option":
        return
    desc = param.type_descriptor
    kind = typing.get_args(desc.annotation)[0] if desc.is_list else desc.annotation
    if param.metavar is None and not desc.is_choice and kind in METAVARS:
        param.metavar = METAVARS[kind]
    if panels:
        param.rich_help_panel = _panel([*param.opts, *param.secondary_opts])


def _quiet_help_option(command: Any, help_names: list[str]) -> None:
    """The command's own --help (made and cached by it on first use) shows no type."""
    ctx = command.context_class(command, info_name=command.name, help_option_names=help_names)
    option = command.get_help_option(ctx)
    if option is not None:
        option.metavar = ""


def plain_help(command: Any, name: str = "sbd", help_names: list[str] | None = None) -> Any:
    """The command tree with every option's metavar in words and the sampling commands'
    options in panels (in place; returned for chaining)."""
    if help_names is None:
        help_names = command.context_settings.get("help_option_names", ["--help"])
    for param in getattr(command, "params", []):
        _plain(param, name in PANEL_COMMANDS)
    _quiet_help_option(command, help_names)
    for sub_name, sub in getattr(command, "commands", {}).items():
        plain_help(sub, sub_name, help_names)
    return command

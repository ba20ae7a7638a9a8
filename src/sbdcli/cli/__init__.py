"""The `sbd` command line: a thin client of the library.

`main()` runs the typer app (every float option finite: `finite_floats`) and turns user
mistakes into one line on stderr with exit status 2 (never a traceback; under a
multi-process launch, from process 0 only); every string from users or data passes through
`term` (markup and control characters escaped) on its way to the terminal, and every console
shows control characters visibly (`make_console`); a library message names config fields
(`gamma`), shown here as the flags that set them (--gamma). A closed stdout pipe
(`| head -1`) ends quietly. The command modules imported below register their subcommands;
they hold no math. They import the heavy part of the library (torch, ~1 s) inside the command
functions, so `sbd --help` and a mistyped flag answer at once.

- options.py: shared options and option groups derived from config.py's fields;
- progress.py: the one progress-bar factory; tables.py: the one table renderer;
- prepare, train, sample (draft, remask, revise, generate), edit (encode, edit), show,
  evaluate, harness (eval harness, eval mauve), report, export, serve, demo.

This package is the only one that imports typer or rich.
"""

from __future__ import annotations

import importlib
import math
import os
import signal
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer

from sbdcli import __version__
from sbdcli.cli._app import app, console, term
from sbdcli.cli.helptext import plain_help
from sbdcli.cli.options import to_flags
from sbdcli.errors import UserError

# typer bundles its own copy of click in recent releases: use whichever it raises.
_click = importlib.import_module(typer.BadParameter.__module__)
_Abort = getattr(_click, "Abort", typer.Abort)  # typer's bundled click has no Abort of its own


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sbd {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Structural Block Diffusion toolkit."""


COMMAND_MODULES = (
    "prepare",
    "train",
    "export",
    "sample",
    "edit",
    "show",
    "evaluate",
    "harness",
    "report",
    "serve",
    "demo",
)
"""Imported for their side effect of registering subcommands on `app`, in help order."""
for _name in COMMAND_MODULES:
    importlib.import_module(f"sbdcli.cli.{_name}")


def _finite(value: Any) -> bool:
    """Whether every float in an option's value (a number, or a list or tuple of them) is
    finite; no setting of sbd means anything by infinity or NaN."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(_finite(v) for v in value)
    return True


def _checked(callback: Callable[..., Any] | None) -> Callable[..., Any]:
    def check(ctx: Any, param: Any, value: Any) -> Any:
        if not _finite(value):
            shown = ", ".join(str(v) for v in value) if isinstance(value, (list, tuple)) else value
            raise _click.BadParameter(f"{shown} is not a finite number", ctx=ctx, param=param)
        return value if callback is None else callback(ctx, param, value)

    return check


def finite_floats(command: Any) -> Any:
    """Every option and argument of `command` and its subcommands refuses a non-finite
    float (`inf`, `nan`) as it is parsed, before its own callback and before any work."""
    for param in command.params:
        param.callback = _checked(param.callback)
    for sub in getattr(command, "commands", {}).values():
        finite_floats(sub)
    return command


def _quiet_broken_pipe() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again (a
    stdout without a file descriptor, as when sbd runs inside another program, is left)."""
    try:
        fileno = sys.stdout.fileno()
    except (OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fileno)


def _error(message: str) -> None:
    console.print(f"[bold red]sbd: error:[/] {term(message)}", highlight=False, soft_wrap=True)


def _user_error(message: str) -> None:
    """A user error: one line, printed by process 0 of a launch (torchrun, accelerate
    launch) only; every process checks the same options and inputs, so the others would
    repeat its line word for word. Each process still exits 2."""
    try:
        rank = int(os.environ.get("RANK") or 0)
    except ValueError:
        rank = 0
    if rank == 0:
        _error(message)


def _os_error(exc: OSError) -> str:
    """One line for a failed read or write: the path and the system's reason."""
    reason = exc.strerror or str(exc)
    return f"{exc.filename}: {reason}" if exc.filename else f"output failed: {reason}"


def _ignore_file_size_signal() -> None:
    """Over a file-size limit a write then fails with EFBIG (an error we report) instead of
    the process being killed by SIGXFSZ."""
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `sbd` console script and `python -m sbdcli`."""
    _ignore_file_size_signal()
    try:
        command = plain_help(finite_floats(typer.main.get_command(app)))
        code = command(args=argv, prog_name="sbd", standalone_mode=False)
    except UserError as exc:
        _user_error(to_flags(str(exc)))
        sys.exit(2)
    except _click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        _user_error(exc.format_message() + hint)
        sys.exit(2)
    except (_Abort, KeyboardInterrupt):
        console.print("interrupted")
        sys.exit(130)
    except BrokenPipeError:
        _quiet_broken_pipe()
        sys.exit(0)
    except OSError as exc:  # disk full, file too large, a directory, no permission, ...
        _error(_os_error(exc))
        _quiet_broken_pipe()  # what stdout still buffers cannot be written either
        sys.exit(2)
    except SystemExit:
        # typer answers EPIPE (`| head -1`) itself: it wraps stdout and exits 1. End quietly.
        if type(sys.stdout).__name__ == "PacifyFlushWrapper":
            _quiet_broken_pipe()
            sys.exit(0)
        raise
    sys.exit(code if isinstance(code, int) else 0)

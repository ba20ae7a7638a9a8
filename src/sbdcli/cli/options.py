"""Options declared once: shared options, option groups derived from config dataclasses.

- Shared options (`ModelOpt`, `DeviceOpt`, `SeedOpt`, `BatchOpt`, `InputOpt`, `OutputOpt`)
  are declared here and nowhere else.
- `config_options(dest, Config, fields)` adds one option per dataclass field to a command:
  the flag is `--field-name` (or `FIELD_FLAGS`), the help is the field's attribute
  docstring and the default is the field's default, so each default lives in config.py
  only. The command receives the values as one dict argument `dest`. A field holding a
  policy or cache value (`SamplerConfig.reveal`, `.cache`) becomes a string option of its
  spellings, its help listing every choice. Every settings type that a command exposes
  (TrainConfig, SamplerConfig, RemaskConfig, RedrawConfig, GenPplOptions, DemoConfig) goes
  through this path; ModelConfig comes from a checkpoint or a preset, never from flags.
- Library messages name settings by their field in backticks (`gamma`); `to_flags` turns
  them into the flag a user typed (--gamma).

CLI plumbing only: no math, no file formats.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import itertools
import re
import textwrap
import typing
from collections.abc import Callable, Iterable
from typing import Annotated, Any

import typer

from sbdcli.config import choices

FIELD_FLAGS: dict[str, str] = {
    "block_size": "--block",
    "dtype": "--sampling-dtype",
    "kv_cache": "--no-kv-cache",
    "block_small": "--mix/--block",
    "block_large": "--mix/--block",
    "mix_lambda": "--lambda",
    "large_eps_min": "--eps-large",
    "large_eps_max": "--eps-large",
    "data_dir": "--data",
    "group": "--per-file",
    "samples": "--samples",
    "n": "-n",
}
"""Config fields whose command-line flag is not `--<field-name>`."""
MORE_FLAGS: dict[str, str] = {"evaluator": "-e", "samples": "-n", "lr_schedule": "--schedule"}
"""Config fields with a second flag: a one-letter one, or the name of 0.1/0.2."""

_FIELD = re.compile(r"`([a-z][a-z0-9_]*)`")
NO_DEFAULT = object()


def flag_for(field: str) -> str:
    """The flag that sets a config field: --top-p for `top_p`, --lambda for `mix_lambda`."""
    return FIELD_FLAGS.get(field, "--" + field.replace("_", "-"))


def to_flags(message: str) -> str:
    """A library message with every `field` replaced by its flag."""
    return _FIELD.sub(lambda m: flag_for(m.group(1)), message)


def _help_text(doc: str, fields: set[str]) -> str:
    """A field docstring as help: other fields become their flags, other `code` plain."""
    return _FIELD.sub(lambda m: flag_for(m[1]) if m[1] in fields else m[1], doc)


# --------------------------------------------------------------------------- shared options
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Run directory or checkpoint (draft default: $SBD_MODEL, else ./runs/latest; "
        "later stages default to the model named in the records).",
    ),
]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="cpu, cuda, or auto (cuda when available).")
]
PrecisionOpt = Annotated[
    str,
    typer.Option(
        "--precision",
        help="Network arithmetic: auto (bf16 autocast on CUDA, fp32 on CPU), fp32 or bf16.",
    ),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of this stage's random draws.")]
BatchOpt = Annotated[
    int, typer.Option("--batch-size", help="Records processed (and written) together.")
]
InputOpt = Annotated[
    str, typer.Option("--input", "-i", help="Records to read: JSONL, .safetensors, or - (stdin).")
]
OutputOpt = Annotated[
    str,
    typer.Option("--output", "-o", help="Where to write: JSONL path, .safetensors, or - (stdout)."),
]


# --------------------------------------------------------------------------- derived options
@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstring of every field of a dataclass, joined into one line."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, after in itertools.pairwise(body):
        is_doc = isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and is_doc:
            docs[node.target.id] = " ".join(str(after.value.value).split())  # type: ignore[attr-defined]
    return docs


def _option(
    cls: type,
    field: str,
    optional: bool,
    suffix: Callable[[str], str] | None,
    hidden: bool,
    shown_defaults: dict[str, str],
) -> Any:
    """(annotation, default) of the option that sets `cls.field`."""
    spec = {f.name: f for f in dataclasses.fields(cls)}[field]
    kind = typing.get_type_hints(cls)[field]
    doc = _help_text(field_docs(cls).get(field, ""), {f.name for f in dataclasses.fields(cls)})
    default = spec.default if spec.default is not dataclasses.MISSING else NO_DEFAULT
    if hasattr(default, "spelling"):  # a policy or cache value: the option is its spelling
        doc = f"{doc} Choices: {choices(typing.get_args(kind))}."
        kind, default = str, default.spelling()
    if suffix is not None:
        doc = f"{doc} {suffix(field)}".strip()
    flag = flag_for(field)
    if kind is bool and not optional and default is True:  # on by default: --x/--no-x
        base = flag.removeprefix("--no-").removeprefix("--")
        names = [f"--{base}/--no-{base}"]
    else:
        names = [flag, *([MORE_FLAGS[field]] if field in MORE_FLAGS else [])]
    shown: str | bool = True
    if optional:
        kind, default, shown = kind | None, None, shown_defaults.get(field, True)
    if default is None and shown is True:  # "(default: X)" in the doc: shown as [default: X]
        doc, shown = _default_in_words(doc)
    option = typer.Option(*names, help=doc, hidden=hidden, show_default=shown)
    return Annotated[kind, option], default


_DEFAULT_WORDS = re.compile(r"\s*\(default:? ((?:[^()]|\([^()]*\))+)\)")


def _default_in_words(doc: str) -> tuple[str, str | bool]:
    """A help text without its "(default ...)" and the words, for one way of showing a
    default ([default: ...]) whether the field has a value or a rule for being unset."""
    found = _DEFAULT_WORDS.search(doc)
    if found is None:
        return doc, True
    return (doc[: found.start()] + doc[found.end() :]).strip(), found.group(1)


def config_options(
    dest: str,
    cls: type,
    fields: Iterable[str],
    *,
    optional: bool | Iterable[str] = False,
    help_suffix: Callable[[str], str] | None = None,
    hidden: bool = False,
    shown_defaults: dict[str, str] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add one option per field of `cls` to a typer command; pass them as dict `dest`.

    `optional`: every option (True) or the named ones default to None, so the command can
    tell "not given" (and fill in defaults itself, e.g. per preset); `help_suffix(field)`
    is appended to a field's help text; `hidden` leaves the options out of --help (aliases);
    `shown_defaults` says in words what an unset optional field means ([default: ...]).
    """
    names = list(fields)
    unset = set(names) if optional is True else set(optional or ())

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        own = inspect.signature(command, eval_str=True)
        kept = [p for p in own.parameters.values() if p.name != dest]
        derived = []
        for name in names:
            annotation, default = _option(
                cls, name, name in unset, help_suffix, hidden, shown_defaults or {}
            )
            param_default = inspect.Parameter.empty if default is NO_DEFAULT else default
            derived.append(
                inspect.Parameter(
                    f"{dest}__{name}",
                    inspect.Parameter.KEYWORD_ONLY,
                    default=param_default,
                    annotation=annotation,
                )
            )

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            values = {n: kwargs.pop(f"{dest}__{n}") for n in names}
            return command(**kwargs, **{dest: values})

        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in kept] + derived
        wrapper.__signature__ = own.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        del wrapper.__wrapped__  # typer must read the new signature, not the command's
        return wrapper

    return decorate

"""The sampling options of `sbd draft`, `revise`, `generate` and `edit`, declared once.

What to sample (`NOpt`, `LengthOpt`, `PromptsOpt`, `PromptOpt`, `EosOpt`: draft and
generate) and how: `sampler_options` adds --reveal, --cache, --top-p, --temperature,
--sampling-dtype and --precision (derived from `SamplerConfig`'s fields) and the hidden
flags of 0.2 that name a policy or a cache (derived from `LegacySampling`);
`sampler_config` turns what a command received into its `SamplerConfig` and the note that
gives the old flags' new spelling, which the command prints with `print_note` once every
argument is checked (a user error stays one line).

Not here: what the policies and caches do (config.py, diffusion/), the commands (sample.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer

from sbdcli.cli._app import console
from sbdcli.cli.options import config_options, flag_for
from sbdcli.config import LEGACY_ALIASES, LegacySampling, SamplerConfig, resolve_sampler

# --------------------------------------------------------------------------- what to sample
NOpt = Annotated[
    int | None,
    typer.Option("-n", help="Samples, or samples per prompt.", show_default="16; 1 per prompt"),
]
LengthOpt = Annotated[
    int | None,
    typer.Option(
        "--length", help="Tokens per sample incl. BOS.", show_default="the trained length"
    ),
]
PromptsOpt = Annotated[
    str | None,
    typer.Option(
        "--prompts", help="JSONL of prompts: 'prompt' (text) or 'prompt_tokens', opt. 'id'."
    ),
]
PromptOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--prompt", help="A prompt as text (repeatable; ids p1, p2, ...); -n samples per prompt."
    ),
]
EosOpt = Annotated[
    bool,
    typer.Option(
        "--stop-at-eos",
        help="Stop a sample after the block in which it generates EOS; cut after the EOS.",
    ),
]


# --------------------------------------------------------------------------- how to sample
SAMPLER_FIELDS = ("reveal", "cache", "top_p", "temperature", "dtype", "precision")
"""`SamplerConfig` fields every sampling command exposes (the block size is per command)."""
_sampling = config_options(
    "sampling",
    SamplerConfig,
    SAMPLER_FIELDS,
    optional=("reveal",),  # unset: steps, unless an old flag names another policy
    shown_defaults={"reveal": "steps"},
)
_aliases = config_options("aliases", LegacySampling, LEGACY_ALIASES, hidden=True)


def sampler_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The sampling options as dict `sampling` and the hidden 0.2 flags as dict `aliases`."""
    return _sampling(_aliases(command))


def sampler_config(
    block: int, sampling: dict[str, Any] | None, aliases: dict[str, Any] | None
) -> tuple[SamplerConfig, str]:
    """The stage's `SamplerConfig` and the note naming the new spelling of the 0.2 flags
    given ("" without them)."""
    values = dict(sampling or {})
    reveal, cache = values.pop("reveal", None), values.pop("cache", "exact")
    cfg, old = resolve_sampler(block, reveal, cache, aliases or {}, **values)
    if not old:
        return cfg, ""
    flags = " ".join(flag_for(f) for f in old)
    spelled = f"--reveal {cfg.reveal.spelling()} --cache {cfg.cache.spelling()}"
    return cfg, f"{flags} will go in a later version; write {spelled}"


def print_note(note: str) -> None:
    """An alias note as one line on stderr; nothing for an empty note."""
    if note:
        console.print(f"sbd: note: {note}", highlight=False, soft_wrap=True)


def check_captured(cfg: SamplerConfig, device: str) -> None:
    """`--cache captured` where it cannot work fails before anything is read or written."""
    from sbdcli.diffusion.sampler import check_compile

    check_compile(cfg, device)

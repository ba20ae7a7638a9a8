"""Options declared once: shared option types, option groups derived from config fields.

Library messages name settings by their config field in backticks (`gamma`); `to_flags`
turns them into the flag a user typed (--gamma). `FIELD_FLAGS` lists the fields whose
flag is not simply `--field-name`. CLI plumbing only: no math, no file formats.
"""

from __future__ import annotations

import re

FIELD_FLAGS: dict[str, str] = {
    "block_size": "--block",
    "dtype": "--sampling-dtype",
    "kv_cache": "--no-kv-cache",
    "block_small": "--mix/--block",
    "block_large": "--mix/--block",
    "mix_lambda": "--lambda",
    "large_eps_min": "--eps-large",
    "large_eps_max": "--eps-large",
    "compile": "--compile",
    "data_dir": "--data",
    "group": "--per-file",
    "samples": "-n",
    "n": "-n",
}
"""Config fields whose command-line flag is not `--<field-name>`."""

_FIELD = re.compile(r"`([a-z][a-z0-9_]*)`")


def flag_for(field: str) -> str:
    """The flag that sets a config field: --top-p for `top_p`, --lambda for `mix_lambda`."""
    return FIELD_FLAGS.get(field, "--" + field.replace("_", "-"))


def to_flags(message: str) -> str:
    """A library message with every `field` replaced by its flag."""
    return _FIELD.sub(lambda m: flag_for(m.group(1)), message)

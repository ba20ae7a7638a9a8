"""What a draft starts from: prompts (fixed prefixes) read from JSONL or made up as bare BOS.

`read_prompts` reads a prompts file (`prompt` text or `prompt_tokens` ids, optional `id`;
BOS is prepended when missing), `text_prompts` takes texts given on the command line
(`--prompt`, ids `p1`, `p2`, ... as a file's lines would get); `draft_prompts` turns
either, or nothing, into the list of prompts a draft samples, one per record, with the
record ids of docs/records.md.

Not here: sampling (stages.py) or the model itself (modelref.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sbdcli.artifacts.files import read_jsonl
from sbdcli.errors import UserError
from sbdcli.pipeline.modelref import ModelRef


@dataclass
class Prompt:
    """A fixed prefix: record id and tokens (BOS first)."""

    id: str
    tokens: list[int] = field(default_factory=list)


def _bos(ref: ModelRef) -> int:
    """The id a sequence starts with: BOS, or [MASK] for models without one."""
    cfg = ref.model.config
    return cfg.bos_id if cfg.bos_id is not None else cfg.mask_id


def _prompt_tokens(obj: dict[str, Any], ref: ModelRef, where: str) -> list[int]:
    """The ids of one prompts-file object, BOS first."""
    if "prompt_tokens" in obj:
        toks = obj["prompt_tokens"]
        if not isinstance(toks, list) or not all(isinstance(t, int) for t in toks):
            raise UserError(f"{where}: 'prompt_tokens' must be a list of integers")
    elif isinstance(obj.get("prompt"), str):
        if ref.codec is None:
            raise UserError(f"{where}: text prompts need the model's tokenizer")
        toks = ref.codec.encode(obj["prompt"])
    else:
        raise UserError(f"{where}: expected a 'prompt' or 'prompt_tokens' field")
    bos = _bos(ref)
    return toks if toks[:1] == [bos] else [bos, *toks]


def read_prompts(path: str, ref: ModelRef) -> list[Prompt]:
    """Prompts JSONL: `prompt` (text, needs a tokenizer) or `prompt_tokens`; optional `id`."""
    prompts = []
    for line, obj in enumerate(read_jsonl(path), start=1):
        toks = _checked(_prompt_tokens(obj, ref, f"{path}:{line}"), ref, f"{path}:{line}")
        rid = obj.get("id")
        prompts.append(Prompt(str(rid) if rid is not None else f"p{line}", toks))
    if not prompts:
        raise UserError(f"{path}: no prompts")
    return prompts


def text_prompts(texts: list[str], ref: ModelRef) -> list[Prompt]:
    """Prompts given as text on the command line: ids `p1`, `p2`, ... in the order given."""
    prompts = []
    for i, text in enumerate(texts, start=1):
        where = f"--prompt {text!r}"
        prompts.append(
            Prompt(f"p{i}", _checked(_prompt_tokens({"prompt": text}, ref, where), ref, where))
        )
    return prompts


def _checked(toks: list[int], ref: ModelRef, where: str) -> list[int]:
    """`toks` when every id is a token of the model's vocabulary (never [MASK])."""
    cfg = ref.model.config
    bad = [t for t in toks if not 0 <= t < cfg.vocab_size or t == cfg.mask_id]
    if bad:
        raise UserError(f"{where}: token id {bad[0]} is not a valid prompt token")
    return toks


def draft_prompts(
    ref: ModelRef, n: int | None, seed: int, prompts: list[Prompt] | None
) -> list[Prompt]:
    """The prompts a draft samples: n bare-BOS prompts, or n samples per given prompt.

    Ids: `s<seed>-<i>` without prompts; the prompt's id, suffixed `-<j>` when n > 1.
    """
    if prompts is None:
        return [Prompt(f"s{seed}-{i}", [_bos(ref)]) for i in range(16 if n is None else n)]
    per = 1 if n is None else n
    if per == 1:
        return prompts
    return [Prompt(f"{p.id}-{j}", p.tokens) for p in prompts for j in range(per)]

"""What a draft starts from: prompts (fixed prefixes) read from JSONL or made up as bare BOS.

`read_prompts` reads a prompts file (`prompt` text or `prompt_tokens` ids, optional `id`;
BOS is prepended when missing), each object checked by `parse_prompt`; `text_prompts`
takes texts given on the command line (`--prompt`, ids `p1`, `p2`, ... as a file's lines
would get); `draft_prompts` turns either, or nothing, into the list of prompts a draft
samples, one per record, with the record ids of docs/records.md; `check_record_count`
bounds how many records one command samples (`MAX_RECORDS`), before any list is built.

Not here: sampling (stages.py) or the model itself (modelref.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sbdcli.artifacts.files import read_jsonl
from sbdcli.errors import UserError
from sbdcli.pipeline.modelref import ModelRef

MAX_RECORDS = 1_000_000
"""Records one draft or generate command samples at most (its work list is built up front);
a larger set is drafted in parts with different `--seed`s."""


def check_record_count(n: int | None, prompts: int | None = None) -> None:
    """`n` samples (bare BOS; or per prompt of `prompts` given) must be >= 1, and the records
    of the command at most MAX_RECORDS."""
    if n is not None and n < 1:
        raise UserError(f"-n must be >= 1, got {n}")
    per = n if n is not None else (16 if prompts is None else 1)
    total = per * (1 if prompts is None else prompts)
    if total > MAX_RECORDS:
        raise UserError(
            f"-n {n} asks for {total} records, more than {MAX_RECORDS:,} in one command "
            "(draft larger sets in parts with different --seed)"
        )


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


def parse_prompt(obj: dict[str, Any], ref: ModelRef, where: str) -> list[int]:
    """One prompts-file object (`prompt` text or `prompt_tokens` ids) as checked ids, BOS first."""
    cfg = ref.model.config
    toks = _prompt_tokens(obj, ref, where)
    bad = [t for t in toks if not 0 <= t < cfg.vocab_size or t == cfg.mask_id]
    if bad:
        raise UserError(f"{where}: token id {bad[0]} is not a valid prompt token")
    return toks


def read_prompts(path: str, ref: ModelRef) -> list[Prompt]:
    """Prompts JSONL: `prompt` (text, needs a tokenizer) or `prompt_tokens`; optional `id`."""
    prompts = []
    for line, obj in enumerate(read_jsonl(path), start=1):
        toks = parse_prompt(obj, ref, f"{path}:{line}")
        rid = obj.get("id")
        prompts.append(Prompt(str(rid) if rid is not None else f"p{line}", toks))
    if not prompts:
        raise UserError(f"{path}: no prompts")
    return prompts


def text_prompts(texts: list[str], ref: ModelRef) -> list[Prompt]:
    """Prompts given as text on the command line: ids `p1`, `p2`, ... in the order given."""
    return [
        Prompt(f"p{i}", parse_prompt({"prompt": text}, ref, f"--prompt {text!r}"))
        for i, text in enumerate(texts, start=1)
    ]


def draft_prompts(
    ref: ModelRef, n: int | None, seed: int, prompts: list[Prompt] | None
) -> list[Prompt]:
    """The prompts a draft samples: n bare-BOS prompts, or n samples per given prompt.

    Ids: `s<seed>-<i>` without prompts; the prompt's id, suffixed `-<j>` when n > 1.
    """
    check_record_count(n, None if prompts is None else len(prompts))
    if prompts is None:
        return [Prompt(f"s{seed}-{i}", [_bos(ref)]) for i in range(16 if n is None else n)]
    per = 1 if n is None else n
    if per == 1:
        return prompts
    return [Prompt(f"{p.id}-{j}", p.tokens) for p in prompts for j in range(per)]

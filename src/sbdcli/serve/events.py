"""The typed events of a request's stream, built from its records between stages.

One choice (row) of a request goes through: `draft` (positions committed, token ids, text
pieces, snapshot confidences), then per revise stage `remask` (the positions chosen) and
`revise` (each position's old and new id, new piece and confidence), then `final` (the
completion text, the finish reason and the record). A piece is the text a token adds to
the completion at its position (the decoded prefix through it minus the decoded prefix
before it), so the pieces of the final tokens, in position order, concatenate to the
completion text for tokenizers that decode token by token (the synthetic and word-level
ones; a byte-level tokenizer may split a character over two tokens). `completion_text` is
what the OpenAI-compatible answer returns as `text`.

Not here: when events are sent (batcher.py) or how they are framed (app.py).
"""

from __future__ import annotations

from typing import Any

from sbdcli.artifacts.records import Record
from sbdcli.pipeline import ModelRef


def _end(rec: Record) -> int:
    """Where the completion ends: before the EOS a stopped sample generated, else the end."""
    stop = rec.get("stop", -1)
    return int(stop) if stop is not None and stop >= 0 else len(rec["tokens"])


def _decode(ref: ModelRef, ids: list[int]) -> str:
    return "" if ref.codec is None else ref.codec.decode(ids)


def pieces(ref: ModelRef, rec: Record, positions: list[int]) -> list[str]:
    """The text each of `positions` adds to the completion (empty past its end)."""
    start, end, toks = rec["prompt_len"], _end(rec), rec["tokens"]
    out = []
    for p in positions:
        if p >= end or p < start:
            out.append("")
            continue
        before, through = _decode(ref, toks[start:p]), _decode(ref, toks[start : p + 1])
        out.append(
            through[len(before) :] if through.startswith(before) else _decode(ref, [toks[p]])
        )
    return out


def completion_text(ref: ModelRef, rec: Record, stops: list[str]) -> tuple[str, str]:
    """The completion's text and finish reason: "stop" at an EOS or a stop string, else
    "length"."""
    text = _decode(ref, rec["tokens"][rec["prompt_len"] : _end(rec)])
    reason = "stop" if _end(rec) < len(rec["tokens"]) else "length"
    cuts = [text.find(s) for s in stops if s in text]
    if cuts:
        return text[: min(cuts)], "stop"
    return text, reason


def draft_event(ref: ModelRef, rec: Record, index: int) -> dict[str, Any]:
    """The draft's commits: every generated position of the record."""
    pos = list(range(rec["prompt_len"], len(rec["tokens"])))
    return {
        "type": "draft",
        "index": index,
        "positions": pos,
        "tokens": [rec["tokens"][p] for p in pos],
        "pieces": pieces(ref, rec, pos),
        "confidence": [rec["confidence"][p] for p in pos],
    }


def remask_event(rec: Record, index: int, stage: int) -> dict[str, Any]:
    return {"type": "remask", "index": index, "stage": stage, "positions": list(rec["masked"])}


def revise_event(ref: ModelRef, rec: Record, index: int, stage: int) -> dict[str, Any]:
    """The replacements of the record's last (revise) stage entry."""
    entry = rec["stages"][-1]
    pos = list(entry["positions"])
    return {
        "type": "revise",
        "index": index,
        "stage": stage,
        "positions": pos,
        "old": list(entry["replaced"]),
        "new": [rec["tokens"][p] for p in pos],
        "pieces": pieces(ref, rec, pos),
        "confidence": [rec["confidence"][p] for p in pos],
    }


def final_event(ref: ModelRef, rec: Record, index: int, stops: list[str]) -> dict[str, Any]:
    text, reason = completion_text(ref, rec, stops)
    return {"type": "final", "index": index, "text": text, "finish_reason": reason, "record": rec}

"""The typed events of a request's stream, one per network call and per remask.

One choice (row) of a request goes through: `draft` events, one per network call of the
draft (the positions it committed, their token ids, text pieces and snapshot
confidences), then per revise stage one `remask` event (the positions chosen) and `revise`
events, one per network call of the revise (each position's `old` and `new` id, new piece
and confidence), then `final` (the completion text, the finish reason and the record). An edit
(`POST /v1/sbd/edit`) sends `remask` (the positions to revise: the weakest tokens, or the
text's markers when infilling), `revise` events, and `final` (the edited text, prompt
included, as `sbd edit` prints it, and the record).

A piece is the text a token adds at its position: the decoded completion through it minus
the decoded completion before it, in the row's current sequence (positions not yet
filled decode as [MASK]). In the final sequence the pieces, in position order, concatenate
to the completion text for tokenizers that decode token by token (the synthetic and
word-level ones; a byte-level tokenizer may split a character over two tokens).
`completion_text` is what the OpenAI-compatible answer returns as `text`.

Not here: when events are sent (batcher.py) or how they are framed (app.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sbdcli.artifacts.records import Record
from sbdcli.pipeline import ModelRef


def _end(rec: Record) -> int:
    """Where the completion ends: before the EOS a stopped sample generated, else the end."""
    stop = rec.get("stop", -1)
    return int(stop) if stop is not None and stop >= 0 else len(rec["tokens"])


def _decode(ref: ModelRef, ids: Sequence[int]) -> str:
    return "" if ref.codec is None else ref.codec.decode(list(ids))


def pieces(ref: ModelRef, seq: Sequence[int], start: int, positions: Sequence[int]) -> list[str]:
    """The text each of `positions` adds to the completion seq[start:]."""
    out = []
    for p in positions:
        before, through = _decode(ref, seq[start:p]), _decode(ref, seq[start : p + 1])
        out.append(through[len(before) :] if through.startswith(before) else _decode(ref, [seq[p]]))
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


def call_event(
    ref: ModelRef,
    seq: list[int],
    start: int,
    commits: tuple[Sequence[int], Sequence[int], Sequence[float]],
    head: dict[str, Any],
    before: list[int] | None = None,
) -> dict[str, Any]:
    """One network call's commits (positions, ids, confidences) in one row whose sequence
    `seq` is updated in place: a draft event, or with `before` (the ids the row held before
    its remask) a revise event, whose ids are `old` and `new` instead of `tokens`."""
    positions, tokens, conf = commits
    for p, t in zip(positions, tokens, strict=True):
        seq[p] = t
    out: dict[str, Any] = {**head, "positions": list(positions)}
    if before is None:
        out["tokens"] = list(tokens)
    else:
        out.update(old=[before[p] for p in positions], new=list(tokens))
    out["pieces"] = pieces(ref, seq, start, positions)
    out["confidence"] = list(conf)
    return out


def remask_event(rec: Record, index: int, stage: int) -> dict[str, Any]:
    return {"type": "remask", "index": index, "stage": stage, "positions": list(rec["masked"])}


def final_event(ref: ModelRef, rec: Record, index: int, stops: list[str]) -> dict[str, Any]:
    text, reason = completion_text(ref, rec, stops)
    return {"type": "final", "index": index, "text": text, "finish_reason": reason, "record": rec}


def edit_final_event(rec: Record, index: int) -> dict[str, Any]:
    return {"type": "final", "index": index, "text": rec["text"], "record": rec}

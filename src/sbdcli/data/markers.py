"""Text with mask markers -> model-vocabulary ids and the positions to fill (infilling).

A marker in a text stands for tokens to generate: `[MASK]` for one token, `[MASK:n]` for n
(another marker with `--mask-token`, e.g. `<blank>` and `<blank:3>`: the count goes before
a closing bracket, or after the marker when it does not end in one). Everything between
markers is literal text, encoded piece by piece with the codec, and must come back byte for
byte when decoded (`check_round_trip`): a tokenizer that normalises (whitespace, Unicode
forms) or drops unknown characters would otherwise change the text outside the edited
spans without saying so. The synthetic language is word-level: the whitespace that
separates its words from a marker (or ends a text) belongs to neither.

Not here: records (pipeline/encode.py) and the codecs themselves (codec.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sbdcli.data.codec import Codec, SyntheticCodec
from sbdcli.errors import UserError

DEFAULT_MARKER = "[MASK]"
_CLOSERS = "]>)}"


@dataclass(frozen=True)
class Marked:
    """A text's ids (no BOS) and the indices into them that are markers' tokens to fill."""

    ids: list[int]
    masked: list[int]
    n_markers: int


def marker_pattern(marker: str) -> re.Pattern[str]:
    """The regex of `marker` and its counted form (`[MASK]`, `[MASK:12]`, `[MASK:x]`...)."""
    if not marker or marker != marker.strip():
        raise UserError("--mask-token must be a non-empty string without surrounding spaces")
    head, tail = (marker[:-1], marker[-1]) if marker[-1] in _CLOSERS else (marker, "")
    return re.compile(
        re.escape(head) + r"(?::([^\s" + re.escape(tail or " ") + r"]*))?" + re.escape(tail)
    )


def _count(raw: str | None, text: str, limit: int) -> int:
    """The tokens one marker asks for: 1, or its `:n` (1 <= n <= limit)."""
    if raw is None:
        return 1
    if not raw.isdigit():
        raise UserError(f"marker {text!r}: the count must be a positive integer")
    n = int(raw)
    if n < 1:
        raise UserError(f"marker {text!r} asks for {n} tokens (at least 1)")
    if n > limit:
        raise UserError(f"marker {text!r} asks for {n} tokens, more than the limit of {limit}")
    return n


def split_markers(text: str, marker: str, limit: int) -> tuple[list[str], list[int]]:
    """Literal pieces (one more than markers) and each marker's token count."""
    pattern = marker_pattern(marker)
    pieces, counts, last = [], [], 0
    for m in pattern.finditer(text):
        pieces.append(text[last : m.start()])
        counts.append(_count(m.group(1), m.group(0), limit))
        last = m.end()
    pieces.append(text[last:])
    return pieces, counts


def _expected(codec: Codec, piece: str) -> str:
    """What the codec must give back for `piece`: itself (word-level: without edge spaces)."""
    return piece.strip() if isinstance(codec, SyntheticCodec) else piece


def check_round_trip(codec: Codec, piece: str, ids: list[int], where: str) -> None:
    """Refuse a piece of text the codec does not reproduce byte for byte."""
    back, want = codec.decode(ids), _expected(codec, piece)
    if back == want:
        return
    at = next((i for i, (a, b) in enumerate(zip(back, want, strict=False)) if a != b), None)
    at = min(len(back), len(want)) if at is None else at
    raise UserError(
        f"{where}: the tokenizer does not reproduce the text byte for byte (at character "
        f"{at}: {want[at : at + 12]!r} comes back as {back[at : at + 12]!r}); pass "
        "--allow-normalize to edit the tokenizer's version of it"
    )


def encode_marked(
    codec: Codec, text: str, marker: str, limit: int, where: str, *, exact: bool = True
) -> Marked:
    """Encode `text`, its markers becoming [MASK] ids; `limit`: the most tokens allowed.

    With `exact`, every literal piece must round-trip (`check_round_trip`).
    """
    pieces, counts = split_markers(text, marker, limit)
    ids: list[int] = []
    masked: list[int] = []
    for j, piece in enumerate(pieces):
        part = codec.encode(piece) if piece else []
        if exact:
            check_round_trip(codec, piece, part, where)
        if any(t == codec.mask_id for t in part):
            raise UserError(f"{where}: the text spells the [MASK] token outside a marker")
        ids.extend(part)
        if j < len(counts):
            masked.extend(range(len(ids), len(ids) + counts[j]))
            ids.extend([codec.mask_id] * counts[j])
        if len(ids) > limit:
            raise UserError(f"{where}: {len(ids)}+ tokens, more than the limit of {limit}")
    return Marked(ids, masked, len(counts))

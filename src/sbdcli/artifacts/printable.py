"""Text that came from data, made safe to show: control characters become visible escapes.

A record id, a decoded token (the bytes tokenizer decodes ESC), a file name or a model path
may hold control characters; written raw to a terminal they can clear the screen or set
the window title. `visible` is the one function every terminal output and the HTML report
pass such text through. Not here: rich markup escaping (cli/) or HTML escaping (the
report's writer).
"""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_LINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _escape(match: re.Match[str]) -> str:
    return repr(match[0])[1:-1]  # '\x1b', '\n', '\t', '\x9b'


def visible(text: str, lines: bool = False) -> str:
    """`text` with every C0/C1 control character (ESC, BEL, CSI, NUL, ...) written as a
    visible escape such as `\\x1b`; `lines` keeps newline and tab as they are."""
    return (_CONTROL_BUT_LINES if lines else _CONTROL).sub(_escape, text)

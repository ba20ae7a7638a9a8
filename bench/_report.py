"""Write one benchmark's results as a named section of docs/benchmarks.md.

Each benchmark script owns one section, delimited by HTML comments, and replaces only
that section, so scripts can be rerun independently. Also records the machine.
"""

from __future__ import annotations

import fcntl
import os
import platform
import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
TITLE = "# Benchmarks\n\nEach section is written by the script it names; rerun it to refresh.\n"


def machine() -> str:
    """One line describing where the numbers were measured."""
    import torch

    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch threads, {gpu}"
    )


def write_section(name: str, body: str) -> None:
    """Replace (or append) the section `name` of docs/benchmarks.md with `body`."""
    DOC.parent.mkdir(parents=True, exist_ok=True)
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{body.strip()}\n{end}"
    with open(DOC.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = DOC.read_text() if DOC.exists() else TITLE
        pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
        text = pattern.sub(lambda _: block, text) if pattern.search(text) else f"{text}\n{block}\n"
        tmp = DOC.with_suffix(".md.tmp")
        tmp.write_text(text)
        os.replace(tmp, DOC)

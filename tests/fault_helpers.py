"""The contract every refusal of the fault tests (tests/test_*_faults.py) asserts, as helpers.

A refused command exits with status 2, writes exactly one line on stderr (`sbd: error:
...`), no traceback, nothing on stdout, and leaves every file and directory that existed
before unchanged (none created, none deleted). `refused` runs `sbd` in this process,
`refused_in_shell` runs a bash command line (for `<(...)`, FIFOs and launches).
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sbdcli.cli import main

SBD = [sys.executable, "-m", "sbdcli"]


def code(argv: list[str]) -> int:
    """`sbd ARGV` in this process: its exit status."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    return int(info.value.code or 0)


def tree(root: Path) -> dict[str, str]:
    """Every entry under `root`: file contents (sha256), links, directories, special files."""
    out = {}
    for p in sorted(root.rglob("*")):
        mode = p.lstat().st_mode
        if stat.S_ISLNK(mode):
            out[str(p)] = "link " + os.readlink(p)
        elif stat.S_ISREG(mode):
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[str(p)] = f"mode {stat.S_IFMT(mode):o}"
    return out


def one_line(err: str, expect: str) -> str:
    """The one `sbd: error:` line of `err`, which must hold `expect`."""
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("sbd: error: ") and expect in lines[0], err
    return lines[0]


def refused(argv: list[str], root: Path, capsys, expect: str) -> str:
    """Run `sbd ARGV` in this process: it must hold the contract of the module docstring."""
    before = tree(root)
    capsys.readouterr()
    status = code(argv)
    out, err = capsys.readouterr()
    assert status == 2, err
    line = one_line(err, expect)
    assert out == "", out
    assert tree(root) == before
    return line


def env(**extra: str) -> dict[str, str]:
    """The environment of a subprocess: offline, one thread, no default model."""
    out = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **extra)
    out.pop("SBD_MODEL", None)
    return out


def shell(cmd: str, root: Path) -> subprocess.CompletedProcess[str]:
    """A bash command line in `root`, where `sbd ` is this interpreter's sbd."""
    return subprocess.run(["bash", "-c", cmd.replace("sbd ", " ".join(SBD) + " ")], cwd=root,
                          env=env(), capture_output=True, text=True, timeout=300)  # fmt: skip


def refused_in_shell(cmd: str, root: Path, expect: str) -> str:
    """The contract of the module docstring for a bash command line."""
    before = tree(root)
    done = shell(cmd, root)
    assert done.returncode == 2, done.stderr
    line = one_line(done.stderr, expect)
    assert done.stdout == ""
    assert tree(root) == before
    return line

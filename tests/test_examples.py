"""The example scripts run end to end through the real `sbd` command (at a tiny budget).

examples/tinyshakespeare.sh is run on a small text made from the repository's own docs
(so the test needs no ../shared), with 2 training steps and 4 samples: it must leave a
draft, a revision carrying the draft's stage history, and a Gen PPL table of both.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "tinyshakespeare.sh"


def _run(text: Path, work: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "STEPS": "2",
        "N": "4",
        "DEVICE": "cpu",
        "SBD": f"{sys.executable} -m sbdcli",
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        ["bash", str(SCRIPT), str(text), str(work)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_tinyshakespeare_example_runs_end_to_end(tmp_path: Path) -> None:
    text = tmp_path / "corpus.txt"
    docs = [(ROOT / name).read_text() for name in ("README.md", "docs/sampling.md")]
    text.write_text("\n\n".join(docs * 8))
    work = tmp_path / "run"
    done = _run(text, work)
    assert done.returncode == 0, done.stderr[-2000:]

    drafts, revised = _records(work / "draft.jsonl"), _records(work / "revised.jsonl")
    assert len(drafts) == len(revised) == 4
    assert all(len(r["tokens"]) == 256 for r in revised)
    assert [s["name"] for s in revised[0]["stages"]] == ["draft", "remask", "revise"]
    assert revised[0]["stages"][0] == drafts[0]["stages"][0]
    assert revised[0]["stages"][1]["gamma"] == 0.25

    table = (work / "genppl.md").read_text()
    assert table.count("\n|") >= 3, table  # header, rule, one row per file at least
    assert "draft" in table and "revise" in table

    built = [work / "data" / "manifest.json", work / "mix" / "model.safetensors"]
    built.append(work / "judge" / "model.safetensors")
    stamps = [p.stat().st_mtime_ns for p in built]
    again = _run(text, work)  # finished data and models are reused, not rebuilt
    assert again.returncode == 0, again.stderr[-2000:]
    assert [p.stat().st_mtime_ns for p in built] == stamps


def test_tinyshakespeare_example_without_text_is_a_usage_error() -> None:
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("usage:")

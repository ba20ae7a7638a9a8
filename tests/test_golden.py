"""Golden-output regression test: the whole chain on the synthetic language, fixed seeds.

prepare -> train (a few steps) -> draft -> remask (every strategy, both scopes, a
threshold) -> revise -> generate -> eval genppl / eval ppl, all through the command line,
compared with `tests/golden/chain.json`. Tokens, masked positions, NFE and texts must match
exactly; confidences, scores and eval numbers within 1e-6 relative (float64 draws,
one thread). Measured seconds, paths and content hashes are dropped before comparing.

Regenerate (only when a change of behaviour is intended) with
`SBD_UPDATE_GOLDEN=1 pytest tests/test_golden.py`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest

from sbdcli.cli import main

GOLDEN = Path(__file__).parent / "golden" / "chain.json"
VOLATILE = {"model", "path", "file"}
"""Keys whose values are machine paths or content hashes: not part of the behaviour."""


def volatile(key: str) -> bool:
    """Measured times and rates are not behaviour either."""
    return key in VOLATILE or "second" in key or key.endswith("_s")


def run(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code in (0, None), f"sbd {' '.join(argv)} exited {info.value.code}"


def strip(obj: Any) -> Any:
    """The behaviour-bearing part of a record or summary."""
    if isinstance(obj, dict):
        return {k: strip(v) for k, v in sorted(obj.items()) if not volatile(k)}
    if isinstance(obj, list):
        return [strip(v) for v in obj]
    if isinstance(obj, str) and ("/" in obj and os.sep in obj and "tmp" in obj):
        return "<path>"
    return obj


def records(path: Path) -> list[Any]:
    return [strip(json.loads(line)) for line in path.read_text().splitlines() if line]


def close(a: Any, b: Any, where: str = "") -> None:
    """Exact for ints/strings/structure, 1e-6 relative for floats."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b), f"{where}: keys {sorted(a)}"
        for k in a:
            close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{where}: length"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and not isinstance(b, bool) and isinstance(b, (int, float)):
        same = (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
        assert same, f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("golden")
    data, rundir = root / "data", root / "run"
    d = lambda name: str(root / name)  # noqa: E731
    run(["prepare", "--synthetic", "topic-markov", "--out", str(data), "--seq-len", "32",
         "--num-train", "256", "--num-val", "32", "--oracle-samples", "64", "--vocab", "16",
         "--topics", "2", "--seed", "3"])  # fmt: skip
    run(["train", "--data", str(data), "--out", str(rundir), "--preset", "tiny", "--steps", "8",
         "--batch-size", "8", "--lr", "3e-3", "--warmup", "2", "--mix", "4,32", "--lambda", "0.5",
         "--val-every", "4",
         "--save-every", "4", "--val-rows", "16", "--seed", "5", "--device", "cpu"])  # fmt: skip
    m = ["-m", str(rundir), "--device", "cpu"]
    run(["draft", *m, "-n", "5", "--block", "4", "--seed", "1", "--batch-size", "3",
         "-o", d("draft.jsonl")])  # fmt: skip
    run(["draft", *m, "-n", "3", "--block", "8", "--steps-per-block", "3", "--top-p", "1.0",
         "--unmask", "confident", "--seed", "2", "-o", d("draft2.jsonl")])  # fmt: skip
    remasks = {
        "snapshot": ["--strategy", "snapshot", "--gamma", "0.25"],
        "random": ["--strategy", "random", "--gamma", "0.5"],
        "posthoc": ["--strategy", "posthoc", "--gamma", "0.25", *m],
        "masked": ["--strategy", "masked", "--gamma", "0.25", "--passes", "2", *m],
        "batch": ["--strategy", "snapshot", "--gamma", "0.25", "--scope", "batch"],
        "threshold": ["--strategy", "snapshot", "--threshold", "0.5"],
    }
    for name, flags in remasks.items():
        run(["remask", *flags, "--seed", "4", "-i", d("draft.jsonl"), "-o", d(f"rm-{name}.jsonl")])
        run(["revise", *m, "--seed", "6", "-i", d(f"rm-{name}.jsonl"),
             "-o", d(f"rv-{name}.jsonl")])  # fmt: skip
    run(["revise", *m, "--block", "8", "--first-hitting", "--seed", "7",
         "-i", d("rm-snapshot.jsonl"), "-o", d("rv-block8.jsonl")])  # fmt: skip
    run(["generate", *m, "-n", "3", "--stages", "4,8,full", "--gammas", "0.5,0.25",
         "--steps-per-block", "2", "--seed", "8", "-o", d("gen.jsonl")])  # fmt: skip
    sets = [d("draft.jsonl"), d("rv-snapshot.jsonl"), d("rv-masked.jsonl"), d("gen.jsonl")]
    run(["eval", "genppl", *sets, "--evaluator", "oracle", "--data", str(data),
         "--floor-samples", "64", "--device", "cpu", "--out", d("genppl.json")])  # fmt: skip
    run(["eval", "genppl", d("draft.jsonl"), "--evaluator", str(rundir), "--data", str(data),
         "--device", "cpu", "--per-file", "--out", d("genppl-sbd.json")])  # fmt: skip
    run(["eval", "ppl", "-m", str(rundir), "--data", str(data), "--block", "4", "--mc", "2",
         "--device", "cpu", "--out", d("ppl.json")])  # fmt: skip
    out: dict[str, Any] = {}
    for path in sorted(root.glob("*.jsonl")):
        out[path.name] = records(path)
    for name in ("genppl.json", "genppl-sbd.json", "ppl.json"):
        out[name] = records(root / name)  # one JSON summary per line
    metrics = [json.loads(x) for x in (rundir / "metrics.jsonl").read_text().splitlines() if x]
    out["metrics"] = [strip(m) for m in metrics]
    return out


def test_chain_matches_the_golden_file(chain):
    if os.environ.get("SBD_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(chain, indent=1, sort_keys=True) + "\n")
    golden = json.loads(GOLDEN.read_text())
    assert sorted(chain) == sorted(golden)
    for name in golden:
        close(chain[name], golden[name], name)


def test_golden_file_covers_every_stage_kind():
    golden = json.loads(GOLDEN.read_text())
    strategies = {
        rec["stages"][1]["strategy"]
        for name, recs in golden.items()
        if name.startswith("rm-")
        for rec in recs
    }
    assert strategies == {"snapshot", "random", "posthoc", "masked"}
    stages = [s["name"] for s in golden["gen.jsonl"][0]["stages"]]
    assert stages == ["draft", "remask", "revise", "remask", "revise"]
    assert all(rec["masked"] == [] for rec in golden["rv-masked.jsonl"])

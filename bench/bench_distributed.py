"""Benchmark multi-process drafting: `sbd draft` of 64 records in one process vs two
processes under torchrun (gloo, sbdcli.distributed), records per second, side by side in
one run on one machine.

Random weights of the bench_sampler shape (speed does not depend on them). Every launch is
timed end to end (process start, model load, drafting, writing) and by its drafting alone
(the records' measured draft seconds); the outputs of all launches are checked identical
but for the seconds. Writes the section "distributed" of docs/benchmarks.md (`--write`).

    python -m bench.bench_distributed --write
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench._report import machine, write_section
from bench.bench_sampler import build
from bench.timer import timed
from sbdcli.evaluate import markdown_grid
from sbdcli.model.checkpoint import save_sbd_model

LAUNCHES = (("1 process x 1 thread", 1, 1), ("1 process x 2 threads", 1, 2),
            ("2 processes x 1 thread", 2, 1))  # fmt: skip
"""(name, processes, torch threads per process) of every timed launch."""


def make_run(root: Path, shape: str, length: int) -> Path:
    model = build(shape, 66, length, "cpu")
    run = root / "run"
    run.mkdir()
    save_sbd_model(model, run / "model.safetensors", {"model_config": model.config.to_dict()})
    return run


HEADER = ("launch", "wall s", "records/s (end to end)", "x", "records/s (drafting)", "x")


def launch(run: Path, out: Path, procs: int, threads: int, args: list[str]) -> float:
    """Wall-clock seconds of one `sbd draft` launch."""
    cmd = [sys.executable, "-m", "sbdcli", "draft", "-m", str(run), "-o", str(out), *args]
    if procs > 1:
        runner = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd = [*runner, "--nproc_per_node", str(procs), "-m", "sbdcli", *cmd[3:]]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    return timed(lambda: subprocess.run(cmd, env=env, check=True, capture_output=True))[0]


def records(path: Path) -> tuple[list[dict], float]:
    """The records without seconds, and their summed draft seconds."""
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    busy = sum(r["stages"][0]["seconds"] for r in recs)
    for r in recs:
        r["stages"] = [{k: v for k, v in s.items() if k != "seconds"} for s in r["stages"]]
    return recs, busy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="6L-d384")
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    ap.add_argument("--note", default="", help="a line about the machine's load")
    a = ap.parse_args()
    args = ["-n", str(a.n), "--length", str(a.length), "--batch-size", str(a.batch_size)]
    rows, first = [], None
    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(Path(tmp), a.shape, a.length)
        for name, procs, threads in LAUNCHES:
            out = Path(tmp) / f"{procs}-{threads}.jsonl"
            wall = launch(run, out, procs, threads, args)
            recs, busy = records(out)
            first = recs if first is None else first
            assert recs == first, f"{name}: records differ from the first launch's"
            rows.append((name, wall, a.n / wall, a.n / (busy / procs)))
    base = rows[0][2], rows[0][3]
    cells = [
        (name, f"{wall:.1f}", f"{rate:.2f}", f"{rate / base[0]:.2f}", f"{draft:.2f}",
         f"{draft / base[1]:.2f}")
        for name, wall, rate, draft in rows
    ]  # fmt: skip
    lines = [
        f"`sbd draft -n {a.n} --length {a.length} --batch-size {a.batch_size}` "
        f"(block 4, shape {a.shape}, random weights), {machine()}. {a.note}".strip(),
        "",
        *markdown_grid(HEADER, cells, "lrrrrr").splitlines(),
    ]
    lines += [
        "",
        "End to end includes process start and model load (paid once per process); "
        "drafting is n / (summed per-record draft seconds / processes). "
        "All launches wrote the same records (but the seconds).",
    ]
    table = "\n".join(lines)
    print(table)
    if a.write:
        cmd = "python -m bench.bench_distributed --write"
        write_section("distributed", f"## Multi-process drafting (`{cmd}`)\n\n{table}")


if __name__ == "__main__":
    main()

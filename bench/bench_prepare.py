"""Benchmark `sbd prepare`: throughput with the GPT-2 tokenizer and peak memory vs corpus size.

Corpus: ../shared/data/tinyshakespeare.txt repeated 20x (~22 MB, ~144k short documents
split on blank lines) and 200x (~220 MB), written to a temporary directory and deleted.
1. Tokenize only, in-process: a plain Python loop calling `Tokenizer.encode` per document,
   and `encode_batch_fast` over batches (context), on documents already in memory.
2. The whole `prepare` (read, split, tokenize, pack, write shards) in-process, timed
   around `sbdcli.data.prepare_text` (torch already imported), with and without worker
   processes. Steps 1 and 2 run round-robin, best of 3 rounds each.
3. Peak RSS of `python -m sbdcli prepare` in a child process at both corpus sizes, with
   the default shard size and with smaller shards, read via getrusage(RUSAGE_CHILDREN)
   in a fresh wrapper process per run.
Tokens/s counts document tokens (EOS excluded) for every line, so the numbers compare.

Run: python -m bench.bench_prepare [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TOKENIZER = SHARED / "gpt2-tokenizer" / "tokenizer.json"

from bench._report import machine, write_section  # noqa: E402
from bench.timer import timed  # noqa: E402
from sbdcli.evaluate import markdown_grid  # noqa: E402

WRAPPER = """
import json, resource, subprocess, sys
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
if proc.returncode != 0:
    sys.exit(proc.stderr)
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
print(json.dumps({"rss_mib": rss / 1024}))
"""
"""Runs a command in a child and prints the child's peak RSS (the wall clock is timed by
the caller, so it includes this wrapper's interpreter start, ~0.03 s)."""


def make_corpus(directory: Path, copies: int) -> Path:
    """tinyshakespeare repeated `copies` times; a blank line between copies."""
    text = (SHARED / "tinyshakespeare.txt").read_text(encoding="utf-8").strip("\n")
    path = directory / f"shakespeare-x{copies}.txt"
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(copies):
            handle.write(text + "\n\n")
    return path


def throughput(corpus: Path, out: Path, reps: int) -> dict[str, dict[str, float]]:
    """Tokens/s (wall) and tokens per CPU-second of each method, best of `reps` rounds.

    The methods run round-robin (loop, batch, prepare, prepare --workers 2, loop, ...) so
    that all of them meet the same background load on a shared machine.
    """
    import torch  # noqa: F401  (imported before timing, like a running `sbd`)
    from tokenizers import Tokenizer

    from sbdcli.data import prepare_text
    from sbdcli.data.sources import TextFiles

    docs = list(TextFiles([str(corpus)]).documents())
    tok = Tokenizer.from_file(str(TOKENIZER))

    def loop() -> int:
        return sum(len(tok.encode(d, add_special_tokens=False).ids) for d in docs)

    def batched() -> int:
        total = 0
        for i in range(0, len(docs), 4096):
            total += sum(len(e.ids) for e in tok.encode_batch_fast(docs[i : i + 4096]))
        return total

    def prepare(workers: int) -> int:
        m = prepare_text(out, TextFiles([str(corpus)]), str(TOKENIZER), 1024, workers=workers)
        return sum(m["stream_tokens"].values()) - sum(m["documents"].values())  # no EOS

    methods = {"loop": loop, "batch": batched, "prepare": lambda: prepare(1)}
    methods["workers2"] = lambda: prepare(2)
    best: dict[str, dict[str, float]] = {}
    for _ in range(reps):
        for name, fn in methods.items():
            cpu = time.process_time()  # CPU seconds of every thread of this process
            wall, tokens = timed(fn)
            cpu = time.process_time() - cpu
            if name not in best or tokens / wall > best[name]["rate"]:
                best[name] = {"rate": tokens / wall, "cpu": tokens / cpu, "tokens": tokens}
    assert len({b["tokens"] for b in best.values()}) == 1, "methods disagree on token counts"
    best["loop"]["docs"] = len(docs)
    return best


def peak_rss(corpus: Path, out: Path, shard_tokens: int | None) -> dict[str, float]:
    """Peak RSS and wall time of `python -m sbdcli prepare` in a child process."""
    cmd = [sys.executable, "-m", "sbdcli", "prepare", "--text", str(corpus)]
    cmd += ["--tokenizer", str(TOKENIZER), "--out", str(out)]
    if shard_tokens is not None:
        cmd += ["--shard-tokens", str(shard_tokens)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    wrapped = [sys.executable, "-c", WRAPPER, *cmd]
    wall, proc = timed(lambda: subprocess.run(wrapped, capture_output=True, text=True, env=env))
    if proc.returncode != 0:
        raise SystemExit(f"prepare failed: {proc.stderr}")
    result = {**json.loads(proc.stdout), "wall": wall}
    manifest = json.loads((out / "manifest.json").read_text())
    result["tokens"] = sum(manifest["stream_tokens"].values()) - sum(manifest["documents"].values())
    result["shards"] = len(manifest["shards"]["train"]) + len(manifest["shards"]["val"])
    return result


def baseline_rss() -> float:
    """Peak RSS of a child that only imports what `sbd prepare` imports."""
    code = "import torch, tokenizers, numpy, sbdcli.data, sbdcli.cli"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, "-c", WRAPPER, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(proc.stdout)["rss_mib"]


METHODS_HEADER = ("what (in-process)", "tokens/s (wall)", "vs loop", "tokens per CPU-second")
MEMORY_HEADER = ("corpus", "--shard-tokens", "shards", "peak RSS", "wall (CLI)", "tokens/s (CLI)")


def memory_cells(mem: list, sizes: dict) -> list[tuple[str, ...]]:
    """One row per (corpus size, shard size) of the memory table."""
    return [
        (f"{sizes[size][1]:.0f} MB", "default (16.8M)" if shard is None else f"{shard / 1e6:.1f}M",
         str(r["shards"]), f"{r['rss_mib']:.0f} MiB", f"{r['wall']:.1f} s",
         f"{r['tokens'] / r['wall'] / 1e6:.2f}M")
        for size, shard, r in mem
    ]  # fmt: skip


def report(sizes: dict, speed: dict, mem: list, base: float, cmd: str) -> str:
    copies, small_mb = sizes["small"]
    loop, batch, prep, pool = (speed[k] for k in ("loop", "batch", "prepare", "workers2"))
    speedup = prep["rate"] / loop["rate"]
    methods = [
        ("Python loop, `Tokenizer.encode` per document (tokenize only)",
         f"{loop['rate'] / 1e6:.2f}M", "1.00x", f"{loop['cpu'] / 1e6:.2f}M"),
        ("`encode_batch_fast`, 4096 docs per call (tokenize only)", f"{batch['rate'] / 1e6:.2f}M",
         f"{batch['rate'] / loop['rate']:.2f}x", f"{batch['cpu'] / 1e6:.2f}M"),
        ("whole `prepare`: read, split, tokenize, pack, write shards",
         f"{prep['rate'] / 1e6:.2f}M", f"**{speedup:.2f}x**", f"{prep['cpu'] / 1e6:.2f}M"),
        ("whole `prepare --workers 2` (two tokenizer processes)", f"{pool['rate'] / 1e6:.2f}M",
         f"{pool['rate'] / loop['rate']:.2f}x", "(in child processes)"),
    ]  # fmt: skip
    lines = [
        "## prepare: GPT-2 tokenizer throughput and memory",
        "",
        f"Command: `{cmd}`  ",
        f"Machine: {machine()}  ",
        "Numbers are from a **shared 2-core machine** (other jobs were running: 1-min load "
        f"average {sizes['load'][0]:.1f} at the start, {sizes['load'][1]:.1f} at the end): "
        "expect noise. The in-process methods ran round-robin, best of "
        f"{sizes['reps']} rounds each.",
        "",
        f"Corpus: tinyshakespeare x{copies} = {small_mb:.1f} MB, {loop['docs']:,} documents "
        f"(split on blank lines), {loop['tokens']:,} GPT-2 tokens. Tokens/s count document "
        "tokens (EOS excluded) on every line.",
        "",
        *markdown_grid(METHODS_HEADER, methods, "lrrr").splitlines(),
        "",
        "Tokens per CPU-second (all threads) is the cost side: the whole prepare spends "
        f"{batch['cpu'] / prep['cpu']:.2f}x the CPU per token of batched tokenization "
        f"alone and {loop['cpu'] / prep['cpu']:.2f}x that of the loop. Its wall-clock "
        "gain over the loop can only come from a second free core (the Rust tokenizer "
        "threads, with reading and packing overlapped in another thread), so it shrinks to "
        "nothing when other jobs hold the cores.",
        "",
        f"Target: whole prepare >= 1.5x the loop: **{'met' if speedup >= 1.5 else 'NOT met'}** "
        f"({speedup:.2f}x).",
        "",
        "Peak RSS of `python -m sbdcli prepare --text CORPUS --tokenizer gpt2 "
        "[--shard-tokens N]` (child process, includes interpreter start and imports; "
        f"importing alone peaks at {base:.0f} MiB):",
        "",
        *markdown_grid(MEMORY_HEADER, memory_cells(mem, sizes), "lrrrrr").splitlines(),
    ]
    lines += [
        "",
        "Memory is bounded by one tokenization batch (~1M characters), one shard buffer "
        "(int32) plus the bytes safetensors builds to write it, and any --val-docs held back; "
        "not by the corpus. A 10x larger corpus costs no more memory once it fills a shard. "
        f"Worker processes (`--workers 2`) ran at {pool['rate'] / prep['rate']:.2f}x the "
        "default in-process path in this run; under heavier load, and on small corpora where "
        "starting the processes dominates, they ran at 0.5-0.7x of it during development, so "
        "`--workers` defaults to 1 (the Rust tokenizer already uses every core). More "
        "workers are for many-core machines, where one Python thread converting every token "
        "id to an array would become the limit.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2x and 4x copies, one rep")
    args = parser.parse_args()
    if not TOKENIZER.is_file():
        raise SystemExit(f"needs {TOKENIZER}")
    small_copies, big_copies, reps = (2, 4, 1) if args.quick else (20, 200, 3)
    small_shard = 1 << 22
    with tempfile.TemporaryDirectory(prefix="sbd-bench-prepare-") as tmp:
        d = Path(tmp)
        load_start = os.getloadavg()[0]
        paths = {"small": make_corpus(d, small_copies), "big": make_corpus(d, big_copies)}
        sizes: dict = {
            "small": (small_copies, paths["small"].stat().st_size / 1e6),
            "big": (big_copies, paths["big"].stat().st_size / 1e6),
        }
        speed = throughput(paths["small"], d / "out", reps)
        mem = [
            (size, shard, peak_rss(paths[size], d / "cli-out", shard))
            for shard in (None, small_shard)
            for size in ("small", "big")
        ]
        base = baseline_rss()
    sizes["load"] = (load_start, os.getloadavg()[0])
    sizes["reps"] = reps
    cmd = "python -m bench.bench_prepare" + (" --quick" if args.quick else "")
    body = report(sizes, speed, mem, base, cmd)
    print(body)
    if not args.quick:
        write_section("prepare", body)


if __name__ == "__main__":
    main()

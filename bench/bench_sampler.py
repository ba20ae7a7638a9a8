"""Benchmark the sampler: draft tokens/s with vs without the KV cache, the cost of a revise
call vs a cached draft call, and a 2-tokens-per-call draft vs an autoregressive GPT-2 of
the same width and depth decoding with its KV cache (transformers `generate`).

Random weights (speed does not depend on them), side by side in one run on one machine.
Writes the section "sampler" of docs/benchmarks.md (`--write`) and prints the table.

    python bench/bench_sampler.py --write                       # default grid, CPU
    python bench/bench_sampler.py --device cuda --out gpu.md    # a table to --include later
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sbdcli.config import ModelConfig
from sbdcli.diffusion import remask as rm
from sbdcli.diffusion import sampler as sp
from sbdcli.model import Denoiser

SHAPES = {
    "tiny": {"n_layers": 2, "d_model": 128, "n_heads": 4, "cond_dim": 64},
    "6L-d384": {"n_layers": 6, "d_model": 384, "n_heads": 6, "cond_dim": 128},
}


def build(shape: str, vocab: int, length: int, device: str) -> Denoiser:
    cfg = ModelConfig(
        vocab_size=vocab,
        mask_id=vocab - 1,
        seq_len=length,
        dropout=0.0,
        bos_id=vocab - 2,
        **SHAPES[shape],
    )
    model = Denoiser(cfg)
    with torch.no_grad():  # non-zero output layer so logits vary
        for p in model.output_layer.parameters():
            p.normal_(0, 0.02)
    return model.to(device).eval()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Any, device: str) -> tuple[float, Any]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def gens(n: int, stage: str, device: str) -> list[Any]:
    return [sp.make_generator(0, stage, 0, str(i), device) for i in range(n)]


def draft(model: Denoiser, n: int, length: int, device: str, **kw: Any) -> tuple[float, Any]:
    cfg = sp.SamplerConfig(block_size=4, **kw)
    bos = model.config.bos_id
    return timed(lambda: sp.draft(model, [[bos]] * n, length, cfg, gens(n, "d", device)), device)


def revise(model: Denoiser, out: Any, device: str, per_call: int | None) -> tuple[float, int]:
    """Snapshot remask gamma 0.25, then one full bidirectional revise block."""
    n, length = out.tokens.shape
    elig = rm.eligible_mask(length, 1)
    keys = torch.zeros(length, dtype=torch.float64)
    masked = torch.zeros(n, length, dtype=torch.bool)
    for i in range(n):
        masked[i, rm.select_lowest(out.confidence[i].cpu(), elig, 0.25, keys)] = True
    m = int(masked[0].sum())
    steps = None if per_call is None else math.ceil(m / per_call)
    cfg = sp.SamplerConfig(block_size=0, steps_per_block=steps)
    secs, res = timed(
        lambda: sp.revise(model, out.tokens, masked.to(device), cfg, gens(n, "r", device)), device
    )
    return secs, int(res.nfe.max())


def ar_tokens_per_s(shape: str, vocab: int, n: int, length: int, device: str) -> float | None:
    """transformers GPT-2 (random weights, same width/depth) sampling with its KV cache."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        return None
    s = SHAPES[shape]
    cfg = GPT2Config(
        vocab_size=vocab,
        n_positions=length,
        n_embd=s["d_model"],
        n_layer=s["n_layers"],
        n_head=s["n_heads"],
    )
    model = GPT2LMHeadModel(cfg).to(device).eval()
    ids = torch.full((n, 1), vocab - 2, dtype=torch.long, device=device)
    kw = dict(
        do_sample=True,
        top_p=0.9,
        top_k=0,
        max_new_tokens=length - 1,
        min_new_tokens=length - 1,
        pad_token_id=0,
        attention_mask=torch.ones_like(ids),
    )
    with torch.inference_mode():
        model.generate(ids, **{**kw, "max_new_tokens": 8, "min_new_tokens": 8})
        secs, _ = timed(lambda: model.generate(ids, **kw), device)
    return n * (length - 1) / secs


def row(shape: str, length: int, n: int, vocab: int, device: str, ar: bool) -> dict[str, Any]:
    model = build(shape, vocab, length, device)
    draft(model, n, min(length, 16), device)  # warm-up
    t_cache, out = draft(model, n, length, device)
    calls = int(out.nfe.max())
    t_plain, plain = draft(model, n, length, device, kv_cache=False)
    t_rev, rev_calls = revise(model, out, device, None)
    t_rev4, rev4_calls = revise(model, out, device, 4)
    t_two, two = draft(model, n, length, device, steps_per_block=2)
    tokens = n * (length - 1)
    result = {
        "model": shape,
        "L": length,
        "n": n,
        "vocab": vocab,
        "same_tokens": bool(torch.equal(out.tokens, plain.tokens)),
        "cache_tok_s": tokens / t_cache,
        "nocache_tok_s": tokens / t_plain,
        "speedup": t_plain / t_cache,
        "draft_ms_call": 1000 * t_cache / calls,
        "revise_calls": rev_calls,
        "revise_ms_call": 1000 * t_rev / rev_calls,
        "revise_vs_draft": t_rev / t_cache,
        "revise4_calls": rev4_calls,
        "revise4_vs_draft": t_rev4 / t_cache,
        "two_tok_s": tokens / t_two,
        "two_calls": int(two.nfe.max()),
    }
    result["revise_call_ratio"] = result["revise_ms_call"] / result["draft_ms_call"]
    if ar:
        ar_rate = ar_tokens_per_s(shape, vocab, n, length, device)
        result["ar_tok_s"] = ar_rate
        result["two_vs_ar"] = None if ar_rate is None else result["two_tok_s"] / ar_rate
    return result


def fmt(x: Any, digits: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "NO"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return str(x)


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| model | L | n | tok/s cached | tok/s no cache | cache speedup | same tokens | "
        "ms/draft call | ms/revise call | revise/draft call | revise calls | "
        "revise/draft time (1 tok/call) | (4 tok/call) | tok/s 2/call | tok/s AR GPT-2 "
        "| 2/call vs AR |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            "| "
            + " | ".join(
                [
                    r["model"],
                    str(r["L"]),
                    str(r["n"]),
                    fmt(r["cache_tok_s"], 0),
                    fmt(r["nocache_tok_s"], 0),
                    fmt(r["speedup"], 2) + "x",
                    fmt(r["same_tokens"]),
                    fmt(r["draft_ms_call"], 2),
                    fmt(r["revise_ms_call"], 2),
                    fmt(r["revise_call_ratio"], 2) + "x",
                    str(r["revise_calls"]),
                    fmt(r["revise_vs_draft"], 2) + "x",
                    fmt(r["revise4_vs_draft"], 2) + "x",
                    fmt(r["two_tok_s"], 0),
                    fmt(r.get("ar_tok_s"), 0),
                    fmt(r.get("two_vs_ar"), 2) + ("x" if r.get("two_vs_ar") else ""),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def parse_grid(text: str) -> list[tuple[str, int, int]]:
    """'tiny:128:8,6L-d384:512:2' -> [(shape, L, n), ...]."""
    grid = []
    for item in text.split(","):
        shape, length, n = item.split(":")
        grid.append((shape, int(length), int(n)))
    return grid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--grid",
        default="tiny:128:8,tiny:512:8,6L-d384:128:4,6L-d384:512:2",
        help="model:L:n items",
    )
    ap.add_argument("--vocab", type=int, default=66, help="vocabulary incl. BOS and MASK")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--no-ar", action="store_true", help="skip the transformers GPT-2 row")
    ap.add_argument("--jsonl", help="append raw rows here as they finish")
    ap.add_argument("--out", help="write this run's markdown table here")
    ap.add_argument("--include", nargs="*", default=[], help="markdown files to append")
    ap.add_argument("--write", action="store_true", help="write docs/benchmarks.md section")
    ap.add_argument("--render", help="only render rows saved by --jsonl (no measurement)")
    ap.add_argument("--machine", help="machine line for --render (default: this one)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _report import machine, write_section

    if args.render:
        rows = [json.loads(line) for line in Path(args.render).read_text().splitlines()]
        body = f"Machine: {args.machine or machine()}.\n\n{table(rows)}\n"
        if args.out:
            Path(args.out).write_text(body)
        print(body)
        return
    rows = []
    for shape, length, n in parse_grid(args.grid):
        r = row(shape, length, n, args.vocab, args.device, not args.no_ar)
        print(json.dumps(r), flush=True)
        rows.append(r)
        if args.jsonl:
            with open(args.jsonl, "a") as f:
                f.write(json.dumps(r) + "\n")
    command = "python bench/bench_sampler.py " + " ".join(sys.argv[1:])
    body = (
        f"Machine: {machine()}; device {args.device}; vocab {args.vocab}; "
        f"block 4; top-p 0.9; float64 sampling.\n\nCommand: `{command}`\n\n{table(rows)}\n"
    )
    if args.out:
        Path(args.out).write_text(body)
    print(body)
    if args.write:
        write_section(
            "sampler", intro() + body + "".join("\n" + Path(p).read_text() for p in args.include)
        )


def intro() -> str:
    return (
        "## Sampler (`bench/bench_sampler.py`)\n\n"
        "Random-weight denoisers, batch of n samples, draft block 4, one token per call "
        "unless stated. *tok/s* = n (L - 1) / wall-clock. *cache speedup* = time without / "
        "with the exact KV cache (same tokens: the two paths sampled identical sequences). "
        "*revise* = snapshot remask gamma 0.25 then one full bidirectional block, one token "
        "per call (or 4 tokens per call); its time is relative to the cached draft. "
        "*2/call* = draft revealing 2 tokens per call; *AR GPT-2* = transformers GPT-2 of "
        "the same width and depth, random weights, `generate` with its KV cache, top-p 0.9.\n\n"
    )


if __name__ == "__main__":
    main()

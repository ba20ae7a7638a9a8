"""Benchmark the sampler: draft tokens/s with vs without the KV cache, the cost of a revise
call vs a cached draft call, and a 2-tokens-per-call draft vs an autoregressive GPT-2 of
the same width and depth decoding with its KV cache (transformers `generate`); and, on a
trained model of the synthetic language, threshold (adaptive) drafts against one token per
call: calls per sample, seconds and oracle Gen PPL (`--trained RUN --data DIR`); and the
approximate revise cache (`--approx`: `--cache approx:R` against the exact
revise and the cached draft, on random weights for time and, with `--trained`, on a
trained model for oracle Gen PPL).

Random weights for the speed grid (speed does not depend on them), side by side in one run
on one machine. Writes the section "sampler" (or, with --trained, "sampler-threshold") of
docs/benchmarks.md (`--write`) and prints the table.

    python -m bench.bench_sampler --write                       # default grid, CPU
    python -m bench.bench_sampler --device cuda --out gpu.md    # a table to --include later
    python -m bench.bench_sampler --trained RUN --data DATA --write   # threshold rows
    python -m bench.bench_sampler --approx --grid tiny:256:8,tiny:1024:4 \
        --trained RUN --data DATA --write                          # approximate revise rows
    python -m bench.bench_sampler --paper --lengths 128,512 --write   # paper shape vs GPT-2
    python -m bench.bench_sampler --long --lengths 1024,2048,4096 --write  # long-L calls
    python -m bench.bench_sampler --calls --lengths 128,512 --repeats 5 --write  # one call

The paper-shape rows (`--paper`, `--long`) live in bench/paper_shape.py.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

from bench.timer import best_seconds, timed
from sbdcli.config import ModelConfig, legacy_sampler
from sbdcli.diffusion import remask as rm
from sbdcli.diffusion import sampler as sp
from sbdcli.evaluate import markdown_grid
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


def gens(n: int, stage: str, device: str) -> list[Any]:
    return [sp.make_generator(0, stage, 0, str(i), device) for i in range(n)]


def draft(model: Denoiser, n: int, length: int, device: str, **kw: Any) -> tuple[float, Any]:
    cfg = legacy_sampler(block_size=4, **kw)
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
    cfg = legacy_sampler(block_size=0, steps_per_block=steps)
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


# --------------------------------------------------------------------------- approx rows
APPROX_SETTINGS: list[tuple[str, dict[str, Any]]] = [
    ("exact", {}),
    ("approx R 2", {"cache": "approx", "refresh": 2}),
    ("approx R 4", {"cache": "approx", "refresh": 4}),
    ("approx R 8", {"cache": "approx", "refresh": 8}),
]
"""Revise settings of the approximate-cache rows (one global block, one token per call)."""


def approx_settings(taus: list[float]) -> list[tuple[str, dict[str, Any]]]:
    """The approximate-cache settings, then exact and approx R 4 revises with each TAU."""
    rows = list(APPROX_SETTINGS)
    for tau in taus:
        rows += [
            (f"exact, threshold {tau:g}", {"threshold": tau}),
            (f"approx R 4, threshold {tau:g}", {"cache": "approx", "refresh": 4, "threshold": tau}),
        ]
    return rows


def snapshot_mask(out: Any, gamma: float = 0.25) -> torch.Tensor:
    """The `gamma` lowest-confidence generated positions of every sample (snapshot remask)."""
    n, length = out.tokens.shape
    elig = rm.eligible_mask(length, 1)
    keys = torch.zeros(length, dtype=torch.float64)
    masked = torch.zeros(n, length, dtype=torch.bool)
    for i in range(n):
        masked[i, rm.select_lowest(out.confidence[i].cpu(), elig, gamma, keys)] = True
    return masked


def approx_speed_row(
    shape: str, length: int, n: int, vocab: int, device: str, taus: list[float], repeats: int
) -> list[dict[str, Any]]:
    """Random weights: the cached one-token-per-call draft, then revises of its gamma 0.25
    snapshot mask in one global block, every setting timed `repeats` times interleaved
    (the fastest kept). Quality is measured on a trained model (`approx_quality_rows`)."""
    model = build(shape, vocab, length, device)
    draft(model, n, min(length, 16), device)  # warm-up
    settings = approx_settings(taus)
    best: dict[str, float] = {}
    outs: dict[str, Any] = {}
    out = None
    for _ in range(repeats):
        secs, out = draft(model, n, length, device)
        best["draft"] = min(best.get("draft", math.inf), secs)
        masked = snapshot_mask(out).to(device)
        for name, kw in settings:
            cfg = legacy_sampler(block_size=0, **kw)
            job = functools.partial(sp.revise, model, out.tokens, masked, cfg, gens(n, "r", device))
            secs, outs[name] = timed(job, device)
            best[name] = min(best.get(name, math.inf), secs)
    rows = []
    moved = snapshot_mask(out)
    for name, _ in settings:
        res = outs[name]
        rows.append(
            {
                "model": shape,
                "L": length,
                "n": n,
                "setting": name,
                "masked": int(moved[0].sum()),
                "calls": int(res.nfe.max()),
                "secs": best[name],
                "vs_exact": best[name] / best["exact"],
                "vs_draft": best[name] / best["draft"],
                "draft_secs": best["draft"],
            }
        )
    return rows


APPROX_SPEED_HEADER = ("model", "L", "n", "revise", "masked", "calls", "s",
                       "time vs exact revise", "time vs cached draft")  # fmt: skip


def approx_speed_table(rows: list[dict[str, Any]]) -> str:
    cells = [
        [
            r["model"],
            str(r["L"]),
            str(r["n"]),
            r["setting"],
            str(r["masked"]),
            str(r["calls"]),
            fmt(r["secs"], 3),
            fmt(r["vs_exact"], 3) + "x",
            fmt(r["vs_draft"], 3) + "x",
        ]
        for r in rows
    ]
    return markdown_grid(APPROX_SPEED_HEADER, cells)


def approx_quality_rows(
    run: str, data: str, n: int, repeats: int, taus: list[float], device: str
) -> list[dict[str, Any]]:
    """A trained model: drafts (block 4, one token per call), snapshot remask gamma 0.25,
    then every revise setting on the same records; oracle Gen PPL and seconds per setting."""
    from sbdcli import pipeline as pl
    from sbdcli.config import RemaskConfig
    from sbdcli.evaluate.judges import OracleJudge
    from sbdcli.evaluate.metrics import unigram_entropy

    ref = pl.load_model_ref(run, device)
    judge = OracleJudge(Path(data))
    length = ref.model.config.seq_len
    settings = [("draft only", None), *approx_settings(taus)]
    acc = {
        name: {"secs": 0.0, **{k: [] for k in ("nll", "ntok", "calls", "ent")}}
        for name, _ in settings
    }
    for seed in range(repeats):
        cfg = legacy_sampler(block_size=4)
        job = functools.partial(
            pl.draft_batch, ref, pl.draft_prompts(ref, n, seed, None), length, cfg, seed
        )
        draft_secs, recs = timed(job, device)
        masked = pl.remask_batch(recs, RemaskConfig(gamma=0.25, seed=seed))
        for name, kw in settings:
            if kw is None:
                out, secs = recs, draft_secs
            else:
                rcfg = legacy_sampler(block_size=0, **kw)
                secs, out = timed(
                    functools.partial(pl.revise_batch, masked, ref, rcfg, seed), device
                )
            nll, ntok = _oracle_scores(judge, out)
            a = acc[name]
            a["secs"] += secs
            a["nll"] += nll
            a["ntok"] += ntok
            a["calls"] += [r["stages"][-1]["nfe"] for r in out]
            a["ent"] += [unigram_entropy(r["tokens"][1:]) for r in out]
    rows = []
    for name, _ in settings:
        a = acc[name]
        count = len(a["nll"])
        per = [math.exp(x / t) for x, t in zip(a["nll"], a["ntok"], strict=True)]
        rows.append(
            {
                "setting": name,
                "L": length,
                "samples": count,
                "calls": sum(a["calls"]) / count if name != "draft only" else None,
                "s_per_sample": a["secs"] / count,
                "genppl": sum(per) / count,
                "entropy": sum(a["ent"]) / count,
            }
        )
    exact = next(r for r in rows if r["setting"] == "exact")
    for r in rows:
        r["genppl_vs_exact"] = r["genppl"] / exact["genppl"]
        r["time_vs_exact"] = r["s_per_sample"] / exact["s_per_sample"]
        r["time_vs_draft"] = r["s_per_sample"] / rows[0]["s_per_sample"]
    return rows


APPROX_QUALITY_HEADER = ("revise", "L", "samples", "revise calls/sample", "s/sample",
                         "time vs exact", "time vs draft", "Gen PPL (per-sample mean)",
                         "vs exact", "entropy")  # fmt: skip


def approx_quality_table(rows: list[dict[str, Any]]) -> str:
    cells = [
        [
            r["setting"],
            str(r["L"]),
            str(r["samples"]),
            fmt(r["calls"], 1),
            fmt(r["s_per_sample"], 4),
            fmt(r["time_vs_exact"], 3) + "x",
            fmt(r["time_vs_draft"], 3) + "x",
            fmt(r["genppl"], 3),
            fmt(r["genppl_vs_exact"], 3) + "x",
            fmt(r["entropy"], 3),
        ]
        for r in rows
    ]
    return markdown_grid(APPROX_QUALITY_HEADER, cells)


def _approx_main(args: argparse.Namespace, machine: Any, write_section: Any) -> None:
    taus = [float(x) for x in args.taus.split(",")] if args.taus else []
    command = "python -m bench.bench_sampler " + " ".join(sys.argv[1:])
    body = f"Machine: {machine()}; device {args.device}; top-p 0.9; float64 sampling.\n\n"
    body += f"Command: `{command}`\n\n"
    speed: list[dict[str, Any]] = []
    for shape, length, n in parse_grid(args.grid):
        speed += approx_speed_row(shape, length, n, args.vocab, args.device, taus, args.repeats)
        for r in speed[-len(approx_settings(taus)) :]:
            print(json.dumps(r), flush=True)
    body += "Random weights (time):\n\n" + approx_speed_table(speed) + "\n"
    if args.trained:
        quality = approx_quality_rows(
            args.trained, args.data, args.samples, args.repeats, taus, args.device
        )
        for r in quality:
            print(json.dumps(r), flush=True)
        body += "\nTrained model (oracle Gen PPL):\n\n" + approx_quality_table(quality) + "\n"
    if args.out:
        Path(args.out).write_text(body)
    print(body)
    if args.write:
        write_section("sampler-approx", APPROX_INTRO + body)


APPROX_INTRO = (
    "## Approximate revise cache (`python -m bench.bench_sampler --approx`)\n\n"
    "Snapshot remask gamma 0.25 of a cached one-token-per-call draft (block 4), then one "
    "global revise block (`--block full`), one token per call unless a threshold is given. "
    "*exact* = `--cache exact` (every call runs all L positions); *approx R* = "
    "`--cache approx:R` (docs/sampling.md). Time rows: random weights (speed does not "
    "depend on them), the fastest of `--repeats` interleaved rounds, revise seconds "
    "against the exact revise and against the cached draft they revise. Gen PPL rows: a "
    "trained model, oracle perplexity, per-sample mean, every setting revising the same "
    "remasked drafts; s/sample = revise (or, for *draft only*, draft) wall-clock / samples; "
    "*time vs draft* = against the cached one-token-per-call draft of the same samples.\n\n"
)


# --------------------------------------------------------------------------- compile rows
CALLS_TIMED = 50
"""Network calls per timed round of the per-call measurement."""


def fixed_inputs(model: Denoiser, n: int, length: int, device: str) -> tuple[Any, ...]:
    """The inputs of one fixed-shape call half way through a cached draft (block 4): the
    previous block (clean, to be cached) and the current one, the cache filled to L/2,
    its other slots masked, exactly the shape `--compile` captures."""
    width, fill = 8, length // 2 - 8
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(model.config.vocab_size, (n, width), generator=gen).to(device)
    positions = torch.arange(fill, fill + width, device=device)
    cache = model.new_cache(n)
    valid = torch.arange(cache.max_len, device=device) < fill
    inner = torch.ones(width, width, dtype=torch.bool, device=device)
    mask = torch.cat((valid[None].expand(width, -1), inner), dim=1)
    return tokens, positions, mask, cache.k, cache.v


def per_call_ms(call: Any, inputs: tuple[Any, ...], device: str, repeats: int) -> float:
    """Fastest of `repeats` rounds of `CALLS_TIMED` calls, in ms per call."""

    def run() -> None:
        for _ in range(CALLS_TIMED):
            call(*inputs)

    return 1000 * best_seconds(run, repeats, device) / CALLS_TIMED


def compile_row(
    shape: str, length: int, n: int, vocab: int, device: str, repeats: int
) -> dict[str, Any]:
    """The call `--compile` captures, timed on its own through the model's public
    `fixed_step`: eager, and compiled by torch.compile (dynamic=False; on CUDA mode
    reduce-overhead = CUDA graphs, as `--compile` runs it; on CPU inductor without graphs),
    beside the eager cached draft's mean ms per call. On CUDA also the draft itself with
    `compile` on (its first run compiling every input length) and whether it sampled the
    eager draft's tokens; on a CPU, where `--compile` is refused, whether the compiled
    call's logits match the eager call's."""
    model = build(shape, vocab, length, device)
    cuda = device.startswith("cuda")
    mode = "reduce-overhead" if cuda else "default"
    inputs = fixed_inputs(model, n, length, device)
    with torch.no_grad():
        captured = torch.compile(model.fixed_step, mode=mode, dynamic=False)
        compile_s, logits = timed(lambda: captured(*inputs)[0].clone(), device)
        same = bool(torch.allclose(logits, model.fixed_step(*inputs)[0], atol=1e-4))
        fixed = {
            "fixed shape, eager": per_call_ms(model.fixed_step, inputs, device, repeats),
            "fixed shape, compiled": per_call_ms(captured, inputs, device, repeats),
        }
    eager_s, eager = min((draft(model, n, length, device) for _ in range(repeats)), key=_first)
    calls = length - 1
    row = {"model": shape, "L": length, "n": n, "mode": mode, "compile_s": compile_s}
    row.update({f"{k} ms/call": v for k, v in fixed.items()}, same=same)
    row["eager ms/call"] = 1000 * eager_s / calls
    row["compiled_vs_eager"] = fixed["fixed shape, compiled"] / fixed["fixed shape, eager"]
    if cuda:  # the real `--compile` draft (public `compile`), first run compiling
        row["first_s"], first = draft(model, n, length, device, compile=True)
        best_s = min(draft(model, n, length, device, compile=True)[0] for _ in range(repeats))
        row["draft compiled ms/call"] = 1000 * best_s / calls
        row["same"] = same and bool(torch.equal(first.tokens, eager.tokens))
    return row


def _first(pair: tuple[float, Any]) -> float:
    return pair[0]


COMPILE_HEADER = ("model", "L", "n", "torch.compile mode", "compiling the call (s)",
                  "draft ms/call eager", "fixed-shape call ms eager",
                  "fixed-shape call ms compiled", "compiled vs eager call",
                  "draft ms/call compiled", "same output")  # fmt: skip


def compile_table(rows: list[dict[str, Any]]) -> str:
    cells = [
        [
            r["model"],
            str(r["L"]),
            str(r["n"]),
            r["mode"],
            fmt(r["compile_s"], 1),
            fmt(r["eager ms/call"], 2),
            fmt(r["fixed shape, eager ms/call"], 2),
            fmt(r["fixed shape, compiled ms/call"], 2),
            fmt(r["compiled_vs_eager"], 2) + "x",
            fmt(r.get("draft compiled ms/call"), 2),
            fmt(r["same"]),
        ]
        for r in rows
    ]
    return markdown_grid(COMPILE_HEADER, cells)


def _compile_main(args: argparse.Namespace, machine: Any, write_section: Any) -> None:
    rows = []
    for shape, length, n in parse_grid(args.grid):
        rows.append(compile_row(shape, length, n, args.vocab, args.device, args.repeats))
        print(json.dumps(rows[-1]), flush=True)
    command = "python -m bench.bench_sampler " + " ".join(sys.argv[1:])
    body = (
        f"Machine: {machine()}; device {args.device}; block 4; one token per call.\n\n"
        f"Command: `{command}`\n\n{compile_table(rows)}\n"
    )
    if args.out:
        Path(args.out).write_text(body)
    print(body)
    if args.write:
        write_section(f"sampler-compile-{args.device.split(':')[0]}", COMPILE_INTRO + body)


COMPILE_INTRO = (
    "## Captured draft call (`python -m bench.bench_sampler --compile`)\n\n"
    "Random weights, block 4, one token per call. *draft ms/call eager* = the cached draft as "
    "`sbd draft` runs it, wall-clock / calls. *fixed-shape call* = the call `--compile` "
    "captures, timed alone through the model's `fixed_step` on a call half way through a "
    "draft (previous block + current block, cache filled to L/2): it attends to the whole "
    "preallocated cache, invalid slots masked, so its shape never changes; run eagerly or "
    "compiled with torch.compile (dynamic=False), best of rounds of 50 calls. *compiling the "
    "call* = its first compiled call. *draft ms/call compiled* (CUDA only: `--compile` is "
    "refused elsewhere) = the draft with `compile` on. *same output* = the compiled call's "
    "logits match the eager call's (and on CUDA the compiled draft sampled the eager "
    "draft's tokens).\n\n"
)


# --------------------------------------------------------------------------- threshold rows
def _oracle_scores(judge: Any, recs: list[dict[str, Any]]) -> tuple[list[float], list[int]]:
    scores = judge.score(recs)
    return [float(x) for x in scores.nll], [int(x) for x in scores.ntok]


def threshold_rows(
    run: str, data: str, n: int, repeats: int, taus: list[float], block: int, device: str
) -> list[dict[str, Any]]:
    """One token per call vs `--threshold TAU` drafts of one trained model, side by side.

    Every repeat drafts n samples per setting (seeds 0..repeats-1, settings interleaved so
    the machine's load hits them alike); Gen PPL is over all n * repeats samples.
    """
    from sbdcli import pipeline as pl
    from sbdcli.evaluate.judges import OracleJudge
    from sbdcli.evaluate.metrics import unigram_entropy

    ref = pl.load_model_ref(run, device)
    judge = OracleJudge(Path(data))
    length = ref.model.config.seq_len
    settings: list[tuple[str, dict[str, Any]]] = [
        ("1 token/call", {}),
        ("1 token/call, confident", {"unmask": "confident"}),  # = threshold 1 here
    ]
    settings += [(f"threshold {tau:g}", {"threshold": tau}) for tau in taus]
    keys = ("calls", "nll", "ntok", "entropy")
    acc: dict[str, dict[str, Any]] = {
        name: {"secs": 0.0, **{k: [] for k in keys}} for name, _ in settings
    }
    for seed in range(repeats):
        for name, kw in settings:
            cfg = legacy_sampler(block_size=block, **kw)
            job = (ref, pl.draft_prompts(ref, n, seed, None), length, cfg, seed)
            secs, recs = timed(lambda job=job: pl.draft_batch(*job), device)
            nll, ntok = _oracle_scores(judge, recs)
            a = acc[name]
            a["secs"] += secs
            a["calls"] += [r["nfe"] for r in recs]
            a["nll"] += nll
            a["ntok"] += ntok
            a["entropy"] += [unigram_entropy(r["tokens"][1:]) for r in recs]
    rows = []
    for name, _ in settings:
        a = acc[name]
        count = len(a["calls"])
        per_sample = [math.exp(x / t) for x, t in zip(a["nll"], a["ntok"], strict=True)]
        rows.append(
            {
                "setting": name,
                "block": block,
                "L": length,
                "samples": count,
                "calls": sum(a["calls"]) / count,
                "s_per_sample": a["secs"] / count,
                "genppl": sum(per_sample) / count,
                "genppl_corpus": math.exp(sum(a["nll"]) / sum(a["ntok"])),
                "entropy": sum(a["entropy"]) / count,
            }
        )
    base = rows[0]
    for r in rows:
        r["fewer_calls"] = base["calls"] / r["calls"]
        r["time_ratio"] = r["s_per_sample"] / base["s_per_sample"]
        r["genppl_ratio"] = r["genppl"] / base["genppl"]
    return rows


THRESHOLD_HEADER = ("setting", "calls/sample", "fewer calls", "s/sample", "time vs 1/call",
                    "Gen PPL (per-sample mean)", "vs 1/call", "Gen PPL (corpus)",
                    "entropy")  # fmt: skip


def threshold_table(rows: list[dict[str, Any]]) -> str:
    cells = [
        [
            r["setting"],
            fmt(r["calls"], 1),
            fmt(r["fewer_calls"], 2) + "x",
            fmt(r["s_per_sample"], 4),
            fmt(r["time_ratio"], 2) + "x",
            fmt(r["genppl"], 3),
            fmt(r["genppl_ratio"], 3) + "x",
            fmt(r["genppl_corpus"], 3),
            fmt(r["entropy"], 3),
        ]
        for r in rows
    ]
    return markdown_grid(THRESHOLD_HEADER, cells)


def fmt(x: Any, digits: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "NO"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return str(x)


HEADER = ("model", "L", "n", "tok/s cached", "tok/s no cache", "cache speedup", "same tokens",
          "ms/draft call", "ms/revise call", "revise/draft call", "revise calls",
          "revise/draft time (1 tok/call)", "(4 tok/call)", "tok/s 2/call", "tok/s AR GPT-2",
          "2/call vs AR")  # fmt: skip


def table(rows: list[dict[str, Any]]) -> str:
    cells = [
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
        for r in rows
    ]
    return markdown_grid(HEADER, cells)


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
    ap.add_argument("--trained", help="a trained synthetic-language run: threshold rows")
    ap.add_argument("--data", help="its data directory (oracle.safetensors)")
    ap.add_argument("--taus", default="0.5,0.7,0.9", help="thresholds of the threshold rows")
    ap.add_argument("--samples", type=int, default=64, help="threshold rows: samples per draw")
    ap.add_argument("--repeats", type=int, default=2, help="threshold rows: draws per setting")
    ap.add_argument("--block", type=int, default=4, help="threshold rows: draft block size")
    ap.add_argument("--machine", help="machine line for --render (default: this one)")
    ap.add_argument("--approx", action="store_true", help="approximate revise cache rows")
    ap.add_argument("--compile", action="store_true", help="captured draft call rows")
    ap.add_argument("--paper", action="store_true", help="paper shape beside GPT-2 generate")
    ap.add_argument("--long", action="store_true", help="paper shape: long-L calls, peak memory")
    ap.add_argument("--lengths", default="128,512", help="--paper / --long: sequence lengths")
    ap.add_argument("--precisions", default="fp32,bf16", help="--paper / --long: precisions")
    ap.add_argument("--n", type=int, default=2, help="--paper: samples per batch")
    ap.add_argument("--calls", action="store_true", help="paper shape: one call vs GPT-2 step")
    ap.add_argument("--quality", action="store_true", help="--trained: bf16 vs fp32 quality")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from bench._report import machine, write_section

    if args.paper or args.long or args.calls:
        _paper_main(args, machine, write_section)
        return
    if args.approx:
        _approx_main(args, machine, write_section)
        return
    if args.compile:
        _compile_main(args, machine, write_section)
        return
    if args.quality:
        _quality_main(args, machine, write_section)
        return
    if args.trained:
        _threshold_main(args, machine, write_section)
        return
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
    command = "python -m bench.bench_sampler " + " ".join(sys.argv[1:])
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


def quality_rows(
    run: str, data: str, n: int, seeds: int, block: int, device: str
) -> list[dict[str, Any]]:
    """bf16 against fp32 sampling on one trained model: per seed, n drafts (one token per
    call, and 2 per call) at each precision from the same generators; oracle Gen PPL
    (per-sample mean) and unigram entropy per seed, then their mean and spread over seeds."""
    from sbdcli import pipeline as pl
    from sbdcli.evaluate.judges import OracleJudge
    from sbdcli.evaluate.metrics import unigram_entropy

    ref = pl.load_model_ref(run, device)
    judge = OracleJudge(Path(data))
    length = ref.model.config.seq_len
    per: dict[tuple[str, str], dict[str, list[float]]] = {}
    for seed in range(seeds):
        for steps in (block, block // 2):
            for prec in ("fp32", "bf16"):
                cfg = legacy_sampler(block, steps_per_block=steps, precision=prec)
                job = (ref, pl.draft_prompts(ref, n, seed, None), length, cfg, seed)
                secs, recs = timed(lambda job=job: pl.draft_batch(*job), device)
                nll, ntok = _oracle_scores(judge, recs)
                ppl = [math.exp(a / b) for a, b in zip(nll, ntok, strict=True)]
                ent = [unigram_entropy(r["tokens"][1:]) for r in recs]
                acc = per.setdefault((f"{block // steps} token(s)/call", prec), {})
                for k, v in (("genppl", sum(ppl) / n), ("entropy", sum(ent) / n), ("s", secs)):
                    acc.setdefault(k, []).append(v)
    rows = []
    for (setting, prec), acc in per.items():
        row: dict[str, Any] = {"setting": setting, "precision": prec, "seeds": seeds, "n": n}
        for k, v in acc.items():
            row[k] = statistics.mean(v)
            row[f"{k}_sd"] = statistics.stdev(v) if len(v) > 1 else 0.0
        rows.append(row)
    return rows


def quality_table(rows: list[dict[str, Any]]) -> str:
    header = ["draft", "precision", "Gen PPL (oracle), mean ± sd over seeds",
              "entropy, mean ± sd", "s per draw"]  # fmt: skip
    cells = [
        [
            r["setting"],
            r["precision"],
            f"{r['genppl']:.3f} ± {r['genppl_sd']:.3f}",
            f"{r['entropy']:.4f} ± {r['entropy_sd']:.4f}",
            f"{r['s']:.2f}",
        ]
        for r in rows
    ]
    return markdown_grid(header, cells, "llrrr") + "\n"


QUALITY_INTRO = (
    "## bf16 sampling quality (`python -m bench.bench_sampler --quality`)\n\n"
    "One trained model of the synthetic language (`--trained`), block 4, L = its trained "
    "length; per seed, `--samples` drafts at fp32 and at bf16 from the same generators "
    "(one token per call, and 2 per call); Gen PPL = oracle perplexity, per-sample mean; "
    "entropy = mean unigram entropy (nats) of the generated tokens. Mean ± standard "
    "deviation over the seeds (`--repeats`): bf16 passes where its mean lies within the "
    "fp32 seed-to-seed spread.\n\n"
)


def _paper_main(args: argparse.Namespace, machine: Any, write_section: Any) -> None:
    """`--paper` / `--long`: the paper-shape rows of bench/paper_shape.py."""
    from bench import paper_shape as ps

    lengths = [int(x) for x in args.lengths.split(",")]
    precisions = args.precisions.split(",")
    if args.calls:
        rows = [r for n in lengths for r in ps.call_rows(n, args.n, args.device, args.repeats)]
        table_md, name, intro_md = ps.calls_table(rows), "sampler-calls", ps.CALLS_INTRO
    elif args.long:
        rows = ps.long_rows(lengths, args.device, precisions, args.threads)
        table_md, name, intro_md = ps.long_table(rows), "sampler-long", ps.LONG_INTRO
    else:
        rows = ps.paper_rows(lengths, args.n, args.device, precisions, args.repeats)
        table_md, name, intro_md = ps.paper_table(rows), "sampler-paper", ps.PAPER_INTRO
    command = "python -m bench.bench_sampler " + " ".join(sys.argv[1:])
    body = (
        f"Machine: {machine()}; device {args.device}; torch threads "
        f"{torch.get_num_threads()}.\n\nCommand: `{command}`\n\n{table_md}\n"
    )
    if args.out:
        Path(args.out).write_text(body)
    print(body)
    if args.write:
        write_section(f"{name}-{args.device.split(':')[0]}", intro_md + body)


def _quality_main(args: argparse.Namespace, machine: Any, write_section: Any) -> None:
    if not (args.trained and args.data):
        raise SystemExit("--quality needs --trained RUN --data DIR")
    rows = quality_rows(
        args.trained, args.data, args.samples, args.repeats, args.block, args.device
    )
    for r in rows:
        print(json.dumps(r), flush=True)
    command = "python -m bench.bench_sampler " + " ".join(sys.argv[1:])
    body = (
        f"Machine: {machine()}; device {args.device}; block {args.block}; top-p 0.9; "
        f"float64 sampling.\n\nCommand: `{command}`\n\n{quality_table(rows)}\n"
    )
    if args.out:
        Path(args.out).write_text(body)
    print(body)
    if args.write:
        write_section("sampler-precision-quality", QUALITY_INTRO + body)


def _threshold_main(args: argparse.Namespace, machine: Any, write_section: Any) -> None:
    taus = [float(x) for x in args.taus.split(",")]
    rows = threshold_rows(
        args.trained, args.data, args.samples, args.repeats, taus, args.block, args.device
    )
    for r in rows:
        print(json.dumps(r), flush=True)
    command = "python -m bench.bench_sampler " + " ".join(sys.argv[1:])
    body = (
        f"Machine: {machine()}; device {args.device}; block {args.block}; top-p 0.9; "
        f"float64 sampling.\n\nCommand: `{command}`\n\n{threshold_table(rows)}\n"
    )
    if args.out:
        Path(args.out).write_text(body)
    print(body)
    if args.write:
        write_section("sampler-threshold", THRESHOLD_INTRO + body)


THRESHOLD_INTRO = (
    "## Threshold (adaptive) drafts (`python -m bench.bench_sampler --trained`)\n\n"
    "One trained `tiny` model of the synthetic language, draft block B, L = the trained "
    "length, batches of `--samples` samples, `--repeats` draws per setting interleaved. "
    "*calls/sample* = mean `nfe`; *fewer calls* = calls at one token per call / calls; "
    "*s/sample* = wall-clock of the draft (records included) / samples; Gen PPL = oracle "
    "perplexity, per-sample mean (BD3-LM protocol) and corpus (token-weighted); *entropy* = "
    "mean unigram entropy (nats) of a sample's generated tokens. *confident* = "
    "`--reveal steps:confident` (most probable position first), which is what a threshold "
    "degenerates to when no draw passes it. "
    "`--reveal threshold:TAU` commits every position whose draw has probability >= TAU, at least "
    "one per call (docs/sampling.md).\n\n"
)


def intro() -> str:
    return (
        "## Sampler (`python -m bench.bench_sampler`)\n\n"
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

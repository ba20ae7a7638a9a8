"""The paper-shape sampler benchmark (`bench/bench_sampler.py --paper`): sbd at BD3-LM's
small shape (12 layers, d 768, GPT-2 vocabulary 50,258, random weights) beside
transformers GPT-2 124M `generate` with its KV cache (`GPT2Config()`, random init, nothing
downloaded), at the same precision, interleaved in one run.

Rows (per L, per precision): draft at 1 and 2 tokens per call, snapshot remask gamma 0.25
then the exact and the approximate (refresh 4) global revise, the draft (2/call) + revise
totals, each as wall clock (median over repeats) and as a ratio to GPT-2's time for the
same n x (L - 1) tokens (x AR > 1: faster than AR). The long-sequence rows (`--long`)
time single network calls instead of whole fills (a whole draft at L = 4096 is thousands
of calls): a cached draft call at the end of the sequence and one exact global revise
call, with the peak memory (RSS on CPU, max allocated on CUDA) of a fresh process each.

Not here: the small-model grids and the trained-model rows (bench_sampler.py).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
from itertools import pairwise
from typing import Any

import torch

from bench.timer import stopwatch, sync, timed
from sbdcli.config import ModelConfig, legacy_sampler
from sbdcli.diffusion import remask as rm
from sbdcli.diffusion import sampler as sp
from sbdcli.evaluate import markdown_grid
from sbdcli.model import Denoiser

PAPER_INTRO = (
    "## Paper shape beside GPT-2 (`python -m bench.bench_sampler --paper`)\n\n"
    "sbd at BD3-LM's small shape (12 layers, d 768, 12 heads, GPT-2 vocabulary 50,258; "
    "random weights, output layer and adaLN biases drawn so every layer works) against "
    "transformers GPT-2 124M (`GPT2Config()`, random init, nothing downloaded) `generate` "
    "with its KV cache, top-p 0.9, the same precision (bf16: sbd under bf16 autocast with "
    "bf16 matmul weights, GPT-2 with all weights in bf16), interleaved in one run; medians over "
    "the repeats. Batch of n samples of L tokens (BOS + L - 1 generated). *x AR* = GPT-2's "
    "seconds for the same n (L - 1) tokens / sbd's seconds (> 1: faster than AR). *draft "
    "1/call*: block 4, one token per call, random order, exact KV cache; *2/call*: "
    "`--steps-per-block 2`; the revises follow the 2/call draft: snapshot remask gamma 0.25, "
    "then one global bidirectional block, one token per call, exact (every call runs all "
    "L positions) or approximate (`--cache approx --refresh 4`). Threshold drafts need a "
    "trained model: they are measured on the trained synthetic model (section "
    "sampler-threshold), not here.\n\n"
)
LONG_INTRO = (
    "## Paper shape, long sequences (`python -m bench.bench_sampler --long`)\n\n"
    "Single network calls at L = 1024-4096 (a whole draft at L = 4096 is 4,095 calls): a "
    "cached draft call at the end of the sequence (the dearest: it attends to L - 4 cached "
    "positions; *prefill* = the first call, which also encodes those L - 4 clean tokens into "
    "the cache) and one call of the exact global revise (all L positions run). Each (L, "
    "call, precision) in a fresh process; *peak memory* = that process's peak RSS on CPU "
    "(weights included), `max_memory_allocated` on CUDA. *full stage, extrapolated* = the "
    "call time x (L - 1) draft calls, or x L / 4 revise calls (gamma 0.25, one token per "
    "call): an upper bound for the draft (earlier calls see a shorter cache).\n\n"
)

PAPER = {"n_layers": 12, "d_model": 768, "n_heads": 12, "cond_dim": 128}
VOCAB = 50258  # GPT-2's 50,257 tokens + [MASK]; BOS = EOS = 50256 as in BD3-LM's OWT runs


def build(length: int, device: str) -> Denoiser:
    """Random-weight paper-shape denoiser (non-zero output layer so logits vary)."""
    cfg = ModelConfig(
        vocab_size=VOCAB, mask_id=VOCAB - 1, seq_len=length, dropout=0.0, bos_id=VOCAB - 2,
        eos_id=VOCAB - 2, **PAPER,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Denoiser(cfg)
    with torch.no_grad():
        for p in model.output_layer.parameters():
            p.normal_(0, 0.02)
        for b in model.blocks:  # open the adaLN gates: every layer does work
            b.adaLN_modulation.bias.normal_(0, 0.02)
    return model.to(device).eval()


def gpt2(device: str, prec: str = "fp32") -> Any:
    """GPT-2 124M, random init; at bf16 its weights are bf16 (`torch_dtype=bfloat16`, how
    transformers models usually run in bf16: no per-step weight casts)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config()).to(device).eval()
    return model.to(torch.bfloat16) if prec == "bf16" else model


def clock(fn: Any, device: str) -> tuple[float, Any]:
    """(seconds, result) of one call, through the benchmarks' one timer."""
    return timed(fn, device)


def gens(n: int, stage: str, device: str) -> list[Any]:
    return [sp.make_generator(0, stage, 0, str(i), device) for i in range(n)]


def ar_generate(model: Any, n: int, length: int, device: str, prec: str) -> float:
    """Seconds for GPT-2 `generate` of n x (L - 1) tokens (KV cache, top-p 0.9)."""
    from sbdcli.diffusion.precision import network

    ids = torch.full((n, 1), 50256, dtype=torch.long, device=device)
    kw = dict(
        do_sample=True, top_p=0.9, top_k=0, max_new_tokens=length - 1,
        min_new_tokens=length - 1, pad_token_id=50256, attention_mask=torch.ones_like(ids),
    )  # fmt: skip
    with torch.inference_mode(), network("fp32" if prec == "bf16" else prec, device):
        return clock(lambda: model.generate(ids, **kw), device)[0]  # bf16: bf16 weights


def sbd_draft(model: Denoiser, n: int, length: int, device: str, **kw: Any) -> tuple[float, Any]:
    cfg = legacy_sampler(4, **kw)
    prompts = [[model.config.bos_id]] * n
    return clock(lambda: sp.draft(model, prompts, length, cfg, gens(n, "d", device)), device)


def snapshot_mask(out: Any, gamma: float = 0.25) -> torch.Tensor:
    n, length = out.tokens.shape
    elig = rm.eligible_mask(length, 1)
    keys = torch.zeros(length, dtype=torch.float64)
    masked = torch.zeros(n, length, dtype=torch.bool)
    for i in range(n):
        masked[i, rm.select_lowest(out.confidence[i].cpu(), elig, gamma, keys)] = True
    return masked.to(out.tokens.device)


def sbd_revise(model: Denoiser, out: Any, device: str, **kw: Any) -> float:
    cfg = legacy_sampler(0, **kw)
    masked = snapshot_mask(out)
    g = gens(out.tokens.shape[0], "r", device)
    return clock(lambda: sp.revise(model, out.tokens, masked, cfg, g), device)[0]


def measure_once(
    model: Denoiser, ar: Any, n: int, length: int, device: str, prec: str, exact: bool
) -> dict[str, float]:
    """Seconds of GPT-2 and of every sbd setting at one precision, one after the other."""
    out = {"ar": ar_generate(ar, n, length, device, prec)}
    out["draft1"], _ = sbd_draft(model, n, length, device, precision=prec)
    out["draft2"], two = sbd_draft(model, n, length, device, precision=prec, steps_per_block=2)
    out["approx"] = sbd_revise(model, two, device, precision=prec, cache="approx", refresh=4)
    if exact:
        out["exact"] = sbd_revise(model, two, device, precision=prec)
    return out


def summary(times: dict[str, list[float]], n: int, length: int, prec: str) -> dict[str, Any]:
    """One (L, precision) row from its repeats: medians and ratios to GPT-2."""
    med = {k: statistics.median(v) for k, v in times.items()}
    row: dict[str, Any] = {"L": length, "n": n, "precision": prec, "repeats": len(times["ar"])}
    row.update({f"{k}_s": v for k, v in med.items()})
    row["ar_ms_step"] = 1000 * med["ar"] / (length - 1)
    row["draft1_ms_call"] = 1000 * med["draft1"] / (length - 1)
    for k in ("draft1", "draft2"):
        row[f"{k}_x_ar"] = med["ar"] / med[k]
    for k in ("approx", "exact"):
        if k in med:
            row[f"draft2+{k}_x_ar"] = med["ar"] / (med["draft2"] + med[k])
    return row


def paper_rows(
    lengths: list[int], n: int, device: str, precisions: list[str], repeats: int
) -> list[dict[str, Any]]:
    """Per L: `repeats` rounds, each running every precision (GPT-2 and sbd) in turn."""
    ars = {prec: gpt2(device, prec) for prec in precisions}
    rows = []
    for length in lengths:
        model = build(length, device)
        for prec in precisions:  # warm-up (bf16: also makes the bf16 weight copy)
            sbd_draft(model, n, 16, device, precision=prec)
        times: dict[str, dict[str, list[float]]] = {p: {} for p in precisions}
        for _ in range(repeats):
            for prec in precisions:
                got = measure_once(model, ars[prec], n, length, device, prec, length <= 128)
                print(json.dumps({"L": length, "precision": prec, **got}), flush=True)
                for k, v in got.items():
                    times[prec].setdefault(k, []).append(v)
        for prec in precisions:
            rows.append(summary(times[prec], n, length, prec))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def fmt(x: Any, digits: int = 2) -> str:
    if x is None:
        return "-"
    return f"{x:.{digits}f}"


def paper_table(rows: list[dict[str, Any]]) -> str:
    header = [
        "L",
        "n",
        "precision",
        "GPT-2 ms/token step",
        "sbd ms/call (1/call)",
        "draft 1/call x AR",
        "draft 2/call x AR",
        "draft2 + approx revise x AR",
        "draft2 + exact revise x AR",
        "GPT-2 s",
        "draft1 s",
        "draft2 s",
        "approx revise s",
        "exact revise s",
    ]
    cells = [
        [
            str(r["L"]),
            str(r["n"]),
            r["precision"],
            fmt(r["ar_ms_step"], 1),
            fmt(r["draft1_ms_call"], 1),
            fmt(r["draft1_x_ar"]),
            fmt(r["draft2_x_ar"]),
            fmt(r.get("draft2+approx_x_ar")),
            fmt(r.get("draft2+exact_x_ar")),
            fmt(r["ar_s"], 1),
            fmt(r["draft1_s"], 1),
            fmt(r["draft2_s"], 1),
            fmt(r.get("approx_s"), 1),
            fmt(r.get("exact_s"), 1),
        ]
        for r in rows
    ]
    return markdown_grid(header, cells, "rrl" + "r" * 11) + "\n"


# --------------------------------------------------------------------------- long sequences
def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def call_ends(
    model: Denoiser, tokens: torch.Tensor, todo: torch.Tensor, cfg: Any, g: Any, device: str
) -> list[float]:
    """One fill's start (0) and the end of each of its network calls (seconds, synced)."""
    ends = [0.0]

    def ended(_: Any) -> None:
        sync(device)
        ends.append(clock())

    sync(device)
    clock = stopwatch()
    sp.fill_masked(model, tokens, todo, cfg, g, progress=ended)
    return ends


def one_call(length: int, kind: str, device: str, prec: str, calls: int = 2) -> dict[str, Any]:
    """Time `calls` network calls of one kind at L in this process; peak memory after.

    draft: a cached draft of the last 4 positions, each call timed as it ends (the first
    also encodes the L - 4 clean tokens before them into the cache: `prefill_s`; the
    median of the other 3 is `s_per_call`); revise: `calls` calls of one global
    bidirectional block (the exact revise's call: every one of the L positions runs).
    """
    model = build(length, device)
    n = 1
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, VOCAB - 2, (n, length), generator=g).to(device)
    tokens[:, 0] = model.config.bos_id
    warm = sp.SamplerConfig(block_size=4, precision=prec)  # also makes the bf16 weight copy
    sp.draft(model, [[model.config.bos_id]], 8, warm, gens(1, "w", device))
    todo = torch.zeros(n, length, dtype=torch.bool, device=device)
    if kind == "draft":
        cfg = sp.SamplerConfig(block_size=4, precision=prec)
        todo[:, -4:] = True  # four calls: the first also fills the cache, three with it warm
        ends = call_ends(model, tokens, todo, cfg, gens(n, "d", device), device)
        steps = [b - a for a, b in pairwise(ends)]
        row = {"prefill_s": steps[0], "s_per_call": statistics.median(steps[1:]), "calls": 4}
    else:  # `calls` calls of the global block, 2 positions each
        cfg = legacy_sampler(0, precision=prec, steps_per_block=calls)
        todo[:, 1 : 1 + 4 * 2 * calls : 4] = True
        secs, _ = clock(lambda: sp.fill_masked(model, tokens, todo, cfg, gens(n, "r", device)),
                        device)  # fmt: skip
        row = {"s_per_call": secs / calls, "calls": calls}
    row.update(L=length, kind=kind, precision=prec, peak_mb=peak_memory_mb(device))
    return row


def long_rows(
    lengths: list[int], device: str, precisions: list[str], threads: int = 0
) -> list[dict[str, Any]]:
    """`one_call` in a fresh process per (L, kind, precision): each peak is its own."""
    rows = []
    for length in lengths:
        for kind in ("draft", "revise"):
            for prec in precisions:
                code = (
                    "import json, torch; from bench import paper_shape as p; "
                    f"torch.set_num_threads({threads} or torch.get_num_threads()); "
                    f"print(json.dumps(p.one_call({length}, {kind!r}, {device!r}, {prec!r})))"
                )
                env = dict(os.environ)
                res = subprocess.run(
                    [sys.executable, "-c", code], capture_output=True, text=True, env=env,
                    check=True, timeout=1800,
                )  # fmt: skip
                row = json.loads(res.stdout.strip().splitlines()[-1])
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def long_table(rows: list[dict[str, Any]]) -> str:
    header = ["L", "call", "precision", "s per call", "prefill s (draft)", "peak memory MiB",
              "full stage, extrapolated s"]  # fmt: skip
    cells = []
    for r in rows:
        length = r["L"]
        if r["kind"] == "draft":  # L - 1 calls at <= this cost (the last calls are the dearest)
            full, what = r["s_per_call"] * (length - 1), "cached draft call (1 token)"
        else:  # gamma 0.25: L/4 calls of the global block, one token per call
            full, what = r["s_per_call"] * length / 4, "exact global revise call"
        cells.append([str(length), what, r["precision"], fmt(r["s_per_call"], 3),
                      fmt(r.get("prefill_s"), 2), fmt(r["peak_mb"], 0), fmt(full, 0)])  # fmt: skip
    return markdown_grid(header, cells, "rllrrrr") + "\n"


# --------------------------------------------------------------------------- single calls
CALLS_INTRO = (
    "## Paper shape, one call against one GPT-2 step (`python -m bench.bench_sampler "
    "--calls`)\n\n"
    "The cost of one cached draft call of sbd (block 4 after L - 8 cached tokens: the 4 "
    "tokens of the block run; *head at 1* reads out the one position a one-token random-"
    "order call commits, *head at 4* every block position as before) against one GPT-2 "
    "decoding step with its KV cache after the same context, at fp32 and bf16 (sbd: "
    "autocast with bf16 matmul weights; GPT-2: bf16 weights), interleaved round by round; "
    "medians over the rounds of the mean of `calls` calls. *call / step* = sbd's call time "
    "over GPT-2's step time: at one token per call the draft runs at 1 / (call / step) of "
    "AR speed.\n\n"
)


def call_rows(
    length: int, n: int, device: str, rounds: int, calls: int = 4
) -> list[dict[str, Any]]:
    """Per precision: ms of a cached sbd draft call (head at 1 and at 4 positions) and of
    one GPT-2 step, interleaved over `rounds`."""
    from sbdcli.diffusion.precision import for_calls, network

    model = build(length, device)
    g = torch.Generator().manual_seed(0)
    tok = torch.randint(0, VOCAB - 2, (n, length), generator=g).to(device)
    ctx = length - 8
    ars = {p: gpt2(device, p) for p in ("fp32", "bf16")}

    def sbd_call(prec: str, readout: bool) -> float:
        net = for_calls(model, prec, device)
        cache = net.new_cache(n, length)
        if prec == "bf16":
            cache.to_dtype(torch.bfloat16)
        mask = torch.ones(4, ctx + 4, dtype=torch.bool, device=device)
        kw = {"readout": torch.zeros(n, 1, dtype=torch.long, device=device)} if readout else {}
        pos = torch.arange(ctx, ctx + 4, device=device)
        with torch.inference_mode():
            with network(prec, device):
                net(tok[:, :ctx], torch.arange(ctx, device=device), None, cache, ctx)

            def run() -> None:
                for _ in range(calls):
                    with network(prec, device):
                        net(tok[:, ctx : ctx + 4], pos, mask, cache, 0, **kw)

            return timed(run, device)[0] / calls

    def ar_step(prec: str) -> float:
        ar = ars[prec]
        with torch.inference_mode(), network("fp32", device):
            past = ar(tok[:, :ctx], use_cache=True).past_key_values

            def run() -> None:
                state = past
                for i in range(calls):
                    state = ar(tok[:, ctx + i : ctx + i + 1], past_key_values=state).past_key_values

            return timed(run, device)[0] / calls

    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):
        for prec in ("fp32", "bf16"):
            for name, fn in (
                ("gpt2", lambda p=prec: ar_step(p)),
                ("head at 4", lambda p=prec: sbd_call(p, False)),
                ("head at 1", lambda p=prec: sbd_call(p, True)),
            ):
                times.setdefault((prec, name), []).append(fn())
    rows = []
    for prec in ("fp32", "bf16"):
        step = statistics.median(times[(prec, "gpt2")])
        row: dict[str, Any] = {"L": length, "n": n, "precision": prec, "rounds": rounds}
        row["gpt2_ms"] = 1000 * step
        for name in ("head at 4", "head at 1"):
            ms = 1000 * statistics.median(times[(prec, name)])
            row[f"{name}_ms"] = ms
            row[f"{name}_per_step"] = ms / row["gpt2_ms"]
        rows.append(row)
    return rows


def calls_table(rows: list[dict[str, Any]]) -> str:
    header = ["L", "n", "precision", "GPT-2 step ms", "sbd call ms, head at 4", "call / step",
              "sbd call ms, head at 1", "call / step"]  # fmt: skip
    cells = [
        [
            str(r["L"]),
            str(r["n"]),
            r["precision"],
            fmt(r["gpt2_ms"], 1),
            fmt(r["head at 4_ms"], 1),
            fmt(r["head at 4_per_step"]),
            fmt(r["head at 1_ms"], 1),
            fmt(r["head at 1_per_step"]),
        ]
        for r in rows
    ]
    return markdown_grid(header, cells, "rrlrrrrr") + "\n"

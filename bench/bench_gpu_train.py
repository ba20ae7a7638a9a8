"""GPU training throughput and MFU of the BD3-LM denoiser (`small`, L = 1024, bf16).

Side by side in one process on one GPU, each a full optimizer step (forward, backward,
AdamW) on random tokens with bf16 autocast:
- causal: a plain causal-LM step of the same network (boolean causal mask, L tokens);
- B=4 sdpa / B=4 flex: the vectorised block-diffusion pass over concat(x_t, x_0) (2L);
- B=L: one global block (MDLM path, L tokens, no x_0 half);
- optional `--compile` rows: the same steps under `torch.compile`.

MFU counts useful FLOPs only: 6 x (non-embedding parameters) x (tokens fed) + the output
head on the read-out positions + attention on the (query, key) pairs the mask allows
(2 x 2 x d per pair forward, x3 for forward + backward), over the GPU's dense bf16 peak.

    python -m bench.bench_gpu_train --out train_gpu.md
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.timer import timed
from sbdcli.config import preset
from sbdcli.diffusion.loss import block_nelbo
from sbdcli.evaluate import markdown_grid
from sbdcli.model import Denoiser
from sbdcli.model.attention import block_diff_mask

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def peak_flops() -> float:
    name = torch.cuda.get_device_name(0)
    return next((v for k, v in PEAK_BF16.items() if k in name), 989e12)


def useful_flops(model: Denoiser, kind: str, batch: int, length: int, block: int) -> float:
    """Useful FLOPs of one training step (forward + backward) for `batch` rows."""
    cfg = model.config
    params = sum(p.numel() for n, p in model.named_parameters() if "vocab_embed" not in n)
    head = cfg.d_model * cfg.vocab_size
    body = params - head
    if kind == "causal":
        fed, pairs = length, length * (length + 1) / 2
    elif block >= length:
        fed, pairs = length, length * length
    else:
        fed, pairs = 2 * length, float(block_diff_mask(length, block).sum())
    per_row = 6 * body * fed + 6 * head * length + 3 * 4 * cfg.d_model * pairs * cfg.n_layers
    return per_row * batch


def causal_loss(model: Denoiser, x: torch.Tensor) -> torch.Tensor:
    length = x.shape[1]
    mask = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
    logits = model(x, torch.arange(length, device=x.device), attn_mask=mask)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten())


class Compiled:
    """The denoiser's forward and training pass under torch.compile, same interface."""

    def __init__(self, model: Denoiser) -> None:
        self.config = model.config
        self._forward = torch.compile(model)
        self.train_logits = torch.compile(model.train_logits)

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self._forward(*args, **kwargs)


def make_step(model: Any, opt: Any, kind: str, block: int, gen: torch.Generator) -> Any:
    def step(x: torch.Tensor) -> float:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            if kind == "causal":
                loss = causal_loss(model, x)
            else:
                loss = block_nelbo(model, x, block, generator=gen).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def measure(args: argparse.Namespace, kind: str, block: int, backend: str, compiled: bool) -> dict:
    torch.manual_seed(0)
    cfg = preset(args.preset, vocab_size=50258, mask_id=50257, seq_len=args.length, dropout=0.0)
    model = Denoiser(cfg).cuda().train()
    model.attn_backend = backend
    net: Any = Compiled(model) if compiled else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randint(0, 50257, (args.batch, args.length), device="cuda", generator=gen)
    step = make_step(net, opt, kind, block, gen)
    for _ in range(args.warmup):
        step(x)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()

    def steps() -> None:
        for _ in range(args.steps):
            step(x)

    dt = timed(steps, "cuda")[0] / args.steps
    flops = useful_flops(model, kind, args.batch, args.length, block)
    row = {
        "kind": kind if kind == "causal" else f"B={block if block < args.length else 'L'}",
        "backend": backend + (" + compile" if compiled else ""),
        "tokens_per_s": args.batch * args.length / dt,
        "step_ms": dt * 1e3,
        "mfu": flops / dt / peak_flops(),
        "tflops": flops / dt / 1e12,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
    }
    del model, net, opt
    torch.cuda.empty_cache()
    return row


def render(rows: list[dict], args: argparse.Namespace) -> str:
    base = next(r["tokens_per_s"] for r in rows if r["kind"] == "causal")
    lines = [
        f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}; preset "
        f"`{args.preset}`, L = {args.length}, batch {args.batch}, bf16 autocast, fused AdamW; "
        f"mean of {args.steps} steps after {args.warmup} warm-up steps. Tokens/s counts L "
        "tokens per row (the x_0 half of the B=4 pass is not counted as extra tokens).",
        "",
    ]
    cells = [
        (r["kind"], r["backend"], f"{r['tokens_per_s']:,.0f}", f"{r['tokens_per_s'] / base:.2f}x",
         f"{r['step_ms']:.1f}", f"{r['tflops']:.0f}", f"{100 * r['mfu']:.1f}%",
         f"{r['peak_gib']:.1f}")
        for r in rows
    ]  # fmt: skip
    header = ("step", "attention", "tokens/s", "vs causal", "ms/step", "useful TFLOP/s", "MFU",
              "peak GiB")  # fmt: skip
    return "\n".join(lines) + "\n" + markdown_grid(header, cells) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="add torch.compile rows")
    ap.add_argument("--out", help="write the markdown table here")
    args = ap.parse_args()
    plan = [("causal", args.length, "sdpa"), ("bd", 4, "sdpa"), ("bd", 4, "flex"),
            ("bd", args.length, "sdpa")]  # fmt: skip
    rows = []
    for kind, block, backend in plan:
        rows.append(measure(args, kind, block, backend, compiled=False))
        print(rows[-1], flush=True)
    if args.compile:
        for kind, block, backend in (("causal", args.length, "sdpa"), ("bd", 4, "flex"),
                                     ("bd", args.length, "sdpa")):  # fmt: skip
            try:
                rows.append(measure(args, kind, block, backend, compiled=True))
                print(rows[-1], flush=True)
            except Exception as exc:  # a compile failure must not lose the other rows
                print(f"compile {kind} {block} {backend} failed: {exc}", flush=True)
    table = render(rows, args)
    print(table)
    if args.out:
        Path(args.out).write_text(table)


if __name__ == "__main__":
    main()

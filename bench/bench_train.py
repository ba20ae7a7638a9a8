"""Benchmark training throughput: block-diffusion steps against a plain causal-LM step.

For each model (`tiny`: 2 layers d 128; `d384`: 6 layers d 384, 6 heads) and L in {128, 512},
the same `Denoiser` (same blocks, same weights) runs one full training step (forward,
backward, grad clip, AdamW) as
- `causal`: next-token cross-entropy with a causal boolean mask on x alone (L tokens);
- `B=4`: the vectorised block NELBO over concat(x_t, x_0) (2L tokens, block-diffusion mask);
- `B=L`: the block NELBO with one global block (bidirectional on x_t alone, L tokens);
- `mix`: Mix(4, L), lambda 0.1, derived from the two as tokens / (0.9 t_4 + 0.1 t_L);
- `loop B=4`: one step of the real `sbd train` loop at B = 4 (`Trainer.fit`: data reads,
  noise draws, forward/backward, clip, AdamW, EMA), from the same initial weights, timed by
  the trainer's own per-step clock after the round-robin rounds.
Steps are timed round-robin (fair under a changing machine load), best of `--repeats`.
Tokens/s counts the L input tokens of each row. Peak memory: in a fresh process, the
RSS high-water mark while building the model and running 3 steps of that kind, minus the
RSS before (after a warm-up step of a small throw-away model, so that imports and library
initialisation are not counted).
Vocabulary: the synthetic default's 66 tokens (the output layer does not dominate).
Targets: B=L >= 0.9x causal, B=4 >= 0.45x causal.

Usage: python -m bench.bench_train [--repeats 4] [--threads 2] [--models tiny,d384]
       [--lengths 128,512] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from bench._report import machine, write_section
from bench.timer import interleaved, timed
from sbdcli.config import ModelConfig, preset, train_config
from sbdcli.diffusion.loss import block_nelbo
from sbdcli.evaluate import markdown_grid
from sbdcli.model import Denoiser

MODELS = {
    "tiny": {"preset": "tiny", "overrides": {}},
    "d384": {"preset": "tiny", "overrides": {"n_layers": 6, "d_model": 384, "n_heads": 6}},
}
TOKENS_PER_STEP = 4096
MODES = ("causal", "B=4", "B=L")


def model_config(name: str, length: int) -> ModelConfig:
    spec = MODELS[name]
    return preset(spec["preset"], vocab_size=66, mask_id=65, seq_len=length, **spec["overrides"])


def make_step(model: Denoiser, opt: torch.optim.Optimizer, mode: str, x: torch.Tensor):
    """One full training step of `mode` on rows x (b, L) -> a zero-argument callable."""
    length = x.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()  # (L, L)
    positions = torch.arange(length)
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        if mode == "causal":
            logits = model(x, positions, attn_mask=causal)  # (b, L, V)
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten())
        else:
            block = 4 if mode == "B=4" else length
            loss = block_nelbo(model, x, block, generator=gen).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return step


def build(name: str, length: int) -> tuple[Denoiser, torch.optim.Optimizer, torch.Tensor]:
    torch.manual_seed(0)
    model = Denoiser(model_config(name, length)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, 64, (TOKENS_PER_STEP // length, length))
    x[:, 0] = 64  # BOS
    return model, opt, x


def loop_seconds(name: str, length: int, repeats: int, root: Path) -> float:
    """Best seconds of one optimizer step of the real training loop at B = 4 (data reads,
    noise draws, forward/backward, clip, AdamW, EMA) on the benchmark model: `Trainer.fit`
    runs 1 + `repeats` steps and each step's own clock (the tokens/s its `StepInfo`
    reports) gives its time; the first step (warm-up) is dropped."""
    from sbdcli.data import prepare_synthetic
    from sbdcli.model.checkpoint import save_sbd_model
    from sbdcli.train import setup

    data = root / f"syn{length}"
    if not data.exists():
        prepare_synthetic(data, seq_len=length, num_train=256, num_val=8, floor_samples=8)
    ckpt = save_sbd_model(
        Denoiser(model_config(name, length)), root / f"{name}-{length}.safetensors"
    )
    cfg = train_config(
        "tiny", steps=1 + repeats, batch_size=TOKENS_PER_STEP // length, lr=1e-4,
        block_small=4, mix_lambda=0.0, val_every=0, save_every=0, val_rows=8, device="cpu",
        init=str(ckpt),
    )  # fmt: skip
    rates: list[float] = []
    setup(cfg, data, root / f"run-{name}-{length}").fit(
        lambda info: rates.append(info.tokens_per_s)
    )
    return TOKENS_PER_STEP / max(rates[1:])


def time_modes(name: str, length: int, repeats: int, root: Path) -> dict[str, float]:
    """Best seconds per step of each mode, measured round-robin (same weights for all), and
    of the real loop (`loop_seconds`, its own steps after the round-robin)."""
    model, opt, x = build(name, length)
    steps = {mode: make_step(model, opt, mode, x) for mode in MODES}
    best = dict(zip(steps, interleaved(list(steps.values()), repeats), strict=True))
    best["loop B=4"] = loop_seconds(name, length, repeats, root)
    return best


def status_kib(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in KiB."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_worker(name: str, length: int, mode: str) -> None:
    """Child process: print the peak RSS growth (MiB) while building the model and running
    3 steps of `mode`: the RSS high-water mark is reset (Linux clear_refs) after a warm-up
    step of a small throw-away model, so imports and library initialisation do not count."""
    warm_model, warm_opt, warm_x = build("tiny", 32)
    make_step(warm_model, warm_opt, mode, warm_x[:2])()
    del warm_model, warm_opt, warm_x
    base = status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # reset VmHWM to the current RSS
    model, opt, x = build(name, length)
    step = make_step(model, opt, mode, x)
    for _ in range(3):
        step()
    print(json.dumps({"peak_mib": (status_kib("VmHWM") - base) / 1024}))


def peak_memory(name: str, length: int, mode: str, threads: int) -> float:
    cmd = [sys.executable, "-m", "bench.bench_train", "--worker", name, str(length), mode]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env, cwd=root)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"])


def measure(name: str, length: int, args: argparse.Namespace, data_root: Path) -> list[dict]:
    best = time_modes(name, length, args.repeats, data_root)
    best["mix"] = 0.9 * best["B=4"] + 0.1 * best["B=L"]
    rows = []
    for mode in (*MODES, "mix", "loop B=4"):
        mem = peak_memory(name, length, mode, args.threads) if mode in MODES else None
        rows.append({
            "model": name, "L": length, "mode": mode, "tok_s": TOKENS_PER_STEP / best[mode],
            "ratio": best["causal"] / best[mode], "peak_mib": mem,
        })  # fmt: skip
    return rows


def table(rows: list[dict]) -> str:
    cells = [
        (r["model"], str(r["L"]), r["mode"], f"{r['tok_s']:,.0f}", f"{r['ratio']:.2f}x",
         f"{r['peak_mib']:.0f}" if r["peak_mib"] is not None else "-")
        for r in rows
    ]  # fmt: skip
    header = ("model", "L", "step", "tokens/s", "vs causal", "peak MiB")
    return markdown_grid(header, cells, "lrlrrr")


KERNEL_NOTE = (
    "The B=4 step runs SDPA with a boolean mask, which the CPU kernel evaluates densely. "
    "Since the x_0 queries never see x_t keys, the pass attends in two calls "
    "(`attention.HalvesMask`): x_t queries over [x_t, x_0] keys (L x 2L) and x_0 queries "
    "over x_0 keys (L x L), 3L^2 scores instead of 4L^2; before that split this benchmark "
    "measured B=4 at 0.42x causal for d384 at L = 512. FlexAttention (GPU) also skips the "
    "fully masked blocks inside those halves."
)
MISS_NOTE = (
    "Why B=4 can still miss 0.45x on CPU: its linear layers see 2L tokens and its attention "
    "3L^2 dense scores (vs about L^2/2 useful for causal), so where attention dominates "
    "(large L, small d) the step costs more than 2.2x the causal one."
)


def verdicts(rows: list[dict]) -> list[str]:
    """One line per (model, L): the two targets, met or not."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        for length in dict.fromkeys(r["L"] for r in rows if r["model"] == model):
            got = {r["mode"]: r["ratio"] for r in rows if (r["model"], r["L"]) == (model, length)}
            parts = []
            for mode, target in (("B=L", 0.9), ("B=4", 0.45)):
                verdict = "met" if got[mode] >= target else "**not met**"
                parts.append(f"{mode} {got[mode]:.2f}x (target {target}x: {verdict})")
            out.append(f"- {model}, L = {length}: " + "; ".join(parts))
    return out


def measure_all(args: argparse.Namespace) -> list[dict]:
    """Every (model, L) row, each table printed on stdout as it is measured."""
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            for length in (int(v) for v in args.lengths.split(",")):
                rows += measure(name, length, args, Path(tmp))
                print(table(rows[-5:]), flush=True)  # progress on stdout
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=4, help="timed rounds per mode")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--models", default="tiny,d384", help="comma list of: tiny, d384")
    parser.add_argument("--lengths", default="128,512", help="comma list of L")
    parser.add_argument("--no-write", action="store_true", help="print, do not write docs")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        memory_worker(args.worker[0], int(args.worker[1]), args.worker[2])
        return
    runtime, rows = timed(lambda: measure_all(args))
    command = "python -m bench.bench_train " + shlex.join(sys.argv[1:])
    body = "\n".join([
        "## Training throughput (CPU): block diffusion vs a causal-LM step",
        "",
        f"Command: `{command.strip()}`  ",
        f"Machine: {machine()}  ",
        f"Rows of {TOKENS_PER_STEP} tokens per step (batch = {TOKENS_PER_STEP} / L), "
        f"vocab 66, fp32, full step (forward, backward, clip, AdamW); best of {args.repeats} "
        "round-robin rounds; `mix` = Mix(4, L) lambda 0.1 from the B=4 and B=L times; "
        "`loop B=4` = a step of the real training loop (data, noise, EMA included), best of "
        f"{args.repeats} steps after a warm-up one, timed by the trainer's per-step clock. "
        "The causal step goes through the same SDPA call with a boolean causal mask (no "
        "is_causal fast path); B=L runs SDPA without a mask. Peak MiB: peak RSS growth of a fresh "
        "process building the model and running 3 steps (after a small warm-up step). "
        "Targets: B=L >= 0.9x causal, B=4 >= 0.45x causal. "
        f"Runtime {runtime:.0f} s.",
        "",
        table(rows),
        "",
        *verdicts(rows),
    ])  # fmt: skip
    body += "\n\n" + KERNEL_NOTE
    if any(r["mode"] == "B=4" and r["ratio"] < 0.45 for r in rows):
        body += "\n\n" + MISS_NOTE
    print(body)
    if not args.no_write:
        write_section("train", body)


if __name__ == "__main__":
    main()

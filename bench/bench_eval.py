"""Benchmark `sbd eval`: transformers-judge throughput and the cost of the other judges.

1. transformers judge (random GPT-2, 6 layers, d 384, GPT-2 vocabulary 50257, context
   1024): scored tokens/s of `HFJudge.score_ids` batched vs one sample at a time, against
   a single large forward of the same tokens (`model(ids).logits` + cross-entropy over
   the whole (n, T) batch: the matmul-bound reference).
   Targets: CPU: batched >= 0.9x the single forward and >= 1x one by one; GPU: batched
   >= 5x one by one.
2. `--evaluator oracle` on the synthetic default (V 64, K 8, L 128): seconds per 1,000
   samples (scoring; and the oracle floor from 1,000 fresh samples).
3. the block-1 sbd judge (`tiny` preset, L 128): seconds per 1,000 samples.

Usage: python -m bench.bench_eval [--samples 32] [--length 256] [--device cpu|cuda]
       [--section eval] [--no-write] [--body-out FILE]
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench._report import machine, write_section
from bench.timer import best_seconds, interleaved
from sbdcli.evaluate import OracleJudge, SbdJudge, VocabInfo, markdown_grid
from sbdcli.evaluate.hf_judge import HFJudge


def build_gpt2(out: Path, device: str) -> HFJudge:
    """A random 6-layer d-384 GPT-2 with GPT-2's vocabulary and context, saved and loaded."""
    from tokenizers import Tokenizer, models
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(50256)} | {"<|endoftext|>": 50256}
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>")),
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
    )
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=6, n_embd=384, n_head=6, vocab_size=50257, n_positions=1024)
    GPT2LMHeadModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return HFJudge(out, device=device)


def bench_hf(args: argparse.Namespace) -> tuple[list[str], dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        judge = build_gpt2(Path(tmp), args.device)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50256, (args.samples, args.length + 1), generator=gen)
    ids[:, 0] = 50256  # the judge's BOS
    seqs = ids.tolist()
    flags = [[False] + [True] * args.length for _ in seqs]
    scored = args.samples * args.length
    model = judge.model
    x = ids.to(args.device)

    def single() -> None:
        with torch.inference_mode():
            logits = model(input_ids=x, use_cache=False).logits  # (n, T, V)
            torch.nn.functional.cross_entropy(
                logits[:, :-1].flatten(0, 1), x[:, 1:].flatten(), reduction="sum"
            )

    def scorer(batch: int):
        def run() -> None:
            judge.batch_size = batch
            judge.score_ids(seqs, flags)

        return run

    t_single, t_batch, t_one = interleaved(
        [single, scorer(args.batch_size), scorer(1)], args.repeats, args.device
    )
    # the batched path must give the one-at-a-time numbers
    judge.batch_size = args.batch_size
    a, _ = judge.score_ids(seqs[:4], flags[:4])
    judge.batch_size = 1
    b, _ = judge.score_ids(seqs[:4], flags[:4])
    agree = float(np.max(np.abs(a - b) / np.abs(b)))
    rate = {k: scored / t for k, t in (("single", t_single), ("batched", t_batch), ("one", t_one))}
    names = {
        "single": "single large forward (n, T) + cross-entropy",
        "batched": f"`HFJudge` batched (batch {args.batch_size})",
        "one": "`HFJudge` one sample at a time",
    }
    paths = [
        (name, f"{rate[k]:,.0f}", f"{rate[k] / rate['single']:.2f}") for k, name in names.items()
    ]
    lines = [
        f"transformers judge: random GPT-2 (6 layers, d 384, vocab 50257, context 1024), "
        f"{args.samples} samples x {args.length} scored tokens, fp32, best of {args.repeats} "
        "(measured round-robin).",
        "",
        *markdown_grid(("path", "tokens/s", "vs single forward"), paths).splitlines(),
        "",
        f"Batched / one at a time: **{rate['batched'] / rate['one']:.2f}x**; batched / single "
        f"forward: **{rate['batched'] / rate['single']:.2f}x**; max relative difference of "
        f"batched vs one-at-a-time NLLs: {agree:.1e}.",
    ]
    return lines, {f"hf_{k}_tok_s": v for k, v in rate.items()}


def bench_oracle_and_block1(args: argparse.Namespace) -> tuple[list[str], dict[str, float]]:
    from sbdcli.config import preset
    from sbdcli.data import prepare_synthetic
    from sbdcli.model import Denoiser

    n, length = 1000, 128
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        prepare_synthetic(data, seq_len=length, num_train=16, num_val=16, floor_samples=16)
        oracle = OracleJudge(data, {})
        rows = oracle.oracle.sample(n, length, torch.Generator().manual_seed(1))
    recs = [{"id": str(i), "tokens": r, "prompt_len": 1} for i, r in enumerate(rows.tolist())]
    t_oracle = best_seconds(lambda: oracle.score(recs), args.repeats, "cpu", warmup=1)
    t_floor = best_seconds(lambda: oracle.floor(length + 1, n=1000), args.repeats, "cpu", warmup=1)
    torch.manual_seed(0)
    cfg = preset("tiny", vocab_size=66, mask_id=65, seq_len=length, bos_id=64)
    model = Denoiser(cfg).to(args.device).eval()
    judge = SbdJudge(model, VocabInfo(64, None, 65, 66), blocks=[1], batch_size=64)
    t_block1 = best_seconds(lambda: judge.score(recs), args.repeats, args.device, warmup=1)
    judges = [
        ("`--evaluator oracle`: exact NLL", f"{t_oracle:.3f}"),
        ("oracle floor from 1,000 fresh true samples (only when the manifest has none)",
         f"{t_floor:.3f}"),
        ("block-1 sbd judge, `tiny` preset (2 layers, d 128), batch 64", f"{t_block1:.3f}"),
    ]  # fmt: skip
    lines = [
        f"Other judges, per {n:,} samples of the synthetic default (V 64, K 8, L {length}):",
        "",
        *markdown_grid(("judge", "seconds per 1,000 samples"), judges).splitlines(),
    ]
    return lines, {"oracle_s": t_oracle, "floor_s": t_floor, "block1_s": t_block1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--section", default="eval")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--body-out", type=Path, default=None)
    parser.add_argument("--skip-other", action="store_true", help="only the transformers judge")
    args = parser.parse_args()
    hf_lines, _ = bench_hf(args)
    other_lines = [] if args.skip_other else bench_oracle_and_block1(args)[0]
    command = "python -m bench.bench_eval " + shlex.join(sys.argv[1:])
    body = "\n".join(
        [
            f"## `sbd eval` ({args.device})",
            "",
            f"Command: `{command.strip()}`  ",
            f"Machine: {machine()}; load average at the end {os.getloadavg()[0]:.1f} "
            "(other processes share the cores: compare ratios measured in the same run)",
            "",
            *hf_lines,
            "",
            *other_lines,
        ]
    )
    print(body)
    if args.body_out:
        args.body_out.write_text(body + "\n")
    if not args.no_write:
        write_section(args.section, body)


if __name__ == "__main__":
    main()

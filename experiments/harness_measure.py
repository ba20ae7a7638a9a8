"""The measurements of docs/evaluation.md for the lm-eval model and MAUVE.

What it is: a client of `sbdcli.harness` and `sbdcli.evaluate` with its own command line,
run from the repository root:

    python -m experiments.harness_measure variance RUN [--k 2,4,16,64] [--docs N]
        [--estimator count,time]
    python -m experiments.harness_measure featurizer OUT [--layers 4] [--width 64]
        [--train DATA --steps 300]

`variance` scores the multiple-choice task of tests/fixtures/harness (the topic-markov
language of `sbd prepare --synthetic --seed 1`) with the run's NELBO bound at each K and
prints a markdown table: the standard error of one choice's estimate, the standard error
of the difference true − distractor under common random numbers (the draws the model
shares across a question's choices) and as it would be with independent draws, the
model's accuracy, and the oracle's accuracy on the same questions. `featurizer` writes a
GPT-2 over the language's words (`w0` ... `w63`, a word-level tokenizer) for `sbd eval
mauve --featurizer`, where no published text model knows the language: random, or
trained as a next-token model on a data directory's train rows (`--train`).

What it is not: a test, a speed benchmark (bench/), or part of the installed package.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import torch

from sbdcli.evaluate import markdown_grid

TASKS = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "harness"
WORDS = 64


def _docs(limit: int | None) -> list[dict]:
    lines = (TASKS / "synthetic_mc.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines][:limit]


def oracle_accuracy(docs: list[dict]) -> float:
    """How often the language's exact likelihood ranks the true continuation first."""
    from sbdcli.data.prepare import derive_seed
    from sbdcli.data.synthetic import TopicMarkovSpec, build_oracle

    oracle, hits = build_oracle(TopicMarkovSpec(), derive_seed(1, "oracle")), 0
    for doc in docs:
        ctx = [oracle.bos_id, *(int(w[1:]) for w in doc["context"].split())]
        ll = [
            float(oracle.log_likelihood(torch.tensor([ctx + [int(w[1:]) for w in c.split()]])))
            for c in doc["choices"]
        ]
        hits += int(max(range(len(ll)), key=ll.__getitem__) == doc["label"])
    return hits / len(docs)


class _Req:
    def __init__(self, *args: str) -> None:
        self.args = args


def variance_row(
    run: str, k: int, docs: list[dict], device: str, estimator: str
) -> dict[str, float | str]:
    """Standard errors (nats) and accuracy of the K-draw estimate over `docs`."""
    from sbdcli.harness.lm import SbdLM

    lm = SbdLM(pretrained=run, device=device, mc=k, estimator=estimator)
    one, crn, indep, hits = [], [], [], 0
    for doc in docs:
        out = lm.loglikelihood([_Req(doc["context"], " " + c) for c in doc["choices"]])
        scores, label = lm.last_scores, doc["label"]
        hits += int(max(range(len(out)), key=lambda i: out[i][0]) == label)
        one += [s.stderr for s in scores]
        for j, other in enumerate(scores):
            if j == label:
                continue
            diff = [a - b for a, b in zip(scores[label].draws, other.draws, strict=True)]
            crn.append(statistics.stdev(diff) / math.sqrt(k))
            indep.append(math.hypot(scores[label].stderr, other.stderr))
    return {
        "k": k,
        "block": lm.block,
        "estimator": lm.estimator,
        "se_choice": statistics.mean(one),
        "se_diff_crn": statistics.mean(crn),
        "se_diff_independent": statistics.mean(indep),
        "accuracy": hits / len(docs),
    }


def variance(args: argparse.Namespace) -> None:
    docs = _docs(args.docs)
    rows = [
        variance_row(args.run, int(k), docs, args.device, form)
        for form in args.estimator.split(",")
        for k in args.k.split(",")
    ]
    print(f"{len(docs)} questions, 4 choices; oracle accuracy {oracle_accuracy(docs):.3f}\n")
    header = ("draws", "K", "B", "SE of a choice (nats)", "SE of true − distractor, shared draws",
              "same, independent draws", "accuracy")  # fmt: skip
    cells = [(r["estimator"], str(r["k"]), str(r["block"]), f"{r['se_choice']:.3f}",
              f"{r['se_diff_crn']:.3f}", f"{r['se_diff_independent']:.3f}",
              f"{r['accuracy']:.3f}") for r in rows]  # fmt: skip
    print(markdown_grid(header, cells))


def featurizer(args: argparse.Namespace) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab = {"<eot>": 0, **{f"w{i}": i + 1 for i in range(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<eot>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<eot>", eos_token="<eot>")
    torch.manual_seed(args.seed)
    cfg = GPT2Config(vocab_size=len(vocab), n_positions=256, n_embd=args.width,
                     n_layer=args.layers, n_head=4, bos_token_id=0, eos_token_id=0)  # fmt: skip
    model = GPT2LMHeadModel(cfg)
    if args.train:
        loss = train_featurizer(model, Path(args.train), args.steps, args.seed)
        what = f"trained {args.steps} steps on {args.train} (last loss {loss:.3f})"
    else:
        what = "random"
    model.save_pretrained(args.out)
    fast.save_pretrained(args.out)
    print(f"wrote a {what} {args.layers}-layer GPT-2 (width {args.width}) to {args.out}")


def train_featurizer(model: torch.nn.Module, data_dir: Path, steps: int, seed: int) -> float:
    """Next-token training on the data directory's train rows (BOS -> <eot>, w_i -> i + 1):
    a featurizer that knows the language. Returns the last batch's loss (nats/token)."""
    from sbdcli.data import load_split

    rows = load_split(data_dir, "train")  # (N, L): BOS, then content ids
    ids = torch.cat([torch.zeros_like(rows[:, :1]), rows[:, 1:] + 1], dim=1).long()
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    loss = torch.tensor(math.nan)
    for _ in range(steps):
        batch = ids[torch.randint(len(ids), (64,), generator=gen)]
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return float(loss)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.harness_measure")
    sub = parser.add_subparsers(dest="command", required=True)
    var = sub.add_parser("variance", help="SE of the loglikelihood estimate against K")
    var.add_argument("run")
    var.add_argument("--k", default="2,4,16,64")
    var.add_argument("--docs", type=int, default=None)
    var.add_argument("--estimator", default="count,time")
    var.add_argument("--device", default="cpu")
    feat = sub.add_parser("featurizer", help="a random GPT-2 over the synthetic words")
    feat.add_argument("out")
    feat.add_argument("--layers", type=int, default=4)
    feat.add_argument("--width", type=int, default=64)
    feat.add_argument("--seed", type=int, default=0)
    feat.add_argument("--train", default=None, help="train it on this data directory first")
    feat.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)
    {"variance": variance, "featurizer": featurizer}[args.command](args)


if __name__ == "__main__":
    main()

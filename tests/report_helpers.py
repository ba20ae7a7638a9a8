"""Shared helpers of the `sbd show` and `sbd report` tests: a tiny synthetic-language run,
the records of every stage kind drafted with it, their eval summaries and the report.

Used by tests/test_cli_show.py, test_html_report.py and test_report_browser.py, and run as a
script it regenerates docs/example-report.html:

    .venv/bin/python tests/report_helpers.py docs/example-report.html

Not a test module itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from fake_model import tiny_denoiser  # tests/ is on the path under pytest and as a script

V = 10  # content words of the tiny language: BOS = 10, MASK = 11
LENGTH = 24
FILES = {
    "draft": "draft.jsonl",
    "remask": "remask.jsonl",
    "revise": "revise.jsonl",
    "multi": "generate.jsonl",
    "prompted": "prompted.jsonl",
    "summaries": "summaries.jsonl",
}


@contextlib.contextmanager
def working_dir(path: Path) -> Iterator[None]:
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def sbd(*argv: str) -> None:
    """Run `sbd ARGV` in this process; fail on a non-zero exit."""
    from sbdcli.cli import main

    try:
        main(list(argv))
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise AssertionError(f"sbd {' '.join(argv)} exited {exc.code}") from None


def make_run(root: Path) -> Path:
    """root/run: a random tiny denoiser over a prepared 10-word topic-markov language."""
    from sbdcli.data import prepare_synthetic
    from sbdcli.data.synthetic import TopicMarkovSpec
    from sbdcli.model.checkpoint import save_sbd_model

    run = root / "run"
    spec = TopicMarkovSpec(vocab=V, topics=2, fanout=3)
    prepare_synthetic(
        run / "data", spec, seq_len=LENGTH, num_train=16, num_val=8, floor_samples=64, seed=1
    )
    model = tiny_denoiser(seq_len=LENGTH, vocab_size=V + 2, seed=5)
    with torch.no_grad():  # flatter logits: confidences from 0.05 to 0.6, varied words
        for p in model.parameters():
            p.mul_(0.8)
    save_sbd_model(model, run / "model.safetensors", {"model_config": model.config.to_dict()})
    return run


def make_records(root: Path) -> dict[str, Path]:
    """Records of every stage kind in root (run from root: records name `run@...`)."""
    torch.set_num_threads(1)
    make_run(root)
    f = dict(FILES)  # relative to root: the records and summaries name no machine path
    (root / "prompts.jsonl").write_text(json.dumps({"id": "p", "prompt": "w1 w2 w3"}) + "\n")
    prompts = "prompts.jsonl"
    with working_dir(root):
        sbd("draft", "-m", "run", "-n", "4", "--seed", "1", "-o", str(f["draft"]))
        sbd("remask", "--gamma", "0.25", "-i", str(f["draft"]), "-o", str(f["remask"]))
        sbd("revise", "-i", str(f["remask"]), "-o", str(f["revise"]))
        sbd("generate", "-m", "run", "-n", "3", "--stages", "4,8,full", "--gammas", "0.3",
            "-o", str(f["multi"]))  # fmt: skip
        sbd("generate", "-m", "run", "--prompts", prompts, "-n", "2", "-o", str(f["prompted"]))
        sbd("eval", "genppl", str(f["draft"]), str(f["revise"]), str(f["multi"]),
            "--evaluator", "oracle", "--out", str(f["summaries"]))  # fmt: skip
    return {k: root / v for k, v in f.items()}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def make_report(root: Path, out: Path) -> Path:
    """The example report: records of every kind and their summaries, written to `out`."""
    make_records(root)
    names = ["summaries", "draft", "remask", "revise", "multi", "prompted"]
    with working_dir(root):
        sbd("report", *[FILES[n] for n in names], "-o", str(out.resolve()), "--records", "3",
            "--title", "sbd report: example on a tiny synthetic language")  # fmt: skip
    return out


if __name__ == "__main__":  # regenerate docs/example-report.html
    import tempfile

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/example-report.html").resolve()
    with tempfile.TemporaryDirectory() as tmp:
        make_report(Path(tmp), target)
    print(f"wrote {target} ({target.stat().st_size} bytes)")

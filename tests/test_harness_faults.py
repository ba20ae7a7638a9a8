"""`sbd eval mauve` and `sbd eval harness` as the hostile and careless user meets them, by
class of fault (tests/test_cli_faults.py): names the console would read as markup, control
characters, deeply nested JSON, FIFO and /dev/fd inputs, limits, model arguments that are
not numbers or not known, and `.json` against `.jsonl`. Every refusal holds the contract
of tests/fault_helpers.py (exit 2, one line, no traceback, nothing on stdout, nothing that
existed changed); a command that succeeds on such names prints them as they are."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import threading
from pathlib import Path

import pytest
import torch

from fake_model import one_thread  # noqa: F401 (autouse fixture)
from fault_helpers import code, refused

WORDS = ["the", "a", "cat", "dog", "sees", "red", "old", "bird"]
DEEP = "[" * 100_000 + "]" * 100_000
RAW_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _texts(seed: int, n: int = 24) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(8)) + " ." for _ in range(n)]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A random 2-layer GPT-2 featurizer (also under a markup-like name), generated and
    reference texts under hostile names and in every format, and nested JSON."""
    pytest.importorskip("mauve", reason="needs the `mauve` extra (mauve-text)")
    pytest.importorskip("transformers", reason="needs the `eval` extra (transformers)")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("harnessfaults")
    vocab = ["<eot>", ".", *WORDS]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<eot>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<eot>", eos_token="<eot>")
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(vocab), n_positions=32, n_embd=16, n_layer=1, n_head=2,
                     bos_token_id=0, eos_token_id=0)  # fmt: skip
    GPT2LMHeadModel(cfg).save_pretrained(root / "feat")
    fast.save_pretrained(root / "feat")
    (root / "f[").mkdir()
    shutil.copytree(root / "feat", root / "f[" / "]x")  # the path f[/]x
    (root / "g[").mkdir()
    (root / "gen.txt").write_text("\n".join(_texts(0)) + "\n")
    (root / "g[" / "]x.txt").write_text("\n".join(_texts(0)) + "\n")
    (root / "r\x1b[2Jx.txt").write_text("\n".join(_texts(1)) + "\n")
    (root / "ref.json").write_text(json.dumps([{"text": t} for t in _texts(1)]))
    (root / "deep.jsonl").write_text('{"text": ' + DEEP + "}\n")
    (root / "deep.json").write_text(DEEP)
    return root


@pytest.fixture
def here(work, monkeypatch) -> Path:
    monkeypatch.chdir(work)
    monkeypatch.delenv("RANK", raising=False)
    return work


MAUVE = ["eval", "mauve", "--featurizer", "feat", "--device", "cpu", "--batch-size", "8"]


# --------------------------------------------------------------------------- mauve
def test_markup_and_control_characters_in_names_are_printed_as_they_are(here, capsys):
    argv = ["eval", "mauve", "g[/]x.txt", "--reference", "r\x1b[2Jx.txt", "--featurizer",
            "f[/]x", "--device", "cpu", "--batch-size", "8"]  # fmt: skip
    assert code(argv) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err and not RAW_CONTROL.search(err), err
    assert "g[/]x.txt" in err and "f[/]x" in err and "r\\x1b[2Jx.txt" in err
    assert json.loads(out)["reference"] == "r\x1b[2Jx.txt"  # the data keeps the real name


@pytest.mark.parametrize(
    "samples, reference",
    [("deep.jsonl", "gen.txt"), ("gen.txt", "deep.jsonl"), ("deep.json", "gen.txt")],
)
def test_deeply_nested_json_is_one_line(here, capsys, samples, reference):
    refused([*MAUVE, samples, "--reference", reference], here, capsys, "nested deeper than 64")


def test_a_dev_fd_input_and_a_json_document_are_read(here, capsys):
    read_end, write_end = os.pipe()

    def feed() -> None:
        with open(write_end, "w", encoding="utf-8") as handle:
            handle.write((here / "gen.txt").read_text())

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    argv = [*MAUVE, f"/dev/fd/{read_end}", "--reference", "ref.json", "--out", "m.json"]
    assert code(argv) == 0
    writer.join(timeout=30)
    os.close(read_end)
    summaries = json.loads((here / "m.json").read_text())  # .json: one document, a list
    assert isinstance(summaries, list) and summaries[0]["n"] == 24
    assert summaries[0]["settings"]["n_reference"] == 24
    (here / "m.json").unlink()


def test_a_failed_summary_write_names_the_path_asked_for(here, capsys):
    assert code([*MAUVE, "gen.txt", "--reference", "ref.json", "--out", "/proc/m.json"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    errors = [ln for ln in err.splitlines() if ln.startswith("sbd: error:")]
    assert errors == [err.strip().splitlines()[-1]] and "/proc/m.json" in errors[0], err
    assert ".tmp" not in errors[0]


# --------------------------------------------------------------------------- harness
@pytest.fixture
def lm_eval_run(here) -> Path:
    pytest.importorskip("lm_eval", reason="needs the `harness` extra (lm-eval)")
    from test_cli_sample import make_run

    if not (here / "runs").exists():
        make_run(here)
    return here / "runs" / "r1"


@pytest.mark.parametrize(
    "flags, expect",
    [
        (["--limit", "-1"], "--limit must be > 0"),
        (["--limit", "0"], "--limit must be > 0"),
        (["--model-arg", "gama=0.5"], "'gama': not a model argument"),
        (["--model-arg", "gamma"], "expected key=value"),
        (["--mc", "0"], "must be >= 1"),
        (["--model-arg", "gamma=0.5"], "needs --revise"),
        (["--model-arg", "revise_block=8"], "needs --revise"),
    ],
)
def test_bad_harness_settings_are_one_line_before_any_work(here, capsys, lm_eval_run, flags,
                                                           expect):  # fmt: skip
    argv = ["eval", "harness", "--tasks", "x", "-m", "runs/r1", "--device", "cpu", *flags]
    refused(argv, here, capsys, expect)


@pytest.mark.parametrize("value, expect", [("abc", "a finite number"), ("nan", "a finite number"),
                                           ("1.5", "an integer")])  # fmt: skip
def test_model_arguments_that_are_not_numbers_are_one_line(lm_eval_run, value, expect):
    from sbdcli.errors import UserError
    from sbdcli.harness.lm import SbdLM

    key = "draft_block" if expect == "an integer" else "gamma"
    with pytest.raises(UserError, match=f"model arg {key}={re.escape(value)}: expected {expect}"):
        SbdLM(pretrained=str(lm_eval_run), device="cpu", **{key: value})

"""Tests for evaluate/mauve.py and `sbd eval mauve` with a tiny random GPT-2 featurizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("mauve", reason="needs the `mauve` extra (mauve-text)")
pytest.importorskip("transformers", reason="needs the `eval` extra (transformers)")

from sbdcli.cli import main
from sbdcli.errors import UserError
from sbdcli.evaluate.mauve import MIN_SAMPLES, featurize, mauve_summary, read_texts


def run_main(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return int(info.value.code or 0)


WORDS = {
    "det": ["the", "a", "every", "some"],
    "adj": ["red", "old", "quick", "small", "green", "quiet"],
    "noun": ["cat", "dog", "bird", "man", "child", "horse", "fox", "king"],
    "verb": ["sees", "likes", "follows", "finds", "hears", "meets"],
    "prep": ["near", "behind", "under", "with"],
}
GRAMMAR = ("det", "adj", "noun", "verb", "det", "noun", "prep", "det", "adj", "noun")
VOCAB = ["<eot>", ".", *sorted({w for ws in WORDS.values() for w in ws})]


@pytest.fixture(scope="module")
def featurizer(tmp_path_factory) -> Path:
    """A random 2-layer GPT-2 over the toy grammar's words, saved as a local directory."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<eot>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<eot>", eos_token="<eot>")
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(VOCAB), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                     bos_token_id=0, eos_token_id=0)  # fmt: skip
    out = tmp_path_factory.mktemp("gpt2")
    GPT2LMHeadModel(cfg).save_pretrained(out)
    fast.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """Sentences of a toy grammar (11 tokens, each ending with a full stop)."""
    g = torch.Generator().manual_seed(0)

    def pick(kind: str) -> str:
        return WORDS[kind][int(torch.randint(len(WORDS[kind]), (1,), generator=g))]

    return [" ".join([*(pick(k) for k in GRAMMAR), "."]) for _ in range(240)]


def _shuffled(texts: list[str]) -> list[str]:
    """Each text's tokens in a random order."""
    g = torch.Generator().manual_seed(1)
    out = []
    for t in texts:
        words = t.split()
        out.append(" ".join(words[i] for i in torch.randperm(len(words), generator=g).tolist()))
    return out


def test_identical_sets_score_one_and_shuffled_text_far_lower(featurizer, texts):
    same = mauve_summary(texts[:120], texts[:120], featurizer, name="p", reference_name="q")
    other = mauve_summary(texts[:120], texts[120:], featurizer)
    shuffled = mauve_summary(_shuffled(texts[:120]), texts[120:], featurizer)
    assert same["mauve"] > 0.99
    assert other["mauve"] > 0.8  # two samples of the same language
    assert shuffled["mauve"] < other["mauve"] - 0.3
    assert same["n"] == 120 and same["settings"]["tokens"] == 11
    assert same["settings"]["n_reference"] == 120 and "11 tokens" in same["settings_short"]


def test_features_are_the_final_tokens_last_hidden_state(featurizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(featurizer).eval()
    ids = [[1, 2, 3, 4, 5], [6, 7], [8, 9, 10]]
    feats = featurize(model, ids, batch_size=2)  # padded batches
    for row, seq in zip(feats, ids, strict=True):
        with torch.no_grad():
            ref = model(torch.tensor([seq]), output_hidden_states=True).hidden_states[-1][0, -1]
        assert torch.allclose(torch.from_numpy(row), ref, atol=1e-5)


def test_lengths_are_matched(featurizer, texts):
    long_refs = texts[120:]
    short = [" ".join(t.split()[:8]) for t in texts[:60]]
    out = mauve_summary(short, long_refs + ["the cat"] * 10, featurizer)
    assert out["settings"]["tokens"] == 8 and out["settings"]["n_reference"] == 60


def test_too_few_samples_name_the_minimum(featurizer, texts):
    with pytest.raises(UserError, match=f"at least {MIN_SAMPLES}"):
        mauve_summary(texts[: MIN_SAMPLES - 1], texts, featurizer)


def test_a_featurizer_that_is_not_a_causal_lm_is_refused(tmp_path, texts):
    from transformers import T5Config

    T5Config(vocab_size=70, d_model=32, d_ff=64, num_layers=1, num_heads=2).save_pretrained(
        tmp_path
    )
    with pytest.raises(UserError, match="featurizer .* not a causal language model"):
        mauve_summary(texts[:40], texts[40:80], tmp_path)


def test_read_texts_of_records_jsonl_and_lines(tmp_path):
    (tmp_path / "a.txt").write_text("a cat\n\nthe dog\n")
    (tmp_path / "b.jsonl").write_text('{"text": "a"}\n{"text": "the cat"}\n')
    assert read_texts(tmp_path / "a.txt") == ["a cat", "the dog"]
    assert read_texts(tmp_path / "b.jsonl") == ["a", "the cat"]
    with pytest.raises(UserError, match="input file not found"):
        read_texts(tmp_path / "missing.txt")


def test_cli_row_and_report(featurizer, texts, tmp_path, capsys):
    gen = tmp_path / "gen.jsonl"
    gen.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[:60]))
    ref = tmp_path / "ref.txt"
    ref.write_text("\n".join(texts[60:]) + "\n")
    out = tmp_path / "mauve.jsonl"
    code = run_main(["eval", "mauve", str(gen), "--reference", str(ref), "--featurizer",
                     str(featurizer), "--out", str(out), "--device", "cpu"])  # fmt: skip
    cap = capsys.readouterr()
    assert code == 0, cap.err
    (summary,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert 0 < summary["mauve"] <= 1 and "MAUVE" in cap.err
    page = tmp_path / "r.html"
    assert run_main(["report", str(out), "-o", str(page)]) == 0
    assert "MAUVE" in page.read_text()


def test_cli_too_few_is_one_line(featurizer, texts, tmp_path, capsys):
    gen = tmp_path / "gen.txt"
    gen.write_text("\n".join(texts[:5]) + "\n")
    code = run_main(["eval", "mauve", str(gen), "--reference", str(gen), "--featurizer",
                     str(featurizer)])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and str(MIN_SAMPLES) in err[0]


def test_cli_featurizer_that_is_not_a_causal_lm_is_one_line(texts, tmp_path, capsys):
    from transformers import T5Config

    feat = tmp_path / "t5"
    T5Config(vocab_size=70, d_model=32, d_ff=64, num_layers=1, num_heads=2).save_pretrained(feat)
    gen = tmp_path / "gen.txt"
    gen.write_text("\n".join(texts[:40]) + "\n")
    code = run_main(["eval", "mauve", str(gen), "--reference", str(gen), "--featurizer",
                     str(feat)])  # fmt: skip
    cap = capsys.readouterr()
    err = cap.err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not a causal language model" in err[0]
    assert cap.out == ""

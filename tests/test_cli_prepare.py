"""Tests for `sbd prepare`: sources, manifest, one-line errors, no partial directories."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from conftest import shared_path
from sbdcli.cli import main
from sbdcli.data import load_codec, load_split, read_manifest
from sbdcli.data.synthetic import load_oracle

SMALL_SYNTH = ["--num-train", "64", "--num-val", "16", "--oracle-samples", "32"]


def run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return int(info.value.code or 0)


def corpus(tmp_path, n=40):
    docs = [f"document {i}: " + "word " * (i % 9) + "ünï" for i in range(n)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(docs), encoding="utf-8")
    return path, docs


def test_prepare_synthetic_default_source(tmp_path, capsys):
    out = tmp_path / "data"
    assert run(["prepare", "--out", str(out), "--seq-len", "32", "--seed", "3", *SMALL_SYNTH]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""  # stdout carries only data; the summary goes to stderr
    assert "oracle floor" in captured.err
    m = read_manifest(out)
    assert m["source"]["kind"] == "synthetic" and m["seed"] == 3 and m["seq_len"] == 32
    assert m["command"].startswith("sbd prepare --out") and "--seed 3" in m["command"]
    assert m["rows"] == {"train": 64, "val": 16} and m["oracle"]["samples"] == 32
    assert load_split(out).shape == (64, 32) and load_oracle(out).vocab == 64


def test_prepare_synthetic_language_flags(tmp_path):
    out = tmp_path / "data"
    flags = ["--vocab", "10", "--topics", "2", "--fanout", "3", "--alpha", "1.0", "--eps", "0"]
    assert (
        run(["prepare", "--synthetic", "topic-markov", "--out", str(out), *SMALL_SYNTH, *flags])
        == 0
    )
    m = read_manifest(out)
    assert m["source"] == {
        "kind": "synthetic",
        "name": "topic-markov",
        "vocab": 10,
        "topics": 2,
        "fanout": 3,
        "alpha": 1.0,
        "eps": 0.0,
    }
    assert m["vocab_size"] == 12 and load_split(out)[:, 1:].max() < 10
    assert (load_oracle(out).log_trans.exp() > 0).sum(-1).max() == 3  # eps 0: fanout only


def test_prepare_text_with_gpt2_tokenizer_on_tinyshakespeare(tmp_path):
    text = shared_path("data", "tinyshakespeare.txt")
    tok = shared_path("data", "gpt2-tokenizer", "tokenizer.json")
    out = tmp_path / "x"
    argv = ["prepare", "--text", str(text), "--tokenizer", str(tok), "--seq-len", "256"]
    assert run([*argv, "--out", str(out)]) == 0
    m = read_manifest(out)
    assert (m["vocab_size"], m["mask_id"], m["bos_id"], m["eos_id"]) == (50258, 50257, 50256, 50256)
    assert m["rows"]["train"] > 1000 and m["rows"]["val"] > 40 and m["seq_len"] == 256
    codec = load_codec(out)
    first = codec.decode(load_split(out)[0].tolist())
    assert first.startswith("<|endoftext|>First Citizen:\nBefore we proceed any further")


def test_prepare_jsonl_and_dataset_give_the_same_rows(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    docs = [f"doc {i} " + "abc " * (i % 5) for i in range(30)]
    with open(tmp_path / "d.jsonl", "w") as handle:
        handle.writelines(json.dumps({"body": d}) + "\n" for d in docs)
    datasets.Dataset.from_dict({"body": docs}).to_parquet(str(tmp_path / "d.parquet"))
    common = ["--field", "body", "--seq-len", "16", "--val-docs", "3"]
    assert (
        run(
            ["prepare", "--jsonl", str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "a"), *common]
        )
        == 0
    )
    argv = ["prepare", "--dataset", str(tmp_path / "d.parquet"), "--split", "train"]
    assert run([*argv, "--out", str(tmp_path / "b"), "--streaming", *common]) == 0
    assert torch.equal(load_split(tmp_path / "a"), load_split(tmp_path / "b"))
    assert torch.equal(load_split(tmp_path / "a", "val"), load_split(tmp_path / "b", "val"))
    assert read_manifest(tmp_path / "b")["source"]["streaming"] is True


def test_prepare_replaces_an_earlier_data_directory(tmp_path):
    path, _ = corpus(tmp_path)
    out = tmp_path / "data"
    assert run(["prepare", "--text", str(path), "--seq-len", "8", "--out", str(out)]) == 0
    assert run(["prepare", "--text", str(path), "--seq-len", "16", "--out", str(out)]) == 0
    assert read_manifest(out)["seq_len"] == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "data"]


# --------------------------------------------------------------------------- errors
def error_cases(tmp_path):
    path, _ = corpus(tmp_path)
    (tmp_path / "empty.txt").write_text("\n\n  \n\n")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    (tmp_path / "bad-tokenizer.json").write_text("{not json")
    (tmp_path / "d.jsonl").write_text(json.dumps({"text": "a"}) + "\n")
    txt = ["--text", str(path)]
    return {
        "missing input": (["--text", str(tmp_path / "nope.txt")], "input file not found"),
        "unreadable input": (["--text", str(tmp_path / "latin1.txt")], "not UTF-8"),
        "empty corpus": (["--text", str(tmp_path / "empty.txt")], "empty corpus"),
        "bad tokenizer": ([*txt, "--tokenizer", str(tmp_path / "bad-tokenizer.json")], "valid"),
        "missing tokenizer": ([*txt, "--tokenizer", str(tmp_path / "t.json")], "not found"),
        "bad bpe size": ([*txt, "--tokenizer", "bpe:10"], ">= 257"),
        "seq-len < 2": ([*txt, "--seq-len", "1"], "--seq-len must be >= 2"),
        "synthetic seq-len < 2": (["--seq-len", "0"], "--seq-len must be >= 2"),
        "jsonl unknown field": (["--jsonl", str(tmp_path / "d.jsonl"), "--field", "x"], "no field"),
        "dataset unknown field": (
            ["--dataset", str(tmp_path / "d.jsonl"), "--field", "x"],
            "has no field 'x'",
        ),
        "missing dataset": (["--dataset", str(tmp_path / "no-such")], "cannot load dataset"),
        "two sources": ([*txt, "--synthetic", "topic-markov"], "choose one source"),
        "unknown language": (["--synthetic", "zipf"], "unknown synthetic language"),
        "flag for another source": ([*txt, "--num-train", "5"], "does not apply to --text"),
        "both val flags": ([*txt, "--val-docs", "1", "--val-fraction", "0.1"], "not both"),
        "bad val fraction": ([*txt, "--val-fraction", "1.5"], "--val-fraction"),
        "bad language": (["--fanout", "100"], "fanout"),
        "unknown row format": ([*txt, "--row-format", "gpt"], "--row-format must be one of"),
        "row format of synthetic": (["--row-format", "bd3lm"], "does not apply to"),
    }


ERROR_CASES = [
    "missing input",
    "unreadable input",
    "empty corpus",
    "bad tokenizer",
    "missing tokenizer",
    "bad bpe size",
    "seq-len < 2",
    "synthetic seq-len < 2",
    "jsonl unknown field",
    "dataset unknown field",
    "missing dataset",
    "two sources",
    "unknown language",
    "flag for another source",
    "both val flags",
    "bad val fraction",
    "bad language",
    "unknown row format",
    "row format of synthetic",
]


@pytest.mark.parametrize("case", ERROR_CASES)
def test_errors_are_one_line_exit_2_and_leave_no_directory(tmp_path, capsys, monkeypatch, case):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    cases = error_cases(tmp_path)
    assert sorted(cases) == sorted(ERROR_CASES)
    flags, message = cases[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert run(["prepare", *flags, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("sbd: error:") and message in err[0]
    after = sorted(p.name for p in tmp_path.iterdir() if p.name != "cache")
    assert after == before and not (tmp_path / "out").exists()


def test_refuses_to_overwrite_a_directory_that_is_not_data(tmp_path, capsys):
    path, _ = corpus(tmp_path)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert run(["prepare", "--text", str(path), "--out", str(tmp_path / "mine")]) == 2
    assert "not an sbd data directory" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_failed_prepare_keeps_the_previous_directory(tmp_path):
    path, _ = corpus(tmp_path)
    (tmp_path / "empty.txt").write_text("\n")
    out = tmp_path / "data"
    assert run(["prepare", "--text", str(path), "--seq-len", "8", "--out", str(out)]) == 0
    before = (out / "manifest.json").read_text()
    assert run(["prepare", "--text", str(tmp_path / "empty.txt"), "--out", str(out)]) == 2
    assert (out / "manifest.json").read_text() == before


# --------------------------------------------------------------------------- process level
@pytest.mark.slow
def test_python_dash_m_prepare_writes_nothing_to_stdout(tmp_path):
    path, docs = corpus(tmp_path)
    out = tmp_path / "data"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    argv = ["prepare", "--text", str(path), "--seq-len", "12", "--val-docs", "2"]
    proc = subprocess.run(
        [sys.executable, "-m", "sbdcli", *argv, "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and "data written to" in proc.stderr
    codec = load_codec(out)
    stream = load_split(out)[:, 1:].flatten().tolist()
    assert codec.decode(stream).startswith(docs[0] + "<eos>" + docs[1] + "<eos>")


def test_row_format_bd3lm_rows_are_raw_stream_tokens(tmp_path, capsys):
    path, _ = corpus(tmp_path)
    common = ["prepare", "--text", str(path), "--seq-len", "16", "--val-docs", "2"]
    assert run([*common, "--out", str(tmp_path / "sbd")]) == 0
    assert run([*common, "--row-format", "bd3lm", "--out", str(tmp_path / "bd3lm")]) == 0
    assert "rows: bd3lm" in capsys.readouterr().err
    sbd, bd3 = load_split(tmp_path / "sbd", "train"), load_split(tmp_path / "bd3lm", "train")
    assert read_manifest(tmp_path / "sbd")["row_format"] == "sbd"
    assert read_manifest(tmp_path / "bd3lm")["row_format"] == "bd3lm"
    stream = sbd[:, 1:].flatten()  # the same stream, cut into 15-token bodies behind BOS
    n = min(bd3.numel(), stream.numel())
    assert bd3.flatten()[:n].tolist() == stream[:n].tolist() and bd3.shape[1] == 16


def test_bd3lm_rows_train_and_score(tmp_path, capsys):
    """Training and test perplexity take rows without BOS: position 0 is context either way
    (never masked, never counted), as BD3-LM's `ignore_bos` treats its OpenWebText rows."""
    path, _ = corpus(tmp_path, n=80)
    data, out = tmp_path / "bd3lm", tmp_path / "run"
    prep = ["prepare", "--text", str(path), "--seq-len", "16", "--val-docs", "8"]
    assert run([*prep, "--row-format", "bd3lm", "--out", str(data)]) == 0
    assert not bool((load_split(data, "train")[:, 0] == 256).all())  # rows are not BOS-first
    train = ["train", "--data", str(data), "--out", str(out), "--preset", "tiny", "--steps", "2",
             "--batch-size", "4", "--warmup", "1", "--mix", "4,16", "--val-every", "2",
             "--save-every", "2", "--val-rows", "8", "--device", "cpu"]  # fmt: skip
    assert run(train) == 0
    capsys.readouterr()
    assert run(["eval", "ppl", "-m", str(out), "--data", str(data), "--mc", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert math.isfinite(result["nelbo_per_token"]) and result["rows"] > 0

"""Tests for data/prepare.py and data/datadir.py: packing, splits, shards, manifest, loading."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import shared_path
from sbdcli.artifacts import load_tensors, sha256_file
from sbdcli.data import (
    Packer,
    ShardWriter,
    assign_splits,
    load_codec,
    load_split,
    prepare_synthetic,
    prepare_text,
    read_manifest,
)
from sbdcli.data.codec import ByteCodec
from sbdcli.data.sources import HFDataset, JsonlFiles, TextFiles
from sbdcli.data.synthetic import TopicMarkovSpec, load_oracle
from sbdcli.errors import UserError

MANIFEST_KEYS = {
    "schema",
    "schema_version",
    "source",
    "tokenizer",
    "vocab_size",
    "mask_id",
    "bos_id",
    "eos_id",
    "seq_len",
    "row_format",
    "rows",
    "tokens",
    "documents",
    "seed",
    "command",
}


def words(i: int) -> str:
    return " ".join(f"w{i}x{j}" for j in range(1 + (i * 7) % 23))


def write_corpus(path, n=60):
    docs = [words(i) for i in range(n)]
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return docs


def unpack(rows: torch.Tensor, bos: int) -> list[int]:
    """The packed stream back from rows (independent of Packer): drop column 0 (BOS)."""
    assert (rows[:, 0] == bos).all()
    return rows[:, 1:].flatten().tolist()


# --------------------------------------------------------------------------- packing
def test_packing_puts_eos_after_every_document_and_fills_rows(tmp_path):
    codec = ByteCodec()
    docs = ["abc", "", "défg", "h" * 30, "ij"]
    writer = ShardWriter(tmp_path, "train", seq_len=8, rows_per_shard=3)
    packer = Packer(writer, codec.bos_id, codec.eos_id)
    flat, lengths = codec.encode_batch(docs[:2])
    packer.add(flat, lengths)
    flat, lengths = codec.encode_batch(docs[2:])
    packer.add(flat, lengths)
    stats = packer.finish()
    stream = [t for d in docs for t in [*d.encode(), 257]]  # each document + EOS
    rows = torch.cat([load_tensors(tmp_path / s, "sbd.tokens")[0]["tokens"] for s in writer.shards])
    assert rows.dtype == torch.int32 and rows.shape == (len(stream) // 7, 8)
    assert unpack(rows, 256) == stream[: len(rows) * 7]  # full rows, nothing padded
    assert stats == {
        "rows": len(rows),
        "documents": 5,
        "stream_tokens": len(stream),
        "dropped_tokens": len(stream) % 7,
    }
    assert writer.shards == ["train-00000.safetensors", "train-00001.safetensors"]


def test_bd3lm_rows_are_l_raw_stream_tokens(tmp_path):
    """BD3-LM's OpenWebText rows (bd3lms dataloader.py `_group_texts` with
    insert_train_special=False, commit 1c3e8f43d88dfbcee5ff2aa6932a9e74b31ae1d7): documents
    + EOS concatenated and cut into rows of exactly L tokens, no BOS inserted."""
    codec = ByteCodec()
    docs = ["abc", "", "défg", "h" * 30, "ij"]
    writer = ShardWriter(tmp_path, "train", seq_len=8, rows_per_shard=3)
    packer = Packer(writer, codec.bos_id, codec.eos_id, "bd3lm")
    packer.add(*codec.encode_batch(docs[:3]))
    packer.add(*codec.encode_batch(docs[3:]))
    stats = packer.finish()
    stream = [t for d in docs for t in [*d.encode(), 257]]  # 45 tokens
    rows = torch.cat([load_tensors(tmp_path / s, "sbd.tokens")[0]["tokens"] for s in writer.shards])
    assert rows.shape == (5, 8) and rows.flatten().tolist() == stream[:40]
    assert rows[0].tolist() == [97, 98, 99, 257, 257, 100, 195, 169]  # no BOS at position 0
    assert stats["rows"] == 5 and stats["dropped_tokens"] == 5


def test_unknown_row_format_is_refused(tmp_path):
    with pytest.raises(UserError, match="`row_format` must be one of sbd, bd3lm"):
        Packer(ShardWriter(tmp_path, "train", 8, 3), 256, 257, "gpt")
    (tmp_path / "x.txt").write_text("a b c\n")
    with pytest.raises(UserError, match="`row_format`"):
        prepare_text(tmp_path / "d", TextFiles([str(tmp_path / "x.txt")]), "bytes", 8,
                     row_format="raw")  # fmt: skip
    assert not (tmp_path / "d").exists()


def test_assign_splits_last_documents_and_fraction():
    docs = [f"d{i}" for i in range(10)]
    pairs = list(assign_splits(iter(docs), 3, None))
    assert [d for v, d in pairs if not v] == docs[:7] and [d for v, d in pairs if v] == docs[7:]
    assert all(not v for v, _ in assign_splits(iter(docs), 0, 0.5))
    pairs = list(assign_splits(iter(docs * 10), None, 0.05))
    val = [i for i, (v, _) in enumerate(pairs) if v]
    assert val == [19, 39, 59, 79, 99]
    assert len(list(assign_splits(iter(docs), None, 0.05, max_docs=4))) == 4


# --------------------------------------------------------------------------- text corpora
def test_prepare_text_bytes_round_trip_and_manifest(tmp_path):
    docs = write_corpus(tmp_path / "c.txt")
    out = tmp_path / "data"
    manifest = prepare_text(out, TextFiles([str(tmp_path / "c.txt")]), "bytes", 32, val_docs=5)
    assert set(manifest) >= MANIFEST_KEYS and read_manifest(out) == manifest
    assert manifest["schema"] == "sbd.data" and manifest["tokenizer"]["kind"] == "bytes"
    assert (manifest["vocab_size"], manifest["bos_id"], manifest["eos_id"]) == (259, 256, 257)
    assert manifest["row_format"] == "sbd"  # the default: [BOS] + L - 1 tokens
    assert manifest["documents"] == {"train": 55, "val": 5}
    train, val = load_split(out, "train"), load_split(out, "val")
    assert train.dtype == torch.int64 and train.shape == (manifest["rows"]["train"], 32)
    assert manifest["tokens"]["train"] == train.numel()
    expected = "".join(d + "\x00" for d in docs[:55]).encode()  # \x00 stands for EOS
    stream = bytes(0 if t == 257 else t for t in unpack(train, 256))
    assert stream == expected[: len(stream)] and len(expected) - len(stream) < 31
    val_text = load_codec(out).decode(unpack(val, 256))
    assert val_text.startswith(docs[55] + "<eos>" + docs[56])


def test_prepare_text_shards_concatenate_to_the_same_rows(tmp_path):
    write_corpus(tmp_path / "c.txt", 200)
    src = TextFiles([str(tmp_path / "c.txt")])
    one = prepare_text(tmp_path / "one", src, "bytes", 16, val_fraction=0.1)
    many = prepare_text(tmp_path / "many", src, "bytes", 16, val_fraction=0.1, shard_tokens=160)
    assert len(one["shards"]["train"]) == 1 and len(many["shards"]["train"]) > 3
    assert torch.equal(load_split(tmp_path / "one"), load_split(tmp_path / "many"))
    assert torch.equal(load_split(tmp_path / "one", "val"), load_split(tmp_path / "many", "val"))
    assert many["documents"]["val"] == 20


def test_prepare_text_with_gpt2_tokenizer(tmp_path):
    tok = shared_path("data", "gpt2-tokenizer", "tokenizer.json")
    docs = write_corpus(tmp_path / "c.txt", 40)
    out = tmp_path / "data"
    manifest = prepare_text(out, TextFiles([str(tmp_path / "c.txt")]), str(tok), 64, val_docs=4)
    assert (manifest["vocab_size"], manifest["mask_id"], manifest["bos_id"]) == (
        50258,
        50257,
        50256,
    )
    assert (
        manifest["tokenizer"]["sha256"] == sha256_file(tok) == sha256_file(out / "tokenizer.json")
    )
    codec = load_codec(out)
    text = codec.decode(unpack(load_split(out), 50256))
    assert text.startswith(docs[0] + "<|endoftext|>" + docs[1] + "<|endoftext|>")


def test_prepare_text_trains_bpe_on_training_documents_only(tmp_path):
    (tmp_path / "c.txt").write_text("aaaa bbbb\n\n" * 30 + "zzzzzzzz qqqqqqqq\n\n" * 5)
    out = tmp_path / "data"
    manifest = prepare_text(out, TextFiles([str(tmp_path / "c.txt")]), "bpe:270", 8, val_docs=5)
    tok = manifest["tokenizer"]
    assert tok["kind"] == "bpe" and tok["trained_vocab"] == 270
    assert manifest["vocab_size"] == tok["base_vocab"] + 1 <= 271  # + [MASK]; few merges exist
    codec = load_codec(out)
    assert len(codec.encode("aaaa")) == 1  # learned from training text
    assert len(codec.encode("zzzzzzzz")) > 1  # the held-out documents were not seen


def test_worker_processes_write_the_same_rows(tmp_path):
    write_corpus(tmp_path / "c.txt", 300)
    src = TextFiles([str(tmp_path / "c.txt")])
    one = prepare_text(tmp_path / "one", src, "bpe:300", 16, val_docs=7, workers=1)
    two = prepare_text(tmp_path / "two", src, "bpe:300", 16, val_docs=7, workers=2)
    assert one["rows"] == two["rows"] and one["tokenizer"] == two["tokenizer"]
    for split in ("train", "val"):
        assert torch.equal(load_split(tmp_path / "one", split), load_split(tmp_path / "two", split))
    with pytest.raises(UserError, match="`workers` must be >= 1"):
        prepare_text(tmp_path / "zero", src, "bytes", 16, workers=0)


def test_datasets_path_equals_jsonl_path(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    docs = [words(i) for i in range(50)]
    with open(tmp_path / "d.jsonl", "w") as handle:
        handle.writelines(json.dumps({"text": d}) + "\n" for d in docs)
    datasets.Dataset.from_dict({"text": docs}).to_parquet(str(tmp_path / "d.parquet"))
    ref = prepare_text(tmp_path / "a", JsonlFiles([str(tmp_path / "d.jsonl")]), "bytes", 24)
    for name in ("d.jsonl", "d.parquet"):
        m = prepare_text(tmp_path / f"out-{name}", HFDataset(str(tmp_path / name)), "bytes", 24)
        assert m["rows"] == ref["rows"] and m["source"]["kind"] == "dataset"
        assert torch.equal(load_split(tmp_path / f"out-{name}"), load_split(tmp_path / "a"))


def test_errors_leave_no_output_and_keep_an_existing_directory(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n   \n")
    (tmp_path / "tiny.txt").write_text("ab")
    with pytest.raises(UserError, match="empty corpus"):
        prepare_text(tmp_path / "d", TextFiles([str(tmp_path / "empty.txt")]), "bytes", 8)
    with pytest.raises(UserError, match="corpus too small"):
        prepare_text(tmp_path / "d", TextFiles([str(tmp_path / "tiny.txt")]), "bytes", 8)
    with pytest.raises(UserError, match="`seq_len` must be >= 2"):
        prepare_text(tmp_path / "d", TextFiles([str(tmp_path / "tiny.txt")]), "bytes", 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.txt", "tiny.txt"]
    write_corpus(tmp_path / "c.txt")
    prepare_text(tmp_path / "d", TextFiles([str(tmp_path / "c.txt")]), "bytes", 8)
    before = read_manifest(tmp_path / "d")
    with pytest.raises(UserError, match="empty corpus"):
        prepare_text(tmp_path / "d", TextFiles([str(tmp_path / "empty.txt")]), "bytes", 8)
    assert read_manifest(tmp_path / "d") == before


def test_refuses_to_replace_a_directory_that_is_not_data(tmp_path):
    write_corpus(tmp_path / "c.txt")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("keep me")
    with pytest.raises(UserError, match="not an sbd data directory"):
        prepare_text(tmp_path / "mine", TextFiles([str(tmp_path / "c.txt")]), "bytes", 8)
    assert (tmp_path / "mine" / "precious.txt").read_text() == "keep me"


def test_load_split_errors(tmp_path):
    with pytest.raises(UserError, match="data manifest not found"):
        load_split(tmp_path)
    write_corpus(tmp_path / "c.txt")
    prepare_text(tmp_path / "d", TextFiles([str(tmp_path / "c.txt")]), "bytes", 8, val_docs=0)
    with pytest.raises(UserError, match="has no val rows"):
        load_split(tmp_path / "d", "val")
    with pytest.raises(UserError, match="unknown split"):
        load_split(tmp_path / "d", "test")


# --------------------------------------------------------------------------- synthetic
def test_prepare_synthetic_is_deterministic_per_seed(tmp_path):
    kwargs = {"num_train": 300, "num_val": 40, "floor_samples": 64}
    a = prepare_synthetic(tmp_path / "a", seq_len=24, seed=5, **kwargs)
    b = prepare_synthetic(tmp_path / "b", seq_len=24, seed=5, shard_tokens=24 * 100, **kwargs)
    c = prepare_synthetic(tmp_path / "c", seq_len=24, seed=6, **kwargs)
    for split in ("train", "val"):
        assert torch.equal(load_split(tmp_path / "a", split), load_split(tmp_path / "b", split))
    assert not torch.equal(load_split(tmp_path / "a"), load_split(tmp_path / "c"))
    assert a["oracle"] == b["oracle"] and a["oracle"] != c["oracle"]
    assert len(b["shards"]["train"]) == 3


def test_prepare_synthetic_manifest_oracle_and_rows(tmp_path):
    spec = TopicMarkovSpec(vocab=16, topics=3)
    m = prepare_synthetic(tmp_path / "d", spec, 20, num_train=200, num_val=30, floor_samples=100)
    assert set(m) >= MANIFEST_KEYS
    assert (m["vocab_size"], m["bos_id"], m["mask_id"], m["eos_id"]) == (18, 16, 17, None)
    assert m["rows"] == {"train": 200, "val": 30} and m["tokens"]["train"] == 200 * 20
    train = load_split(tmp_path / "d")
    assert (train[:, 0] == 16).all() and train[:, 1:].max() < 16
    oracle = load_oracle(tmp_path / "d")
    assert m["oracle"]["sha256"] == sha256_file(tmp_path / "d" / "oracle.safetensors")
    # the floor is the oracle's mean NLL per content token on fresh samples: the training
    # rows are such samples, so their NLL agrees within a few standard errors
    nll = (-oracle.log_likelihood(train) / 19).mean().item()
    assert abs(nll - m["oracle"]["nll_per_token"]) < 6 * m["oracle"]["nll_per_token_stderr"]
    assert m["oracle"]["samples"] == 100
    codec = load_codec(tmp_path / "d")
    assert codec.kind == "synthetic" and codec.decode(train[0, :3].tolist()).startswith("<bos> w")


def test_numpy_rows_are_int32(tmp_path):
    writer = ShardWriter(tmp_path, "val", 4, 10)
    writer.add(np.arange(8, dtype=np.int64).reshape(2, 4))
    writer.close()
    tensors, header = load_tensors(tmp_path / "val-00000.safetensors", "sbd.tokens")
    assert tensors["tokens"].dtype == torch.int32 and header["split"] == "val"


def test_data_label_names_what_a_data_directory_holds(tmp_path):
    """The name runs are given after their data (`runs/tiny-topic-markov-<time>`)."""
    from sbdcli.data import prepare_synthetic
    from sbdcli.data.datadir import data_label

    syn = tmp_path / "syn"
    prepare_synthetic(syn, seq_len=16, num_train=8, num_val=8, floor_samples=16)
    assert data_label(syn) == "topic-markov"
    sources = {
        "text": {"kind": "text", "paths": ["/x/tiny shakespeare.txt"]},
        "dataset": {"kind": "dataset", "name": "Skylion007/openwebtext"},
        "old": "test",  # an older manifest's source string: the directory's name
    }
    labels = {}
    for name, source in sources.items():
        d = tmp_path / f"{name} dir"
        d.mkdir()
        manifest = {"schema": "sbd.data", "schema_version": 1, "source": source}
        (d / "manifest.json").write_text(json.dumps(manifest))
        labels[name] = data_label(d)
    assert labels == {"text": "tiny-shakespeare", "dataset": "openwebtext", "old": "old-dir"}

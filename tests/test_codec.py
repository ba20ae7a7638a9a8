"""Tests for tokenizers and the Codec: byte, GPT-2 file, trained BPE, synthetic."""

from __future__ import annotations

import pytest

from conftest import shared_path
from sbdcli.data.codec import (
    ByteCodec,
    SyntheticCodec,
    TokenizerCodec,
    codec_from_manifest,
    parse_bpe_size,
    read_tokenizer_file,
    train_bpe,
)
from sbdcli.errors import UserError

NON_ASCII = "naïve café — Ünïcödé 日本語 テキスト 🙂🚀\nline two\ttab"


def test_byte_round_trip_with_non_ascii_text():
    codec = ByteCodec()
    ids = codec.encode(NON_ASCII)
    assert ids == list(NON_ASCII.encode("utf-8"))  # independent: Python's own UTF-8
    assert len(ids) > len(NON_ASCII) and max(ids) < 256
    assert codec.decode(ids) == NON_ASCII
    assert (codec.vocab_size, codec.bos_id, codec.eos_id, codec.mask_id) == (259, 256, 257, 258)


def test_byte_decode_names_special_ids_and_can_skip_them():
    codec = ByteCodec()
    ids = [256, *"hé".encode(), 258, 258, *b"!", 257]
    assert codec.decode(ids) == "<bos>hé[MASK][MASK]!<eos>"
    assert codec.decode(ids, skip_special=True) == "hé!"


def test_byte_encode_batch_lengths_are_utf8_lengths():
    flat, lengths = ByteCodec().encode_batch(["a", "é", "", "日本"])
    assert lengths.tolist() == [1, 2, 0, 6] and len(flat) == 9


def test_gpt2_tokenizer_round_trip_on_tinyshakespeare():
    from tokenizers import Tokenizer

    path = shared_path("data", "gpt2-tokenizer", "tokenizer.json")
    text = shared_path("data", "tinyshakespeare.txt").read_text(encoding="utf-8")
    codec = TokenizerCodec.from_tokenizer(read_tokenizer_file(path), "file", source=str(path))
    assert (codec.vocab_size, codec.mask_id, codec.bos_id, codec.eos_id) == (
        50258,
        50257,
        50256,
        50256,
    )
    ids = codec.encode(text)
    reference = Tokenizer.from_file(str(path)).encode(text[:5000]).ids
    assert ids[: len(reference) - 5] == reference[:-5]  # same ids as the tokenizer itself
    assert max(ids) < 50256 and len(ids) < len(text) / 2.5
    assert codec.decode(ids) == text
    assert codec.decode([50256, *ids[:2], 50257]) == "<|endoftext|>First Citizen[MASK]"
    assert codec.decode([50256, *ids[:2], 50257], skip_special=True) == "First Citizen"


def test_gpt2_encode_batch_matches_per_document_encode():
    path = shared_path("data", "gpt2-tokenizer", "tokenizer.json")
    codec = TokenizerCodec.from_tokenizer(read_tokenizer_file(path), "file")
    docs = ["Hello world.", "", " leading space", "日本語 🙂"]
    flat, lengths = codec.encode_batch(docs)
    per_doc = [codec.tokenizer.encode(d, add_special_tokens=False).ids for d in docs]
    assert lengths.tolist() == [len(p) for p in per_doc]
    assert flat.tolist() == [t for p in per_doc for t in p]


def test_trained_bpe_round_trips_and_is_deterministic():
    docs = ["the cat sat on the mat", "the dog sat on the log", "naïve café 🙂"] * 20
    a, b = train_bpe(iter(docs), 300), train_bpe(iter(docs), 300)
    assert a.to_str() == b.to_str()
    codec = TokenizerCodec.from_tokenizer(a, "bpe")
    assert codec.eos_id == codec.bos_id == 0 and codec.mask_id == codec.vocab_size - 1
    ids = codec.encode("the cat sat on the log; naïve 🙂")
    assert codec.decode(ids) == "the cat sat on the log; naïve 🙂"
    assert len(ids) < len("the cat sat on the log; naïve 🙂".encode())  # merges were learned


def test_tokenizer_without_end_of_text_gets_appended_ids():
    tokenizer = train_bpe(iter(["abc abd"]), 260)  # has <|endoftext|> at 0
    codec = TokenizerCodec.from_tokenizer(tokenizer, "bpe")
    assert codec.info["appended"] == ["[MASK]"]

    from tokenizers import Tokenizer, models

    bare = Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    codec = TokenizerCodec.from_tokenizer(bare, "file")
    assert codec.info["appended"] == ["<|endoftext|>", "[MASK]"]
    assert (codec.eos_id, codec.bos_id, codec.mask_id, codec.vocab_size) == (3, 3, 4, 5)


def test_bad_tokenizer_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="tokenizer file not found"):
        read_tokenizer_file(tmp_path / "nope.json")
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"not": "a tokenizer"}')
    with pytest.raises(UserError, match="not a valid tokenizer.json"):
        read_tokenizer_file(bad)
    for spec in ("bpe:abc", "bpe:100"):
        with pytest.raises(UserError, match=">= 257"):
            parse_bpe_size(spec)


def test_synthetic_codec_round_trip_and_errors():
    codec = SyntheticCodec(64)
    assert codec.encode("w12 w0 w63") == [12, 0, 63]
    assert codec.decode([64, 12, 65, 3]) == "<bos> w12 [MASK] w3"
    assert codec.decode([64, 12, 65, 3], skip_special=True) == "w12 w3"
    assert codec.encode(codec.decode([64, 1, 2, 65])) == [64, 1, 2, 65]
    for bad in ("w64", "hello", "w-1"):
        with pytest.raises(UserError, match="not a token"):
            codec.encode(bad)


def test_codec_from_manifest_checks_the_tokenizer_file(tmp_path):
    tokenizer = train_bpe(iter(["some text here"] * 5), 270)
    codec = TokenizerCodec.from_tokenizer(tokenizer, "bpe")
    codec.save(tmp_path / "tokenizer.json")
    info = codec.describe()
    back = codec_from_manifest({"tokenizer": info}, tmp_path)
    assert back.encode("some text") == codec.encode("some text")
    info["sha256"] = "0" * 64
    with pytest.raises(UserError, match="differs from the tokenizer"):
        codec_from_manifest({"tokenizer": info}, tmp_path)
    with pytest.raises(UserError, match="unknown tokenizer kind"):
        codec_from_manifest({"tokenizer": {"kind": "sentencepiece"}}, tmp_path)

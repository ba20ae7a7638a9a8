"""Tests for document sources: text files, JSONL files, local `datasets` files."""

from __future__ import annotations

import json

import pytest

import sbdcli.data.sources as sources
from sbdcli.data.sources import HFDataset, JsonlFiles, TextFiles, expand_paths
from sbdcli.errors import UserError

TEXT = "First doc\nline two\n\n\nSecond doc\n  \n\t\nThird, ünïcode\r\n\r\nFourth\n"
DOCS = ["First doc\nline two", "Second doc", "Third, ünïcode", "Fourth"]


def collect(source, advance=None):
    return list(source.documents(advance))


def test_blank_lines_separate_documents(tmp_path):
    (tmp_path / "a.txt").write_text(TEXT, encoding="utf-8")
    seen = []
    src = TextFiles([str(tmp_path / "a.txt")])
    assert collect(src, seen.append) == DOCS
    assert sum(seen) == src.total == len(TEXT.encode())
    assert src.unit == "bytes" and src.describe()["doc_sep"] == "blank line"


def test_split_is_the_same_across_block_boundaries(tmp_path, monkeypatch):
    text = "".join(f"doc {i} " + "x" * (i % 7) + "\n\n" for i in range(300))
    text += "a<|endoftext|>b"
    (tmp_path / "a.txt").write_text(text)
    whole = collect(TextFiles([str(tmp_path / "a.txt")]))
    sep_whole = collect(TextFiles([str(tmp_path / "a.txt")], "<|endoftext|>"))
    for block in (1, 3, 5, 64):
        monkeypatch.setattr(sources, "BLOCK", block)
        assert collect(TextFiles([str(tmp_path / "a.txt")])) == whole
        assert collect(TextFiles([str(tmp_path / "a.txt")], "<|endoftext|>")) == sep_whole
    assert len(whole) == 301 and whole[0] == "doc 0 " and len(sep_whole) == 2


def test_custom_separator_and_several_files(tmp_path):
    (tmp_path / "b.txt").write_text("one\n<|endoftext|>\ntwo<|endoftext|><|endoftext|>three\n")
    (tmp_path / "c.txt").write_text("four")
    src = TextFiles([str(tmp_path / "b.txt"), str(tmp_path / "c.txt")], "<|endoftext|>")
    assert collect(src) == ["one", "two", "three", "four"]
    assert collect(TextFiles([str(tmp_path)], "<|endoftext|>")) == ["one", "two", "three", "four"]
    assert collect(TextFiles([str(tmp_path / "*.txt")], "<|endoftext|>"))[-1] == "four"


def test_missing_and_non_utf8_inputs_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="input file not found"):
        TextFiles([str(tmp_path / "missing.txt")])
    (tmp_path / "bad.txt").write_bytes(b"fine\n\nbad \xff\xfe here")
    with pytest.raises(UserError, match=r"not UTF-8 text \(near byte 10\)"):
        collect(TextFiles([str(tmp_path / "bad.txt")]))
    with pytest.raises(UserError, match="`doc_sep` must not be empty"):
        TextFiles([str(tmp_path / "bad.txt")], "")
    with pytest.raises(UserError, match="not found"):
        expand_paths([str(tmp_path / "*.nothing")], "input file")


def test_jsonl_field_and_errors(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = [json.dumps({"text": d, "n": i}) for i, d in enumerate(DOCS)]
    path.write_text("\n".join([*lines, "", json.dumps({"text": " ", "n": 9})]) + "\n")
    assert collect(JsonlFiles([str(path)])) == DOCS  # blank lines and documents skipped
    with pytest.raises(UserError, match=r"d.jsonl:1: no field 'body' \(fields: n, text\)"):
        collect(JsonlFiles([str(path)], "body"))
    with pytest.raises(UserError, match="field 'n' is not a string"):
        collect(JsonlFiles([str(path)], "n"))
    path.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(UserError, match="d.jsonl:2: not valid JSON"):
        collect(JsonlFiles([str(path)]))


@pytest.fixture
def local_files(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    table = datasets.Dataset.from_dict({"body": DOCS, "id": list(range(len(DOCS)))})
    table.to_parquet(str(tmp_path / "d.parquet"))
    table.to_json(str(tmp_path / "d.jsonl"))
    return tmp_path


@pytest.mark.parametrize("name", ["d.parquet", "d.jsonl"])
@pytest.mark.parametrize("streaming", [False, True])
def test_datasets_reads_local_files(local_files, name, streaming):
    src = HFDataset(str(local_files / name), field="body", streaming=streaming)
    seen = []
    assert collect(src, seen.append) == DOCS
    assert sum(seen) == len(DOCS) and src.unit == "docs"
    assert src.total == (None if streaming else len(DOCS))
    assert src.describe()["field"] == "body"


def test_datasets_unknown_field_and_missing_dataset(local_files):
    with pytest.raises(UserError, match=r"has no field 'text' \(fields: body, id\)"):
        HFDataset(str(local_files / "d.parquet"))
    with pytest.raises(UserError, match=r"has no field 'text' \(fields: body, id\)"):
        HFDataset(str(local_files / "d.jsonl"), streaming=True)
    with pytest.raises(UserError, match="cannot load dataset"):
        HFDataset(str(local_files / "no-such-dataset-dir"))


def test_datasets_saved_to_disk(local_files):
    import datasets

    datasets.Dataset.from_dict({"text": DOCS}).save_to_disk(str(local_files / "saved"))
    assert collect(HFDataset(str(local_files / "saved"))) == DOCS

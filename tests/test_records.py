"""Tests for artifacts/records.py: the typed record, validation, JSONL and bundle round trips."""

from __future__ import annotations

import pytest
import torch

from sbdcli import artifacts
from sbdcli.artifacts.records import REQUIRED_KEYS, Record, StageEntry, group_by_length
from sbdcli.errors import UserError


def make_record(i: int = 0, length: int = 6) -> dict:
    return {
        "id": f"s{i}",
        "tokens": list(range(length)),
        "confidence": [1.0] + [0.5] * (length - 1),
        "masked": [2, 4],
        "prompt_len": 1,
        "nfe": 3,
        "stages": [{"name": "draft", "block_size": 2}],
        "text": "abc",
        "model": "runs/x@deadbeef",
        "step": list(range(length)),
    }


def test_validate_accepts_good_record():
    rec = make_record()
    assert artifacts.validate_record(rec, 0, vocab_size=10) is rec


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tokens": "abc"}, "field 'tokens' has the wrong type"),
        ({"masked": [4, 2]}, "strictly ascending"),
        ({"masked": [2, 9]}, "outside"),
        ({"masked": [0]}, "prompt position 0"),
        ({"confidence": [0.5] * 3}, "3 values for 6 tokens"),
        ({"confidence": [1.5] * 6}, r"probabilities in \[0, 1\]"),
        ({"tokens": [0, 1, 2, 3, 4, 99]}, "token id 99 is outside the vocabulary"),
        ({"nfe": -1}, "'nfe' must be >= 0"),
        ({"stages": [{}]}, r"stages\[0\]"),
        ({"prompt_len": 7}, "prompt_len"),
    ],
)
def test_validate_names_record_and_field(change, message):
    rec = make_record(3)
    rec.update(change)
    with pytest.raises(UserError, match=message) as info:
        artifacts.validate_record(rec, 3, vocab_size=10)
    assert "record 3 (id 's3')" in str(info.value)


def test_validate_missing_field():
    rec = make_record()
    del rec["nfe"]
    with pytest.raises(UserError, match="missing field 'nfe'"):
        artifacts.validate_record(rec)


@pytest.mark.parametrize("suffix", [".jsonl", ".safetensors"])
def test_records_roundtrip(tmp_path, suffix):
    records = [make_record(0), make_record(1, length=4)]
    records[1]["masked"] = []
    records[1]["scores"] = [0.1, 0.2, 0.3, 0.4]
    path = str(tmp_path / f"r{suffix}")
    assert artifacts.write_records(iter(records), path) == 2
    back = list(artifacts.read_records(path))
    assert back == records


def test_bundle_of_wrong_schema_is_rejected(tmp_path):
    path = tmp_path / "x.safetensors"
    artifacts.save_tensors(path, {"tokens": torch.zeros(2, 3)}, "sbd.data")
    with pytest.raises(UserError, match="expected 'sbd.records'"):
        list(artifacts.read_records(str(path)))


def test_failed_record_write_leaves_no_file(tmp_path):
    path = tmp_path / "out.jsonl"

    def records():
        yield make_record(0)
        raise UserError("upstream failed")

    with pytest.raises(UserError):
        artifacts.write_records(records(), str(path))
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"nfe": True}, "field 'nfe' has the wrong type"),
        ({"tokens": [0, 1, 2.5, 3, 4, 5]}, "field 'tokens' must be a list of integers"),
        ({"masked": [2.0]}, "field 'masked' must be a list of integers"),
        ({"confidence": ["x"] * 6}, "field 'confidence' must be a list of numbers"),
        ({"confidence": [float("nan")] * 6}, r"probabilities in \[0, 1\]"),
        ({"stages": [{"name": 3}]}, r"stages\[0\] must be an object with a 'name'"),
    ],
)
def test_validate_checks_types_inside_lists(change, message):
    rec = make_record(1)
    rec.update(change)
    with pytest.raises(UserError, match=message):
        artifacts.validate_record(rec, 1)


def test_validate_keeps_unknown_fields():
    rec = make_record()
    rec["my_tool"] = {"anything": [1, 2]}
    assert artifacts.validate_record(rec)["my_tool"] == {"anything": [1, 2]}


def test_typed_record_matches_the_checked_fields():
    assert set(REQUIRED_KEYS) == Record.__required_keys__
    assert Record.__optional_keys__ == {"confidence_nucleus", "step", "scores", "stop"}
    assert StageEntry.__required_keys__ == {"name"}


def test_docs_describe_every_field():
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "records.md").read_text()
    keys = Record.__required_keys__ | Record.__optional_keys__ | StageEntry.__optional_keys__
    assert [k for k in sorted(keys) if f"`{k}`" not in text] == []


def test_group_by_length():
    records = [make_record(0, 6), make_record(1, 4), make_record(2, 6)]
    assert group_by_length(records) == {6: [0, 2], 4: [1]}
    assert group_by_length([]) == {}


def test_bundle_layout(tmp_path):
    records = [make_record(0, 6), make_record(1, 4)]
    records[1]["masked"] = [3]
    records[0]["scores"] = [1.0] * 6  # only one record has scores: stays in the JSON header
    path = tmp_path / "b.safetensors"
    artifacts.save_record_bundle(path, records)
    tensors, header = artifacts.load_tensors(path, schema="sbd.records")
    assert header["schema_version"] == 1
    assert header["per_token"] == ["confidence", "masked", "step", "tokens"]
    assert tensors["lengths"].tolist() == [6, 4]
    assert tensors["tokens"].dtype == torch.int64 and tensors["step"].dtype == torch.int64
    assert tensors["confidence"].dtype == torch.float64
    assert tensors["masked"].nonzero().flatten().tolist() == [2, 4, 9]
    assert "scores" in header["records"][0] and "tokens" not in header["records"][0]
    assert artifacts.load_record_bundle(path) == records


def test_bundle_errors(tmp_path):
    with pytest.raises(UserError, match="no records to write"):
        artifacts.save_record_bundle(tmp_path / "e.safetensors", [])
    newer = tmp_path / "n.safetensors"
    lengths = {"lengths": torch.tensor([1])}
    artifacts.save_tensors(newer, lengths, "sbd.records", {"records": [{}], "per_token": []}, 2)
    with pytest.raises(UserError, match="record bundle version is newer"):
        artifacts.load_record_bundle(newer)


@pytest.mark.parametrize(("stage", "how"), [("draft", "drafted by a model"),
                                            ("encode", "encoded for a vocabulary")])  # fmt: skip
def test_another_vocabulary_is_named_by_how_the_record_came(stage, how):
    from sbdcli.artifacts.records import ModelIds

    rec = make_record()
    rec["stages"] = [{"name": stage, "vocab_size": 12, "mask_id": 11, "bos_id": 10}]
    with pytest.raises(
        UserError, match=f"record 0 .*{how} with vocab_size 12.* m has vocab_size 10"
    ):
        artifacts.validate_record(rec, 0, model=ModelIds("m", 10, 9, 8))

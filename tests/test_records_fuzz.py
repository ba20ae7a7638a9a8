"""Fuzzing the record reader (artifacts/records.py): arbitrary bytes and arbitrary JSON
never raise anything but the one user error."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sbdcli.artifacts.records import read_records
from sbdcli.errors import UserError

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=20,
)
FIELDS = ["id", "tokens", "confidence", "masked", "prompt_len", "nfe", "stages", "text", "model"]
RECORDISH = st.fixed_dictionaries({}, optional={k: JSON for k in FIELDS})
VALID = {
    "id": "r0",
    "tokens": [3, 4, 5],
    "confidence": [1.0, 0.5, 0.25],
    "masked": [2],
    "prompt_len": 1,
    "nfe": 2,
    "stages": [{"name": "draft"}],
    "text": "",
    "model": "m",
}
"""A valid record: the mutations below reach the checks behind the type checks."""
NEAR_INTS = st.integers(-3, 60) | st.booleans() | st.floats(allow_nan=True) | st.none()
NEAR = {
    "tokens": st.lists(NEAR_INTS, max_size=4),
    "confidence": st.lists(NEAR_INTS, max_size=4),
    "masked": st.lists(NEAR_INTS, max_size=4),
    "prompt_len": NEAR_INTS,
    "nfe": NEAR_INTS,
    "stages": st.lists(JSON, max_size=2),
}
MUTATED = st.fixed_dictionaries({}, optional={k: NEAR.get(k, JSON) for k in FIELDS}).map(
    lambda changes: {**VALID, **changes}
)


def _read(data: bytes, suffix: str = ".jsonl") -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"in{suffix}"
        path.write_bytes(data)
        try:
            for _ in read_records(str(path), vocab_size=50):
                pass
        except UserError:
            pass


FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_user_errors(data):
    _read(data)
    _read(data, ".safetensors")


@FUZZ
@given(st.lists(JSON, max_size=4))
def test_arbitrary_json_lines_raise_only_user_errors(values):
    _read("".join(json.dumps(v) + "\n" for v in values).encode())


@FUZZ
@given(st.lists(RECORDISH, min_size=1, max_size=3))
def test_record_like_objects_raise_only_user_errors(records):
    _read("".join(json.dumps(r) + "\n" for r in records).encode())


@FUZZ
@given(st.lists(MUTATED, min_size=1, max_size=3))
def test_almost_valid_records_raise_only_user_errors(records):
    _read("".join(json.dumps(r) + "\n" for r in records).encode())

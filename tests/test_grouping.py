"""Tests for evaluate/grouping.py (and the costs of a group): stage history, settings."""

from __future__ import annotations

import pytest

from evaluate_helpers import make_record
from sbdcli.evaluate import (
    costs,
    group_records,
    sampler_settings,
    short_settings,
    stage_signature,
)
from sbdcli.evaluate.grouping import group_labels


def test_records_group_by_stage_history_not_by_seed_or_cost():
    draft = {"name": "draft", "block_size": 4, "top_p": 0.9, "seed": 1, "nfe": 8, "seconds": 0.5}
    draft2 = {**draft, "seed": 2, "nfe": 9, "seconds": 0.7, "batch_size": 3, "model": "m@1"}
    remask = {"name": "remask", "gamma": 0.25, "strategy": "snapshot", "seed": 0, "n_masked": 2}
    revise = {"name": "revise", "block_size": 16, "seed": 0, "nfe": 4, "seconds": 0.25}
    recs = [
        make_record([9, 1, 2], stages=[draft], nfe=8),
        make_record([9, 1, 2], stages=[draft2], nfe=9),
        make_record([9, 1, 2], stages=[draft, remask, revise], nfe=12),
    ]
    groups = group_records(recs)
    assert [len(g) for _, g in groups] == [2, 1]
    assert groups[0][0] == "draft(block_size=4, top_p=0.9)"
    assert stage_signature(recs[2]).endswith("revise(block_size=16)")
    settings = sampler_settings(groups[0][1])
    assert settings["stages"][0]["seeds"] == [1, 2]
    c = costs(groups[0][1])
    assert c["nfe_per_sample"] == 8.5
    assert c["seconds_per_sample"] == pytest.approx(0.6)
    assert c["tokens_per_second"] == pytest.approx(4 / 1.2)
    assert costs(groups[1][1])["seconds_per_sample"] == pytest.approx(0.75)


def test_short_settings():
    draft = {"name": "draft", "block_size": 4, "top_p": 0.9, "dtype": "float64", "seed": 1}
    remask = {"name": "remask", "strategy": "snapshot", "gamma": 0.25, "seed": 4}
    revise = {"name": "revise", "block": "full", "block_size": 32, "temperature": 1.0, "seed": 6}
    recs = [make_record([9, 1, 2], stages=[draft, remask, revise]),
            make_record([9, 1], stages=[{**draft, "seed": 2}, remask, revise])]  # fmt: skip
    line = short_settings(sampler_settings(recs))
    want = "draft B4 p0.9 float64 seed 1… · remask snapshot γ0.25 seed 4 · revise Bfull seed 6"
    assert line == want


def test_group_labels_are_the_short_settings_and_tell_groups_apart():
    draft = {"name": "draft", "block_size": 4, "steps_per_block": 2, "top_p": 0.9,
             "cache": "exact", "compile": False, "refresh": None, "seed": 1}  # fmt: skip
    approx = {**draft, "cache": "approx", "refresh": 4}
    remask = {"name": "remask", "gamma": 0.25, "strategy": "snapshot", "seed": 0}
    revise = {"name": "revise", "block": "full", "block_size": 32, "seed": 0}
    recs = [
        make_record([9, 1, 2], stages=[draft]),
        make_record([9, 1, 2], stages=[approx]),
        make_record([9, 1, 2], stages=[draft, remask, revise]),
    ]
    labels = group_labels(group_records(recs))
    assert labels == [
        "draft B4 S2 p0.9 (draft cache exact, draft refresh none)",
        "draft B4 S2 p0.9 (draft cache approx, draft refresh 4)",
        "draft B4 S2 p0.9 · remask snapshot γ0.25 · revise Bfull",
    ]
    assert not any("=" in label or "None" in label or "False" in label for label in labels)


def test_encoded_texts_of_different_lengths_form_one_group():
    """A file of texts is one set: its length-dependent entries (the encode entry's counts,
    a full revise block's size) do not split it, so its declared count is met."""

    def entry(n: int, markers: int) -> list[dict]:
        encode = {"name": "encode", "n_tokens": n, "windows": 1, "n_markers": markers,
                  "seq_len": 128, "mask_token": "[MASK]", "n_records": 2, "nfe": 0}  # fmt: skip
        revise = {"name": "revise", "block": "full", "block_size": n + 1, "top_p": 0.9, "seed": 0}
        return [encode, revise]

    recs = [
        make_record([9, 1, 2, 3], stages=entry(3, 1), nfe=1),
        make_record([9, 1, 2, 3, 4, 5], stages=entry(5, 2), nfe=2),
    ]
    ((signature, group),) = group_records(recs)
    assert len(group) == 2 and "block_size" not in signature and "n_tokens" not in signature
    assert "seq_len=128" in signature  # a setting still splits
    other = make_record([9, 1, 2], stages=[{**entry(2, 1)[0], "seq_len": 64}, entry(2, 1)[1]])
    assert len(group_records([*recs, other])) == 2
    # a revise with a numeric block keeps its size as a setting
    fixed = [{"name": "revise", "block": 4, "block_size": 4}, {"name": "revise", "block_size": 8}]
    assert len(group_records([make_record([9, 1], stages=[s]) for s in fixed])) == 2

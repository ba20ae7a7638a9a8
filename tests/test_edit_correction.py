"""Tests for experiments/edit_correction.py's arithmetic: the corruption replaces exactly
round(rho (L-1)) positions by other words, and recall, precision and restored words are
counted from `sbd edit` records as defined (the driver itself runs `sbd edit`)."""

from __future__ import annotations

import torch
from experiments.edit_correction import corrupt, nll_per_token, score

from sbdcli.data.synthetic import load_oracle


def test_corrupt_replaces_k_positions_by_other_words():
    true = torch.randint(0, 12, (5, 21), generator=torch.Generator().manual_seed(0))
    bad, where = corrupt(true, 0.1, 12, seed=3)
    for row, pos in enumerate(where):
        assert len(pos) == 2 and 0 not in pos  # round(0.1 * 20), never the first token
        diff = (bad[row] != true[row]).nonzero().flatten().tolist()
        assert diff == pos
    assert corrupt(true, 0.1, 12, seed=3)[1] == where  # seeded
    same = corrupt(true, 0.1, torch.arange(12), seed=3)[0]
    assert same.equal(bad)  # vocab V and the alphabet 0..V-1 draw alike


def test_corrupt_draws_replacements_from_the_alphabet_only():
    alphabet = torch.tensor([10, 32, 65, 97, 101])  # e.g. the characters a text uses
    true = alphabet[torch.randint(0, 5, (4, 41), generator=torch.Generator().manual_seed(1))]
    bad, where = corrupt(true, 0.2, alphabet, seed=2)
    for row, pos in enumerate(where):
        assert len(pos) == 8
        assert (bad[row, pos] != true[row, pos]).all()
        assert torch.isin(bad[row], alphabet).all()


def test_score_counts_recall_precision_and_restored(data_dir):
    oracle = load_oracle(data_dir / "oracle.safetensors")
    true = oracle.sample(2, 8, torch.Generator().manual_seed(0))
    where = [[1, 2], [5, 6]]
    edited = true.clone()
    edited[1, 6] = (edited[1, 6] + 1) % oracle.vocab  # one corrupted word not restored
    recs = [
        {"id": "t1", "tokens": edited[0].tolist(), "stages": [{"positions": [1, 2, 3, 4]}]},
        {"id": "t2", "tokens": edited[1].tolist(), "stages": [{"positions": [6]}]},
    ]
    got = score(recs, true, where, lambda tokens: nll_per_token(oracle, tokens))
    assert got["recall"] == 3 / 4 and got["precision"] == 3 / 5 and got["restored"] == 3 / 4
    assert got["nll_edited"] > nll_per_token(oracle, true) or edited.equal(true)

"""Tests for experiments/harness_measure.py: the standard-error table and the featurizer."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("lm_eval", reason="needs the `harness` extra (lm-eval)")
pytest.importorskip("transformers", reason="needs the `eval` extra (transformers)")

from experiments.harness_measure import _docs, main, oracle_accuracy, variance_row

from test_harness import run  # noqa: F401  (the random run fixture)


def test_variance_rows_of_both_forms(run):  # noqa: F811
    docs = _docs(3)
    count = variance_row(str(run), 4, docs, "cpu", "count")
    time = variance_row(str(run), 4, docs, "cpu", "time")
    assert count["estimator"] == "count" and time["estimator"] == "time" and count["block"] == 4
    for row in (count, time):
        assert all(math.isfinite(row[k]) and row[k] > 0 for k in ("se_choice", "se_diff_crn"))
        assert row["accuracy"] in (0.0, 1 / 3, 2 / 3, 1.0)
    assert count["se_choice"] < time["se_choice"]
    assert oracle_accuracy(docs) == 1.0


def test_the_featurizer_is_a_causal_lm_over_the_words(tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    main(["featurizer", str(tmp_path / "feat"), "--layers", "1", "--width", "16"])
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "feat")
    tok = AutoTokenizer.from_pretrained(tmp_path / "feat")
    assert tok("w0 w63", add_special_tokens=False)["input_ids"] == [1, 64]
    assert model.config.n_layer == 1 and "random 1-layer" in capsys.readouterr().out

"""Tests for evaluate/genppl.py: the driver (special ids, unfinished samples, judge choice)
and that `evaluate_sets` talks to judges through the `Judge` protocol only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from evaluate_helpers import make_record, make_synth_run, save_sbd_run, tiny_denoiser
from sbdcli.config import GenPplOptions
from sbdcli.errors import UserError
from sbdcli.evaluate import Judge, Scores, check_finished, evaluate_sets, vocab_info
from sbdcli.evaluate import genppl as driver


@pytest.fixture(scope="module")
def synth_run(tmp_path_factory) -> Path:
    return make_synth_run(tmp_path_factory.mktemp("run"))


def synth_records(run: Path, n: int = 3, seed: int = 0) -> list[dict[str, Any]]:
    from sbdcli.data.synthetic import load_oracle

    rows = load_oracle(run / "data").sample(n, 16, torch.Generator().manual_seed(seed))
    return [make_record(r.tolist(), model=f"{run}@000000000000", id=f"{seed}-{i}")
            for i, r in enumerate(rows)]  # fmt: skip


class RecordingJudge:
    """A judge of nothing but the protocol: one NLL of 1 per scored token."""

    kind = "recording"

    def __init__(self) -> None:
        self.notes = ["judge note"]
        self.calls: list[str] = []

    def check(self, records, info) -> None:
        self.calls.append(f"check {len(records)}")

    def score(self, records, progress=None) -> Scores:
        self.calls.append(f"score {len(records)}")
        ntok = np.array([len(r["tokens"]) - 1 for r in records])
        return Scores(ntok.astype(float), ntok, list(self.notes))

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind}

    def extras(self, records, opts) -> dict[str, Any]:
        return {"extra_n": len(records)}


def test_evaluate_sets_uses_only_the_judge_protocol(monkeypatch):
    judge = RecordingJudge()
    assert isinstance(judge, Judge)
    monkeypatch.setattr(driver, "make_judge", lambda opts, records, info: judge)
    revise = [{"name": "draft", "block_size": 4}, {"name": "revise", "block_size": 16}]
    a = [make_record([9, 1, 2, 3], id="a"), make_record([9, 1, 2], id="b", masked=[2])]
    b = [make_record([9, 4, 5], id="c"), make_record([9, 6, 7], id="d", stages=revise)]
    out = evaluate_sets([("a", a), ("b", b)], GenPplOptions())
    assert judge.calls == ["check 4", "score 2", "score 1", "score 1"]
    # a file of several groups names each row after the group's label, as the table does
    assert [s["name"] for s in out] == ["a", "b · draft B4", "b · draft B4 · revise B16"]
    assert [s["group"] for s in out[1:]] == ["draft B4", "draft B4 · revise B16"]
    assert [s["extra_n"] for s in out] == [2, 1, 1]
    assert out[0]["nll_per_token"] == pytest.approx(1.0)
    assert out[0]["evaluator"]["kind"] == "recording"
    assert out[0]["notes"][0] == "judge note" and "remask without revise" in out[0]["notes"][1]


def test_sbd_judge_through_the_driver_notes_its_block_sizes(synth_run, tmp_path):
    model = tiny_denoiser(vocab=66, length=16)
    run = save_sbd_run(tmp_path / "judge", model, synth_run / "data", block=4)
    recs = synth_records(synth_run)
    (summary,) = evaluate_sets([("f", recs)], GenPplOptions(evaluator=str(run), group=False))
    assert summary["evaluator"] == {"kind": "sbd-block1", "path": str(run), "trained_blocks": [4]}
    assert summary["tokens_scored"] == 3 * 15
    # One distinct note; the JSON lists it twice (SbdJudge adds it in __init__ and in check),
    # which tests/golden/chain.json pins (genppl-sbd.json); the CLI footer de-duplicates.
    (note,) = summary["notes"]
    assert f"judge {run} was trained with block sizes [4], not block size 1" in note


def test_vocab_info_from_data_dir_then_run_then_tokens(synth_run, tmp_path):
    recs = synth_records(synth_run)
    from_run = vocab_info(recs, None)
    assert from_run.source == str(synth_run / "data") and from_run.mask_id == 65
    assert vocab_info(recs, synth_run / "data").source == str(synth_run / "data")
    lost = [make_record([7, 1, 2])]
    assert vocab_info(lost, tmp_path).special == [7, 7]  # BOS = EOS = tokens[0]


def test_check_finished_refuses_mask_and_notes_pending_remasks(synth_run):
    recs = synth_records(synth_run)
    info = vocab_info(recs, None)
    assert check_finished(recs, info) == []
    recs[1]["masked"] = [3]
    assert "1 records still list masked positions" in check_finished(recs, info)[0]
    recs[2]["tokens"][5] = info.mask_id
    with pytest.raises(UserError, match="holds \\[MASK\\] at position 5"):
        check_finished(recs, info)


def test_judge_choice_errors_name_the_fields(synth_run, tmp_path):
    recs = [make_record([0, 5, 6], text="hi")]
    with pytest.raises(UserError, match="`evaluator` is required"):
        evaluate_sets([("f", recs)], GenPplOptions())
    with pytest.raises(UserError, match="`evaluator` oracle: .*pass `data_dir` DIR"):
        evaluate_sets([("f", recs)], GenPplOptions(evaluator="oracle"))
    with pytest.raises(UserError, match="no such file or directory"):
        evaluate_sets([("f", recs)], GenPplOptions(evaluator=str(tmp_path / "nope")))
    with pytest.raises(UserError, match="`eos` must be one of"):
        evaluate_sets([("f", recs)], GenPplOptions(eos="drop"))
    with pytest.raises(UserError, match="no records"):
        evaluate_sets([("f", [])], GenPplOptions())

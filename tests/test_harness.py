"""Tests for sbdcli.harness and `sbd eval harness`: the lm-eval model `sbd`, offline.

A tiny model is trained for a few seconds on the topic-markov language of `sbd prepare
--synthetic --seed 1`; the tasks are the committed YAMLs and JSONL of
tests/fixtures/harness (make_tasks.py), read through `--include-path` with the hub off.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval", reason="needs the `harness` extra (lm-eval)")

from sbdcli.cli import main

TASKS = Path(__file__).parent / "fixtures" / "harness"


def run_main(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return int(info.value.code or 0)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    from sbdcli.data import prepare_synthetic
    from sbdcli.train import train
    from train_helpers import tiny

    root = tmp_path_factory.mktemp("harness")
    prepare_synthetic(root / "data", seq_len=32, num_train=2048, num_val=32, floor_samples=64,
                      seed=1)  # fmt: skip
    cfg = tiny(steps=150, batch_size=16, val_every=0, lr=3e-3, warmup=20, block_large=32,
               mix_lambda=0.1, ema=0.0)  # fmt: skip
    train(cfg, root / "data", root / "run", runs_root=root / "runs")
    return root / "run"


@pytest.fixture
def tasks(tmp_path, monkeypatch) -> Path:
    """The committed tasks in a working directory (their data_files are relative to it)."""
    out = tmp_path / "tasks"
    shutil.copytree(TASKS, out)
    monkeypatch.chdir(out)
    return out


def _docs(name: str) -> list[dict]:
    return [json.loads(line) for line in (TASKS / name).read_text().splitlines()]


def _oracle():
    from sbdcli.data.prepare import derive_seed
    from sbdcli.data.synthetic import TopicMarkovSpec, build_oracle

    return build_oracle(TopicMarkovSpec(), derive_seed(1, "oracle"))


def _ids(text: str) -> list[int]:
    return [int(w[1:]) for w in text.split()]


def oracle_accuracy(docs: list[dict]) -> float:
    """How often the exact likelihood ranks the true continuation first."""
    oracle, hits = _oracle(), 0
    for doc in docs:
        ctx = [oracle.bos_id, *_ids(doc["context"])]
        ll = [float(oracle.log_likelihood(torch.tensor([ctx + _ids(c)]))) for c in doc["choices"]]
        hits += int(max(range(len(ll)), key=ll.__getitem__) == doc["label"])
    return hits / len(docs)


class _Req:
    def __init__(self, *args):
        self.args = args


def test_the_tasks_are_what_make_tasks_writes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(TASKS / "make_tasks.py", tmp_path)
    import runpy

    runpy.run_path(str(tmp_path / "make_tasks.py"), run_name="__main__")
    for name in ("synthetic_mc.jsonl", "synthetic_gen.jsonl"):
        assert (tmp_path / name).read_text() == (TASKS / name).read_text()


def test_the_oracle_answers_the_multiple_choice_task():
    """The number the model's accuracy is judged against: the truth gets most right."""
    assert oracle_accuracy(_docs("synthetic_mc.jsonl")) >= 0.9


def test_multiple_choice_through_lm_eval_matches_the_model_and_beats_chance(run, tasks, capsys):
    code = run_main(["eval", "harness", "--tasks", "sbd_synthetic_mc", "--include-path",
                     str(tasks), "-m", str(run), "--mc", "8", "--device", "cpu"])  # fmt: skip
    cap = capsys.readouterr()
    assert code == 0, cap.err
    (res,) = [json.loads(line) for line in cap.out.splitlines()]
    acc = res["results"]["sbd_synthetic_mc"]["acc,none"]
    assert res["sbd"]["mc"] == 8 and res["sbd"]["likelihood_block"] == 4
    assert "sbd_synthetic_mc" in cap.err and "NELBO bound" in cap.err

    from sbdcli.harness.lm import SbdLM

    lm, docs, hits = SbdLM(pretrained=str(run), device="cpu", mc=8), _docs("synthetic_mc.jsonl"), 0
    for doc in docs:
        out = lm.loglikelihood([_Req(doc["context"], " " + c) for c in doc["choices"]])
        hits += int(max(range(len(out)), key=lambda i: out[i][0]) == doc["label"])
    assert acc == pytest.approx(hits / len(docs))
    assert acc >= 0.5  # chance is 0.25; the oracle's accuracy is the ceiling
    assert acc <= oracle_accuracy(docs) + 0.1


def test_generate_until_stops_at_the_stop_string(run, tasks, capsys):
    code = run_main(["eval", "harness", "--tasks", "sbd_synthetic_gen", "--include-path",
                     str(tasks), "-m", str(run), "--limit", "8", "--device", "cpu"])  # fmt: skip
    cap = capsys.readouterr()
    assert code == 0, cap.err
    (res,) = [json.loads(line) for line in cap.out.splitlines()]
    assert 0.0 <= res["results"]["sbd_synthetic_gen"]["exact_match,none"] <= 1.0

    from sbdcli.harness.lm import SbdLM

    lm = SbdLM(pretrained=str(run), device="cpu")
    ctx = _docs("synthetic_gen.jsonl")[0]["context"]
    (one,) = lm.generate_until([_Req(ctx, {"until": [" "], "max_gen_toks": 4})])
    (four,) = lm.generate_until([_Req(ctx, {"until": ["w999"], "max_gen_toks": 4})])
    assert len(one.split()) == 1 and len(four.split()) == 4 and four.startswith(one)
    revised = SbdLM(pretrained=str(run), device="cpu", revise=True, gamma=0.5)
    (text,) = revised.generate_until([_Req(ctx, {"until": [], "max_gen_toks": 8})])
    assert len(text.split()) == 8


def test_reveal_and_its_old_name_steps_per_block_give_one_draft_config(run):
    from sbdcli.config import FixedSteps, Threshold
    from sbdcli.errors import UserError
    from sbdcli.harness.lm import SbdLM

    old = SbdLM(pretrained=str(run), device="cpu", steps_per_block="2").draft_cfg
    new = SbdLM(pretrained=str(run), device="cpu", reveal="steps:2").draft_cfg
    assert old == new and old.reveal == FixedSteps(2)
    tau = SbdLM(pretrained=str(run), device="cpu", reveal="threshold:0.5").draft_cfg
    assert tau.reveal == Threshold(0.5)
    with pytest.raises(UserError, match="exclude each other"):
        SbdLM(pretrained=str(run), device="cpu", reveal="steps:2", steps_per_block=2)


def test_rolling_loglikelihood_is_the_sum_over_windows(run):
    from sbdcli.harness.lm import SbdLM

    lm = SbdLM(pretrained=str(run), device="cpu", block=1)
    text = " ".join(f"w{t}" for t in range(40))  # longer than the model's 32 tokens
    (total,) = lm.loglikelihood_rolling([_Req(text)])
    first = lm.loglikelihood([_Req("", " ".join(f"w{t}" for t in range(31)))])[0][0]
    assert total < first < 0  # the second window adds a negative term


def test_an_unknown_task_is_one_line(run, tasks, capsys):
    code = run_main(["eval", "harness", "--tasks", "no_such_task_xyz", "--include-path",
                     str(tasks), "-m", str(run)])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no_such_task_xyz" in err[0]


def test_lm_eval_registry_knows_the_model():
    from lm_eval.api.registry import get_model

    import sbdcli.harness.lm  # noqa: F401  (registers the model)

    assert get_model("sbd").__name__ == "SbdLM"

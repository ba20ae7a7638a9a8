"""Tests for sbdcli.harness and `sbd eval harness`: the lm-eval model `sbd`, offline.

The tasks are the committed YAMLs and JSONL of tests/fixtures/harness (make_tasks.py), in
the topic-markov language of `sbd prepare --synthetic --seed 1`, read through
`--include-path` with the hub off. Two models answer them, neither trained:
- `OracleDenoiser`, the language's exact conditionals in the denoiser's block-1 contract:
  with `--block 1` the harness must then reproduce the oracle's own multiple-choice
  accuracy, a number computed here independently from the oracle's joint likelihood;
- a random tiny `Denoiser` saved as a run: the block NELBO bound, generate_until and
  rolling windows through lm-eval must equal what the model gives request by request.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("lm_eval", reason="needs the `harness` extra (lm-eval)")

from fake_model import tiny_denoiser
from sbdcli.cli import main

TASKS = Path(__file__).parent / "fixtures" / "harness"
V = 64  # content tokens of the topic-markov language: BOS = 64, MASK = 65


def run_main(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return int(info.value.code or 0)


def _docs(name: str) -> list[dict]:
    return [json.loads(line) for line in (TASKS / name).read_text().splitlines()]


def _oracle():
    from sbdcli.data.prepare import derive_seed
    from sbdcli.data.synthetic import TopicMarkovSpec, build_oracle

    return build_oracle(TopicMarkovSpec(), derive_seed(1, "oracle"))


def _ids(text: str) -> list[int]:
    return [int(w[1:]) for w in text.split()]


def _oracle_loglik(oracle, context: str, continuation: str) -> float:
    """log p(continuation | context) from the oracle's joint likelihoods."""
    ctx = [oracle.bos_id, *_ids(context)]
    whole = torch.tensor([ctx + _ids(continuation)])
    return float(oracle.log_likelihood(whole) - oracle.log_likelihood(torch.tensor([ctx])))


def oracle_accuracy(docs: list[dict]) -> float:
    """How often the exact likelihood ranks the true continuation first."""
    oracle, hits = _oracle(), 0
    for doc in docs:
        ll = [_oracle_loglik(oracle, doc["context"], c) for c in doc["choices"]]
        hits += int(max(range(len(ll)), key=ll.__getitem__) == doc["label"])
    return hits / len(docs)


class OracleDenoiser(torch.nn.Module):
    """The language's exact next-token distributions in `train_logits`' block-1 contract:
    position i's logits are log p(x_i = . | x_0[<i]) (forward filtering over the topics)."""

    def __init__(self, oracle, seq_len: int = 32) -> None:
        super().__init__()
        self.oracle = oracle
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # parameters() names the device
        self.config = SimpleNamespace(
            seq_len=seq_len,
            vocab_size=V + 2,
            bos_id=V,
            mask_id=V + 1,
            eos_id=None,
            time_conditioning=False,
        )

    def train_logits(self, x_t, x_0, block_size, sigma=None):
        assert block_size == 1, "the oracle double answers the block-1 (exact) contract only"
        o = self.oracle
        out = torch.zeros(*x_0.shape, V + 2, dtype=torch.float64)
        out[..., V:] = -math.inf
        for r, row in enumerate(x_0.tolist()):
            joint = o.log_prior.clone()  # log p(z, x_<i), (K,)
            for i in range(1, len(row)):
                nxt = o.log_init if i == 1 else o.log_trans[:, row[i - 1]]  # (K, V)
                out[r, i, :V] = (joint[:, None] + nxt).logsumexp(0) - joint.logsumexp(0)
                if row[i] >= V:  # padding: nothing after it is scored
                    break
                joint = joint + nxt[:, row[i]]
        return out.float()


def _manifest(seq_len: int = 32) -> dict:
    return {"schema": "sbd.data", "schema_version": 1, "source": "test",
            "tokenizer": {"kind": "synthetic", "vocab": V}, "vocab_size": V + 2,
            "mask_id": V + 1, "bos_id": V, "eos_id": None, "seq_len": seq_len}  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A random tiny Denoiser over the synthetic vocabulary, saved as a run directory."""
    from sbdcli.model.checkpoint import save_sbd_model

    run = tmp_path_factory.mktemp("harness") / "run"
    (run / "data").mkdir(parents=True)
    model = tiny_denoiser(seq_len=32, vocab_size=V + 2)
    save_sbd_model(model, run / "model.safetensors", {"model_config": model.config.to_dict()})
    (run / "data" / "manifest.json").write_text(json.dumps(_manifest()))
    return run


@pytest.fixture
def oracle_run(run, monkeypatch) -> Path:
    """`run`, but loaded as the oracle double (its codec, the oracle's conditionals)."""
    import sbdcli.harness.lm as lm_module
    from sbdcli.pipeline import load_model_ref

    def load(path, device="cpu"):
        ref = load_model_ref(path, device)
        ref.model = OracleDenoiser(_oracle())
        return ref

    monkeypatch.setattr(lm_module, "load_model_ref", load)
    return run


@pytest.fixture
def tasks(tmp_path, monkeypatch) -> Path:
    """The committed tasks in a working directory (their data_files are relative to it)."""
    out = tmp_path / "tasks"
    shutil.copytree(TASKS, out)
    monkeypatch.chdir(out)
    return out


class _Req:
    def __init__(self, *args):
        self.args = args


def _harness(capsys, *argv: str) -> dict:
    code = run_main(["eval", "harness", *argv, "--device", "cpu"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    (res,) = [json.loads(line) for line in cap.out.splitlines()]
    return res | {"stderr": cap.err}


def test_the_tasks_are_what_make_tasks_writes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(TASKS / "make_tasks.py", tmp_path)
    import runpy

    runpy.run_path(str(tmp_path / "make_tasks.py"), run_name="__main__")
    for name in ("synthetic_mc.jsonl", "synthetic_gen.jsonl"):
        assert (tmp_path / name).read_text() == (TASKS / name).read_text()


def test_the_oracle_double_is_the_oracles_conditional():
    from sbdcli.evaluate.likelihood import continuation_scores

    oracle, doc = _oracle(), _docs("synthetic_mc.jsonl")[0]
    ctx = [V, *_ids(doc["context"])]
    for choice in doc["choices"]:
        (score,) = continuation_scores(OracleDenoiser(oracle), [ctx + _ids(choice)],
                                       [len(ctx)], 1)  # fmt: skip
        want = _oracle_loglik(oracle, doc["context"], choice)
        assert score.exact and score.loglik == pytest.approx(want, abs=1e-4)


def test_multiple_choice_through_lm_eval_gives_the_oracles_accuracy(oracle_run, tasks, capsys):
    """With the exact likelihood (B = 1) of the true language, lm-eval's accuracy is the
    oracle's, computed here from its joint likelihoods: well above chance (0.25)."""
    res = _harness(capsys, "--tasks", "sbd_synthetic_mc", "--include-path", str(tasks),
                   "-m", str(oracle_run), "--block", "1")  # fmt: skip
    want = oracle_accuracy(_docs("synthetic_mc.jsonl"))
    assert want >= 0.9
    assert res["results"]["sbd_synthetic_mc"]["acc,none"] == pytest.approx(want)
    assert res["sbd"]["exact"] and res["sbd"]["likelihood_block"] == 1
    assert "sbd_synthetic_mc" in res["stderr"] and "exact (B = 1)" in res["stderr"]


def test_multiple_choice_with_the_block_bound_is_the_models_own_answer(run, tasks, capsys):
    """B = 4, K = 4 through lm-eval: every request's estimate is what the model gives it
    alone (noise keyed by the context: the same for every choice, whatever the batch)."""
    res = _harness(capsys, "--tasks", "sbd_synthetic_mc", "--include-path", str(tasks),
                   "-m", str(run), "--mc", "4", "--block", "4", "--limit", "12")  # fmt: skip
    assert res["sbd"]["mc"] == 4 and not res["sbd"]["exact"]
    assert res["sbd"]["estimator"] == "count"
    assert "NELBO bound, B = 4, K = 4 (count draws)" in res["stderr"]

    from sbdcli.harness.lm import SbdLM

    lm, hits = SbdLM(pretrained=str(run), device="cpu", mc=4, block=4, batch_size=3), 0
    docs = _docs("synthetic_mc.jsonl")[:12]
    for doc in docs:
        reqs = [_Req(doc["context"], " " + c) for c in doc["choices"]]
        out = lm.loglikelihood(reqs)
        hits += int(max(range(len(out)), key=lambda i: out[i][0]) == doc["label"])
        draws = [s.draws for s in lm.last_scores]
        assert lm.loglikelihood(reqs[::-1])[::-1] == out  # order and batch do not matter
        assert all(len(d) == 4 for d in draws) and all(s.stderr > 0 for s in lm.last_scores)
    assert res["results"]["sbd_synthetic_mc"]["acc,none"] == pytest.approx(hits / len(docs))


def test_generate_until_through_lm_eval_is_the_models_own_answer(run, tasks, capsys):
    res = _harness(capsys, "--tasks", "sbd_synthetic_gen", "--include-path", str(tasks),
                   "-m", str(run), "--limit", "12", "--batch-size", "5")  # fmt: skip
    from sbdcli.harness.lm import SbdLM

    lm, docs = SbdLM(pretrained=str(run), device="cpu"), _docs("synthetic_gen.jsonl")[:12]
    alone = [lm.generate_until([_Req(d["context"], {"until": [" "], "max_gen_toks": 4})])[0]
             for d in docs]  # fmt: skip
    assert all(len(a.split()) == 1 for a in alone)
    hits = sum(a == d["target"] for a, d in zip(alone, docs, strict=True))
    assert res["results"]["sbd_synthetic_gen"]["exact_match,none"] == pytest.approx(hits / 12)


def test_generate_until_stops_at_the_stop_string(run):
    from sbdcli.harness.lm import SbdLM

    lm = SbdLM(pretrained=str(run), device="cpu")
    ctx = _docs("synthetic_gen.jsonl")[0]["context"]
    (one,) = lm.generate_until([_Req(ctx, {"until": [" "], "max_gen_toks": 4})])
    (four,) = lm.generate_until([_Req(ctx, {"until": ["w999"], "max_gen_toks": 4})])
    assert len(one.split()) == 1 and len(four.split()) == 4 and four.startswith(one)
    second = four.split()[1]
    (cut,) = lm.generate_until([_Req(ctx, {"until": [" " + second], "max_gen_toks": 4})])
    assert cut == four.split(" " + second)[0]
    revised = SbdLM(pretrained=str(run), device="cpu", revise="true", gamma=0.5)
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


def test_rolling_loglikelihood_is_the_sum_over_windows(oracle_run):
    """Exact (B = 1) rolling windows of 31 predicted tokens: the first window is the
    oracle's likelihood of the first 31 tokens, the second adds a negative term."""
    from sbdcli.harness.lm import SbdLM

    lm = SbdLM(pretrained=str(oracle_run), device="cpu", block=1)
    text = " ".join(f"w{t % V}" for t in range(0, 200, 5))  # 40 tokens > 31
    (total,) = lm.loglikelihood_rolling([_Req(text)])
    first = _oracle_loglik(_oracle(), "", " ".join(text.split()[:31]))
    assert lm.loglikelihood([_Req("", " ".join(text.split()[:31]))])[0][0] == pytest.approx(
        first, abs=1e-3
    )
    assert total < first < 0


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--tasks", "no_such_task_xyz"], "no_such_task_xyz"),
        (["--tasks", "sbd_synthetic_mc", "--include-path", "nowhere"], "not a directory"),
        (["--tasks", "sbd_synthetic_mc", "--mc", "0"], "--mc"),
        (["--tasks", "sbd_synthetic_mc", "--model-arg", "gamma"], "key=value"),
        (
            ["--tasks", "sbd_synthetic_mc", "--model-arg", "estimator=nope"],
            "estimator 'nope': one of count, time",
        ),
    ],
)
def test_bad_input_is_one_line(run, tasks, capsys, argv, says):
    if "--include-path" not in argv:
        argv = [*argv, "--include-path", str(tasks)]
    code = run_main(["eval", "harness", "-m", str(run), *argv])
    cap = capsys.readouterr()
    err = cap.err.strip().splitlines()
    assert code == 2 and len(err) == 1 and says in err[0] and cap.out == ""


def test_a_missing_model_is_one_line(tasks, capsys):
    code = run_main(["eval", "harness", "--tasks", "sbd_synthetic_mc", "-m", "no/such/run"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no/such/run" in err[0]


def test_lm_eval_finds_the_model_by_name(oracle_run, tasks):
    """lm-eval's own API with `model="sbd"` and a model_args string, once sbd is imported."""
    import lm_eval
    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager

    import sbdcli.harness.lm  # noqa: F401  (registers the model)

    assert get_model("sbd").__name__ == "SbdLM"
    manager = TaskManager(include_path=str(tasks), include_defaults=False)
    res = lm_eval.simple_evaluate(
        model="sbd", model_args=f"pretrained={oracle_run},block=1,device=cpu",
        tasks=["sbd_synthetic_mc"], limit=8, task_manager=manager,
    )  # fmt: skip
    want = oracle_accuracy(_docs("synthetic_mc.jsonl")[:8])
    assert res["results"]["sbd_synthetic_mc"]["acc,none"] == pytest.approx(want)


def test_a_hub_name_gets_the_download_hint(capsys):
    code = run_main(["eval", "harness", "--tasks", "x", "-m", "owner/model-name"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "hf download owner/model-name --local-dir model-name" in err[0]


def test_a_task_whose_data_cannot_be_fetched_is_one_line(run, monkeypatch, capsys):
    import lm_eval
    from huggingface_hub.errors import OfflineModeIsEnabled

    def offline(**_kwargs):  # what lm-eval raises for a hub task under HF_DATASETS_OFFLINE
        raise OfflineModeIsEnabled("Couldn't reach 'EleutherAI/lambada_openai' on the Hub")

    monkeypatch.setattr(lm_eval, "simple_evaluate", offline)
    code = run_main(["eval", "harness", "--tasks", "lambada_openai", "-m", str(run),
                     "--device", "cpu"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "could not fetch the data of --tasks lambada_openai" in err[0]
    assert "HF_HUB_OFFLINE" in err[0] and "--include-path" in err[0]

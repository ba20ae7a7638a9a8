"""Bad inputs refused at load or read time with one line and exit 2: weights holding NaN,
float weights stored as integers, a [MASK] at a kept position, a record without tokens, a
--length far beyond the trained length. Each case leaves no output file behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fake_model import one_thread  # noqa: F401 (autouse fixture)
from sbdcli.artifacts import load_tensors, save_tensors
from sbdcli.cli import main
from test_cli_sample import V, make_run


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("inputfaults")
    run = make_run(base)
    tensors, header = load_tensors(run / "model.safetensors")
    meta = {"model_config": header["model_config"]}
    for name, change in {
        "nan": lambda t: torch.full_like(t, float("nan")),
        "int": lambda t: t.to(torch.int32),
    }.items():
        bad = base / f"bad-{name}"
        bad.mkdir()
        damaged = dict(tensors)
        key = next(k for k, v in tensors.items() if v.ndim == 2)
        damaged[key] = change(tensors[key])
        save_tensors(bad / "model.safetensors", damaged, "sbd.model", meta)
    _draft(base)
    return base


def _draft(base: Path) -> None:
    out = base / "draft.jsonl"
    argv = ["draft", "-m", str(base / "runs" / "r1"), "-n", "2", "--device", "cpu"]
    assert _run([*argv, "-o", str(out)]) == 0
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    kept_mask = dict(recs[0], tokens=[recs[0]["tokens"][0], V + 1, *recs[0]["tokens"][2:]])
    (base / "kept-mask.jsonl").write_text(json.dumps(kept_mask) + "\n")
    empty = dict(recs[0], tokens=[], confidence=[], masked=[], prompt_len=0)
    (base / "empty.jsonl").write_text(json.dumps(empty) + "\n")


def _run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return int(info.value.code or 0)


CASES = {
    "weights holding NaN": (["draft", "-m", "bad-nan", "-n", "1"], "NaN or infinite"),
    "float weights stored as int32": (["draft", "-m", "bad-int", "-n", "1"], "torch.int32"),
    "[MASK] at a kept position": (["revise", "-m", "runs/r1", "-i", "kept-mask.jsonl"],
                                  "[MASK] at position 1"),
    "a record without tokens (remask)": (["remask", "-i", "empty.jsonl"], "'tokens' is empty"),
    "a record without tokens (revise)": (["revise", "-m", "runs/r1", "-i", "empty.jsonl"],
                                         "'tokens' is empty"),
    "--length beyond 16 x L": (["draft", "-m", "runs/r1", "--length", "100000000"],
                               "more than 16 x"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_and_writes_nothing(root, name, monkeypatch, capsys):
    argv, expected = CASES[name]
    monkeypatch.chdir(root)
    out = root / "out.jsonl"
    code = _run([*argv, "--device", "cpu", "-o", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and expected in err[0] and "Traceback" not in err[0], err
    assert not out.exists()


def test_a_block_that_does_not_divide_the_length_is_sampled(root, monkeypatch):
    monkeypatch.chdir(root)
    out = root / "ragged.jsonl"
    argv = ["draft", "-m", "runs/r1", "-n", "1", "--block", "5", "--length", "16"]
    assert _run([*argv, "--device", "cpu", "-o", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert len(rec["tokens"]) == 16 and V + 1 not in rec["tokens"]

"""Records that tell on their input: a model of another vocabulary, a partial set, and the
load/read-time validation gaps. Every refusal is one stderr line with exit status 2, no
traceback, no partial output file, and a previous output file left as it was; a partial
input to remask/revise is a one-line warning, to `sbd eval genppl` a refusal unless
--allow-partial."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fake_model import one_thread, tiny_denoiser  # noqa: F401 (autouse fixture)
from sbdcli.artifacts import load_tensors, save_tensors
from sbdcli.cli import main
from test_cli_sample import V, make_run, shell

PREVIOUS = "previous output\n"


def _run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return int(info.value.code or 0)


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _write(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path.name


def _save_model(directory: Path, vocab_size: int, seed: int = 1) -> None:
    from sbdcli.model.checkpoint import save_sbd_model

    directory.mkdir(parents=True)
    model = tiny_denoiser(seq_len=32, vocab_size=vocab_size, seed=seed)
    save_sbd_model(model, directory / "model.safetensors", {"model_config": model.config.to_dict()})


def _damaged_weights(base: Path, run: Path) -> None:
    """bad-nan (a weight all NaN) and bad-int (a float weight stored as int32)."""
    tensors, header = load_tensors(run / "model.safetensors")
    key = next(k for k, v in tensors.items() if v.ndim == 2)
    for name, change in {
        "nan": lambda t: torch.full_like(t, float("nan")),
        "int": lambda t: t.to(torch.int32),
    }.items():
        (base / f"bad-{name}").mkdir()
        damaged = {**tensors, key: change(tensors[key])}
        meta = {"model_config": header["model_config"]}
        save_tensors(base / f"bad-{name}" / "model.safetensors", damaged, "sbd.model", meta)


def _bad_records(base: Path) -> None:
    """Record files derived from a real draft: each breaks one rule."""
    recs = _lines(base / "draft.jsonl")
    rec = recs[0]
    _write(
        base / "kept-mask.jsonl", [dict(rec, tokens=[rec["tokens"][0], V + 1, *rec["tokens"][2:]])]
    )
    _write(base / "empty.jsonl", [dict(rec, tokens=[], confidence=[], masked=[], prompt_len=0)])
    legacy = [dict(r, stages=[{k: v for k, v in r["stages"][0].items()
                               if k not in ("vocab_size", "mask_id", "bos_id", "n_records")}])
              for r in recs]  # fmt: skip
    _write(base / "legacy.jsonl", legacy)
    _write(base / "half.jsonl", recs[:2])


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("recordfaults")
    run = make_run(base)  # runs/r1: vocabulary 14 ([MASK] 13, BOS 12), trained length 32
    _save_model(base / "wide", V + 8)  # vocabulary 20: every token of r1 fits, ids differ
    _save_model(base / "narrow", V - 2)  # vocabulary 10
    _save_model(base / "twin", V + 2, seed=7)  # another model, r1's vocabulary
    _damaged_weights(base, run)
    m = ["-m", "runs/r1", "--device", "cpu"]
    argv = ["draft", *m, "-n", "2", "--prompts", "prompts.jsonl", "--length", "16"]
    (base / "prompts.jsonl").write_text('{"prompt_tokens": [1, 2]}\n{"prompt_tokens": [3]}\n')
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(base)
        assert _run([*argv, "-o", "draft.jsonl"]) == 0
        assert _run(["remask", "--gamma", "0.25", "-i", "draft.jsonl", "-o", "rm.jsonl"]) == 0
    _bad_records(base)
    return base


@pytest.fixture
def in_root(root, monkeypatch) -> Path:
    monkeypatch.chdir(root)
    monkeypatch.delenv("SBD_MODEL", raising=False)
    return root


# --------------------------------------------------------------------------- record keys
def test_draft_entry_names_the_vocabulary_and_the_set_size(root):
    recs = _lines(root / "draft.jsonl")
    assert len(recs) == 4  # -n 2 times 2 prompts
    for rec in recs:
        entry = rec["stages"][0]
        assert (entry["vocab_size"], entry["mask_id"], entry["bos_id"]) == (V + 2, V + 1, V)
        assert entry["n_records"] == 4 and entry["batch_size"] == 4


def test_generate_records_the_whole_set(in_root):
    out = in_root / "gen.jsonl"
    argv = ["generate", "-m", "runs/r1", "-n", "3", "--length", "8", "--batch-size", "2"]
    assert _run([*argv, "--device", "cpu", "-o", str(out)]) == 0
    entries = [r["stages"][0] for r in _lines(out)]
    assert [e["n_records"] for e in entries] == [3, 3, 3]
    assert [e["batch_size"] for e in entries] == [2, 2, 1]


def test_another_model_of_the_same_vocabulary_is_named_in_its_stage_only(in_root):
    out = in_root / "twin.jsonl"
    assert _run(["revise", "-m", "twin", "--device", "cpu", "-i", "rm.jsonl", "-o", str(out)]) == 0
    for rec in _lines(out):
        assert rec["model"].startswith("runs/r1@")  # the drafting model: later defaults
        assert rec["stages"][-1]["model"].startswith("twin@")


def test_old_records_without_the_keys_fall_back_to_the_token_range(in_root, capsys):
    out = in_root / "legacy-out.jsonl"
    argv = ["revise", "-m", "wide", "--device", "cpu", "-i", "legacy.jsonl", "-o", str(out)]
    assert _run(argv) == 0
    assert capsys.readouterr().err == ""  # complete legacy sets are not counted either
    assert len(_lines(out)) == 4


def test_a_block_that_does_not_divide_the_length_is_revised(in_root):
    out = in_root / "ragged.jsonl"
    argv = ["revise", "-m", "runs/r1", "--block", "5", "--device", "cpu", "-i", "rm.jsonl"]
    assert _run([*argv, "-o", str(out)]) == 0
    recs = _lines(out)
    assert all(len(r["tokens"]) == 16 and V + 1 not in r["tokens"] for r in recs)
    assert recs[0]["stages"][-1]["block_size"] == 5


# --------------------------------------------------------------------------- refusals
CASES = {
    "revise with a wider vocabulary": (
        ["revise", "-m", "wide", "-i", "rm.jsonl"], "another vocabulary"),
    "revise with a narrower vocabulary": (
        ["revise", "-m", "narrow", "-i", "rm.jsonl"], "another vocabulary"),
    "posthoc remask with another vocabulary": (
        ["remask", "--strategy", "posthoc", "-m", "wide", "-i", "draft.jsonl"],
        "another vocabulary"),
    "masked remask with another vocabulary": (
        ["remask", "--strategy", "masked", "-m", "narrow", "-i", "draft.jsonl"],
        "another vocabulary"),
    "old records outside a narrower vocabulary": (
        ["revise", "-m", "narrow", "-i", "legacy.jsonl"], "outside the vocabulary"),
    "weights holding NaN": (["draft", "-m", "bad-nan", "-n", "1"], "NaN or infinite"),
    "float weights stored as int32": (["draft", "-m", "bad-int", "-n", "1"], "torch.int32"),
    "[MASK] at a kept position": (
        ["revise", "-m", "runs/r1", "-i", "kept-mask.jsonl"], "[MASK] at position 1"),
    "empty tokens (remask)": (["remask", "-i", "empty.jsonl"], "'tokens' is empty"),
    "empty tokens (revise)": (["revise", "-m", "runs/r1", "-i", "empty.jsonl"],
                              "'tokens' is empty"),
    "--length beyond 16 x the trained length": (
        ["draft", "-m", "runs/r1", "--length", "513"], "--length 513 is more than 16 x"),
    "eval of a partial set": (["eval", "genppl", "half.jsonl"],
                              "half.jsonl: 2 of the 4 records its draft declared"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
def test_refusal_is_one_line_and_keeps_the_previous_output(in_root, name, capsys):
    argv, expected = CASES[name]
    out = in_root / "out.jsonl"
    out.write_text(PREVIOUS)
    before = sorted(p.name for p in in_root.iterdir())
    flag = "--out" if argv[0] == "eval" else "-o"
    code = _run([*argv, "--device", "cpu", flag, str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and expected in err[0] and "Traceback" not in err[0], err
    assert out.read_text() == PREVIOUS
    assert sorted(p.name for p in in_root.iterdir()) == before  # no temporary file left


def test_eval_refusal_names_the_flag_and_comes_before_any_judging(in_root, capsys):
    code = _run(["eval", "genppl", "half.jsonl", "--evaluator", "no-such-dir"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--allow-partial" in err[0], err


# --------------------------------------------------------------------------- partial input
def test_remask_and_revise_warn_on_a_partial_input(in_root, capsys):
    for argv in (["remask", "-i", "half.jsonl"], ["revise", "-m", "runs/r1", "-i", "half.jsonl"]):
        out = in_root / "partial-out.jsonl"
        assert _run([*argv, "--device", "cpu", "-o", str(out)]) == 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "warning" in err[0] and "2 of the 4 records" in err[0], err
        assert len(_lines(out)) == 2  # what was read is still written


def test_eval_allow_partial_marks_the_summary(tmp_path, capsys):
    from sbdcli.data import prepare_synthetic
    from sbdcli.data.synthetic import load_oracle

    run = tmp_path / "run"
    prepare_synthetic(run / "data", seq_len=16, num_train=8, num_val=8, floor_samples=64)
    rows = load_oracle(run / "data").sample(3, 16, torch.Generator().manual_seed(0)).tolist()
    entry = {"name": "draft", "block_size": 4, "seed": 0, "model": f"{run}@000000000000",
             "n_records": 5, "batch_size": 3, "nfe": 15, "seconds": 0.01}  # fmt: skip
    recs = [{"id": f"s0-{i}", "tokens": r, "confidence": [1.0] * 16, "masked": [],
             "prompt_len": 1, "nfe": 15, "stages": [entry], "text": "",
             "model": f"{run}@000000000000"} for i, r in enumerate(rows)]  # fmt: skip
    path = tmp_path / "part.jsonl"
    _write(path, recs)
    assert _run(["eval", "genppl", str(path), "--device", "cpu"]) == 2
    assert "3 of the 5 records" in capsys.readouterr().err
    assert _run(["eval", "genppl", str(path), "--allow-partial", "--device", "cpu"]) == 0
    cap = capsys.readouterr()
    (summary,) = [json.loads(x) for x in cap.out.splitlines()]
    assert summary["partial"] is True and summary["n_declared"] == 5 and summary["n"] == 3
    err = " ".join(cap.err.split())
    assert "(partial: 3 of 5 records)" in err and "is partial: 3 records scored" in err
    _write(path, [dict(r, stages=[dict(entry, n_records=3)]) for r in recs])
    assert _run(["eval", "genppl", str(path), "--device", "cpu"]) == 0
    (summary,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert summary["partial"] is False and summary["n_declared"] == 3


@pytest.mark.slow
def test_a_cut_pipe_ends_with_a_visible_problem(root):
    ref = root / "pipe-ref.jsonl"
    draft = "sbd draft -m runs/r1 -n 8 --length 16 --device cpu"
    assert shell(f"{draft} > {ref.name}", root).returncode == 0
    sizes = [len(x) + 1 for x in ref.read_text().splitlines()]
    cut = sum(sizes[:3]) + sizes[3] // 2  # three whole records, then half a line
    piped = shell(
        f"{draft} | head -c {cut} | sbd remask --batch-size 1 --device cpu"
        " | sbd revise --device cpu -o pipe-out.jsonl",
        root,
    )
    assert piped.returncode == 2, piped.stderr  # remask fails on the cut line
    err = piped.stderr.strip().splitlines()
    assert "Traceback" not in piped.stderr and len(err) == 2, err
    assert any("error" in line for line in err), err  # remask's
    assert any("warning: revise" in line and "3 of the 8 records" in line for line in err), err
    assert len(_lines(root / "pipe-out.jsonl")) == 3
    evaluated = shell("sbd eval genppl pipe-out.jsonl --device cpu", root)
    lines = evaluated.stderr.strip().splitlines()
    assert evaluated.returncode == 2 and len(lines) == 1, lines
    assert "pipe-out.jsonl: 3 of the 8 records its draft declared" in lines[0]

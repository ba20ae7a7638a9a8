"""Tests for `sbd eval genppl` and `sbd eval ppl`: outputs, defaults, one-line errors."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from evaluate_helpers import build_tiny_gpt2, make_record, save_sbd_run, tiny_denoiser
from sbdcli.cli import main


def run_main(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return int(info.value.code or 0)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def one_line_error(capsys, code: int, *words: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    for w in words:
        assert w in err[0], err[0]
    return err[0]


@pytest.fixture(scope="module")
def synth_run(tmp_path_factory) -> Path:
    from sbdcli.data import prepare_synthetic

    run = tmp_path_factory.mktemp("run")
    prepare_synthetic(run / "data", seq_len=16, num_train=8, num_val=8, floor_samples=256)
    return run


def synth_records(run: Path, n: int = 4, seed: int = 0, stages=None) -> list[dict]:
    from sbdcli.data.synthetic import load_oracle

    oracle = load_oracle(run / "data")
    rows = oracle.sample(n, 16, torch.Generator().manual_seed(seed)).tolist()
    stages = stages or [{"name": "draft", "block_size": 4, "top_p": 0.9, "seed": seed,
                         "nfe": 8, "seconds": 0.01}]  # fmt: skip
    return [make_record(r, model=f"{run}@000000000000", id=f"{seed}-{i}", stages=stages)
            for i, r in enumerate(rows)]  # fmt: skip


def stdin_of(monkeypatch, text: str) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode())))


# ----------------------------------------------------------------------------- genppl
def test_piped_records_default_to_the_oracle(synth_run, monkeypatch, capsys):
    recs = synth_records(synth_run)
    stdin_of(monkeypatch, "".join(json.dumps(r) + "\n" for r in recs))
    assert run_main(["eval", "genppl"]) == 0
    cap = capsys.readouterr()
    (obj,) = [json.loads(line) for line in cap.out.splitlines()]
    assert obj["evaluator"]["kind"] == "oracle" and obj["n"] == 4 and obj["file"] == "stdin"
    assert obj["tokens_scored"] == 4 * 15
    assert {"gen_ppl_corpus", "gen_ppl_per_sample_mean", "entropy_per_sample_mean",
            "nfe_per_sample", "tokens_per_second", "settings"} <= set(obj)  # fmt: skip
    assert obj["settings"]["stages"][0]["top_p"] == 0.9
    assert "oracle floor" in cap.err and "Gen PPL" in cap.err


def test_real_pipe_into_sbd_eval_genppl(synth_run, tmp_path):
    data = "".join(json.dumps(r) + "\n" for r in synth_records(synth_run))
    sbd = Path(sys.executable).with_name("sbd")
    out = subprocess.run([str(sbd), "eval", "genppl"], input=data, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["evaluator"]["kind"] == "oracle"


def test_files_side_by_side_groups_markdown_out_and_plot(synth_run, tmp_path, capsys):
    a = write_jsonl(tmp_path / "a.jsonl", synth_records(synth_run, seed=1))
    revise = [{"name": "draft", "block_size": 4, "nfe": 8, "seconds": 0.01},
              {"name": "revise", "block_size": 16, "nfe": 2, "seconds": 0.01}]  # fmt: skip
    mixed = synth_records(synth_run, 2, seed=2) + synth_records(synth_run, 2, 3, revise)
    b = write_jsonl(tmp_path / "b.jsonl", mixed)
    out, plot = tmp_path / "summary.jsonl", tmp_path / "plot.png"
    code = run_main(["eval", "genppl", str(a), str(b), "--out", str(out), "--plot", str(plot),
                     "--markdown"])  # fmt: skip
    assert code == 0
    cap = capsys.readouterr()
    objs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(o["file"], o["n"]) for o in objs] == [(str(a), 4), (str(b), 2), (str(b), 2)]
    assert objs[2]["group"] == "draft B4 · revise B16"  # the label the table shows
    assert objs[2]["name"] == f"{b} · draft B4 · revise B16"
    table = [line for line in cap.out.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 3
    assert table[0].index("Gen PPL (per-sample mean, BD3-LM/MDLM protocol)") < table[0].index(
        "Gen PPL (corpus, token-weighted)"
    )
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_low_entropy_count_defaults_to_the_drafts_redraw_threshold(synth_run, tmp_path, capsys):
    stages = [{"name": "draft", "block_size": 4, "nfe": 8, "seconds": 0.01,
               "redraw_low_entropy": 9.0, "redraw_window": 8, "redraws": 0}]  # fmt: skip
    recs = synth_records(synth_run, stages=stages)
    recs[0]["tokens"][-8:] = [3] * 8  # a degenerate tail: entropy 0
    f = write_jsonl(tmp_path / "low.jsonl", recs)
    assert run_main(["eval", "genppl", str(f)]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert (obj["low_entropy"], obj["low_entropy_window"]) == (9.0, 8)
    assert obj["n_low_entropy"] == 4 and obj["n_low_entropy_checked"] == 4  # all below 9 nats
    assert run_main(["eval", "genppl", str(f), "--low-entropy", "0.5"]) == 0
    cap = capsys.readouterr()
    obj = json.loads(cap.out)
    assert (obj["low_entropy"], obj["low_entropy_window"], obj["n_low_entropy"]) == (0.5, 8, 1)
    assert "low-H" in cap.err and "BD3-LM's redraw rule" in cap.err
    plain = write_jsonl(tmp_path / "plain.jsonl", synth_records(synth_run))
    assert run_main(["eval", "genppl", str(plain)]) == 0
    assert "n_low_entropy" not in json.loads(capsys.readouterr().out)  # off by default


def test_a_terminal_gets_the_table_and_json_only_when_asked(synth_run, tmp_path, monkeypatch,
                                                            capsys):  # fmt: skip
    f = write_jsonl(tmp_path / "r.jsonl", synth_records(synth_run))
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert run_main(["eval", "genppl", str(f)]) == 0
    cap = capsys.readouterr()
    assert cap.out == "" and "Gen PPL" in cap.err
    assert run_main(["eval", "genppl", str(f), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 4
    out = tmp_path / "s.jsonl"
    assert run_main(["eval", "genppl", str(f), "--out", str(out)]) == 0
    assert capsys.readouterr().out == "" and json.loads(out.read_text())["n"] == 4
    code = run_main(["eval", "genppl", str(f), "--json", "--markdown"])
    one_line_error(capsys, code, "--json and --markdown exclude each other")


def test_an_80_column_table_keeps_the_row_number_and_drops_the_least_useful(
    synth_run, tmp_path, monkeypatch, capsys
):
    from sbdcli.cli._app import console

    f = write_jsonl(tmp_path / "r.jsonl", synth_records(synth_run))
    monkeypatch.setattr(console, "width", 80)
    assert run_main(["eval", "genppl", str(f), "--low-entropy", "0.5"]) == 0
    err = capsys.readouterr().err
    lines = err.splitlines()
    table = [ln for ln in lines if ln.startswith(("┃", "│"))]
    assert table and all(len(ln) <= 80 for ln in table)
    assert "…" not in "".join(table)  # no column cut to an ellipsis
    header = table[0]
    for kept in ("#", " n ", "PPL per-sample", "NFE"):
        assert kept in header, header
    assert "tok/s" not in header
    assert any(ln.startswith("(tok/s") and "left out at 80 columns" in ln for ln in lines)


def test_negative_low_entropy_is_one_line(synth_run, tmp_path, capsys):
    f = write_jsonl(tmp_path / "r.jsonl", synth_records(synth_run))
    code = run_main(["eval", "genppl", str(f), "--low-entropy", "-1"])
    one_line_error(capsys, code, "--low-entropy must be >= 0")


def test_transformers_evaluator_on_record_text(tmp_path, capsys):
    gpt2 = build_tiny_gpt2(tmp_path / "gpt2")
    recs = [make_record([0, 1, 2], text="the cat sat on the mat", id="a"),
            make_record([0, 1, 2], text="a dog<|endoftext|>ran", id="b")]  # fmt: skip
    f = write_jsonl(tmp_path / "r.jsonl", recs)
    assert run_main(["eval", "genppl", "-i", str(f), "--evaluator", str(gpt2)]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["evaluator"]["kind"] == "transformers" and obj["evaluator"]["context"] == 32
    assert obj["gen_ppl_corpus"] > 1 and obj["n_scored"] == 2


# ----------------------------------------------------------------------------- errors
def test_missing_evaluator_for_non_synthetic_records(tmp_path, capsys):
    f = write_jsonl(tmp_path / "r.jsonl", [make_record([0, 5, 6], text="hi")])
    one_line_error(capsys, run_main(["eval", "genppl", str(f)]), "--evaluator is required")


def test_empty_input_is_one_line(tmp_path, capsys):
    f = tmp_path / "empty.jsonl"
    f.write_text("")
    one_line_error(capsys, run_main(["eval", "genppl", str(f), "-e", "oracle"]), "no records")


def test_evaluator_without_causal_lm(tmp_path, capsys):
    f = write_jsonl(tmp_path / "r.jsonl", [make_record([0, 5, 6], text="hi")])
    bad = tmp_path / "notlm"
    bad.mkdir()
    (bad / "config.json").write_text('{"model_type": "vit"}')
    code = run_main(["eval", "genppl", str(f), "-e", str(bad)])
    one_line_error(capsys, code, "not a causal language model")
    code = run_main(["eval", "genppl", str(f), "-e", str(tmp_path / "nope")])
    one_line_error(capsys, code, "no such file or directory")


def test_oracle_refuses_records_of_another_tokenizer(synth_run, tmp_path, capsys):
    recs = synth_records(synth_run, 2)
    recs[1]["tokens"][3] = 200
    f = write_jsonl(tmp_path / "r.jsonl", recs)
    code = run_main(["eval", "genppl", str(f), "--data", str(synth_run / "data")])
    one_line_error(capsys, code, "different tokenizer")


def test_bad_eos_rule(synth_run, tmp_path, capsys):
    f = write_jsonl(tmp_path / "r.jsonl", synth_records(synth_run, 1))
    one_line_error(capsys, run_main(["eval", "genppl", str(f), "--eos", "drop"]), "--eos")


# ----------------------------------------------------------------------------- ppl
def test_eval_ppl_block1_matches_library_and_errors(synth_run, tmp_path, capsys):
    from sbdcli.data import load_split
    from sbdcli.evaluate import heldout_perplexity

    data = synth_run / "data"
    model = tiny_denoiser(vocab=66, length=16, seed=3)
    run = save_sbd_run(tmp_path / "run1", model, data, block=1)
    assert run_main(["eval", "ppl", "-m", str(run), "--data", str(data), "--mc", "2"]) == 0
    obj = json.loads(capsys.readouterr().out)
    want = heldout_perplexity(model, load_split(data, "val"), 1)
    assert obj["exact"] and obj["block_size"] == 1
    assert obj["nelbo_per_token"] == pytest.approx(want.nelbo, rel=1e-5)
    code = run_main(["eval", "ppl", "-m", str(run), "--data", str(data), "--block", "3"])
    one_line_error(capsys, code, "must divide")
    small = save_sbd_run(tmp_path / "run2", tiny_denoiser(vocab=40, length=16), data, block=1)
    code = run_main(["eval", "ppl", "-m", str(small), "--data", str(data)])
    one_line_error(capsys, code, "different tokenizer")


def test_eval_ppl_prints_json_as_genppl_does(synth_run, tmp_path, monkeypatch, capsys):
    data = synth_run / "data"
    run = save_sbd_run(tmp_path / "run1", tiny_denoiser(vocab=66, length=16), data, block=1)
    argv = ["eval", "ppl", "-m", str(run), "--data", str(data)]
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert run_main(argv) == 0
    cap = capsys.readouterr()
    assert cap.out == "" and "val PPL" in cap.err  # a person at a terminal reads the line
    assert run_main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["exact"]
    out = tmp_path / "ppl.jsonl"
    assert run_main([*argv, "--out", str(out)]) == 0
    assert capsys.readouterr().out == "" and json.loads(out.read_text())["block_size"] == 1


def test_eval_ppl_of_a_hub_name_says_how_to_get_it(capsys):
    code = run_main(["eval", "ppl", "-m", "kuleshov-group/bd3lm-owt-block_size16"])
    one_line_error(capsys, code, "model not found", "hf download kuleshov-group/", "-m bd3lm-owt")


def test_unfinished_samples(synth_run, tmp_path, capsys):
    recs = synth_records(synth_run, 2)
    recs[0]["masked"] = [3, 5]  # remasked, not revised: scored as they are, with a note
    f = write_jsonl(tmp_path / "pending.jsonl", recs)
    assert run_main(["eval", "genppl", str(f)]) == 0
    cap = capsys.readouterr()
    assert "remask without revise" in json.loads(cap.out)["notes"][0]
    recs[1]["tokens"][4] = 65  # [MASK] of the synthetic language
    f = write_jsonl(tmp_path / "masked.jsonl", recs)
    one_line_error(capsys, run_main(["eval", "genppl", str(f)]), "holds [MASK] at position 4")


def test_precision_bf16_of_eval_ppl_and_both_judges(synth_run, tmp_path, capsys):
    """--precision bf16 on CPU: eval ppl and the sbd / transformers judges run in bf16, say
    so, and land near their fp32 numbers; fp32 (the CPU's auto) records no key."""
    from sbdcli.data import load_split
    from sbdcli.evaluate import heldout_perplexity

    data = synth_run / "data"
    model = tiny_denoiser(vocab=66, length=16, seed=3)
    run = save_sbd_run(tmp_path / "run1", model, data, block=1)
    base = ["eval", "ppl", "-m", str(run), "--data", str(data), "--block", "1"]
    got = {}
    for name in ("auto", "bf16"):
        assert run_main([*base, "--precision", name]) == 0
        got[name] = json.loads(capsys.readouterr().out)
    assert "precision" not in got["auto"] and got["bf16"]["precision"] == "bf16"
    fp32, bf16 = got["auto"]["nelbo_per_token"], got["bf16"]["nelbo_per_token"]
    assert fp32 != bf16 and bf16 == pytest.approx(fp32, rel=2e-2)
    lib = heldout_perplexity(model, load_split(data, "val"), 1, precision="bf16")
    assert lib.precision == "bf16" and lib.nelbo == pytest.approx(bf16, rel=1e-9)
    f = write_jsonl(tmp_path / "r.jsonl", synth_records(synth_run))
    judged = {}
    for name in ("fp32", "bf16"):
        argv = ["eval", "genppl", "-i", str(f), "--evaluator", str(run), "--precision", name]
        assert run_main(argv) == 0
        judged[name] = json.loads(capsys.readouterr().out)
    assert "precision" not in judged["fp32"]["evaluator"]
    assert judged["bf16"]["evaluator"]["precision"] == "bf16"
    a, b = judged["fp32"]["nll_per_token"], judged["bf16"]["nll_per_token"]
    assert a != b and b == pytest.approx(a, rel=2e-2)
    gpt2 = build_tiny_gpt2(tmp_path / "gpt2")
    recs = [make_record([0, 1, 2], text="the cat sat on the mat", id="a")]
    g = write_jsonl(tmp_path / "t.jsonl", recs)
    argv = ["eval", "genppl", "-i", str(g), "--evaluator", str(gpt2), "--precision", "bf16"]
    assert run_main(argv) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["evaluator"]["precision"] == "bf16" and obj["gen_ppl_corpus"] > 1
    assert run_main(["eval", "ppl", *base[2:], "--precision", "half"]) == 2
    assert "--precision must be one of" in capsys.readouterr().err

"""Tests for `sbd draft | sbd remask | sbd revise` and `sbd generate` on a tiny random run
directory: real subprocess pipes, streaming, `| head -1`, record contract, one-line errors."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fake_model import one_thread, tiny_denoiser  # noqa: F401 (autouse fixture)
from sbdcli.artifacts import read_records, save_tensors, validate_record
from sbdcli.cli import main

V = 12  # content tokens of the synthetic vocabulary: BOS = 12, MASK = 13
SBD = [sys.executable, "-m", "sbdcli"]


def make_run(root: Path, seq_len: int = 32) -> Path:
    """RUN/model.safetensors (random tiny Denoiser) + RUN/data/manifest.json; runs/latest."""
    from sbdcli.model.checkpoint import save_sbd_model

    model = tiny_denoiser(seq_len=seq_len, vocab_size=V + 2)
    run = root / "runs" / "r1"
    (run / "data").mkdir(parents=True)
    save_sbd_model(model, run / "model.safetensors", {"model_config": model.config.to_dict()})
    manifest = {
        "schema": "sbd.data",
        "schema_version": 1,
        "source": "test",
        "tokenizer": {"kind": "synthetic", "vocab": V},
        "vocab_size": V + 2,
        "mask_id": V + 1,
        "bos_id": V,
        "eos_id": None,
        "seq_len": seq_len,
    }
    (run / "data" / "manifest.json").write_text(json.dumps(manifest))
    (root / "runs" / "latest").symlink_to("r1")
    return run


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sample")
    make_run(root)
    return root


@pytest.fixture
def in_workdir(workdir, monkeypatch) -> Path:
    monkeypatch.chdir(workdir)
    monkeypatch.delenv("SBD_MODEL", raising=False)
    return workdir


def run_main(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return int(info.value.code or 0)


def env() -> dict[str, str]:
    e = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    e.pop("SBD_MODEL", None)
    return e


def shell(cmd: str, cwd: Path) -> subprocess.CompletedProcess:
    sbd = " ".join(SBD)
    return subprocess.run(
        ["bash", "-o", "pipefail", "-c", cmd.replace("sbd ", f"{sbd} ")],
        cwd=cwd,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def comparable(recs: list[dict]) -> list[dict]:
    """Records without wall-clock fields."""
    out = []
    for r in recs:
        r = dict(r)
        r["stages"] = [{k: v for k, v in s.items() if k != "seconds"} for s in r["stages"]]
        out.append(r)
    return out


# --------------------------------------------------------------------------- pipes
@pytest.mark.slow
def test_literal_pipeline_through_real_pipes_equals_generate(workdir, in_workdir):
    piped = shell("sbd draft | sbd remask --gamma 0.25 | sbd revise", workdir)
    assert piped.returncode == 0, piped.stderr
    assert piped.stderr == ""  # no progress noise when stderr is not a terminal
    got = records(piped.stdout)
    assert len(got) == 16
    generated = shell("sbd generate --stages 4,full --gammas 0.25", workdir)
    assert generated.returncode == 0, generated.stderr
    assert comparable(got) == comparable(records(generated.stdout))
    for rec in got:
        validate_record(rec, vocab_size=V + 2)
        assert [s["name"] for s in rec["stages"]] == ["draft", "remask", "revise"]
        assert rec["masked"] == [] and rec["prompt_len"] == 1 and rec["tokens"][0] == V
        assert rec["nfe"] == sum(s["nfe"] for s in rec["stages"])
        assert rec["stages"][2]["n_masked"] == 7 == rec["stages"][2]["nfe"]  # floor(.25*31)
        assert rec["model"].startswith("runs/r1@") and len(rec["model"].split("@")[1]) == 12
        assert rec["text"].split()[0].startswith("w")


def test_revise_changes_exactly_the_masked_tokens(workdir, in_workdir):
    d, m, r = (workdir / f"{x}.jsonl" for x in "dmr")
    assert run_main(["draft", "-n", "3", "--seed", "4", "-o", str(d)]) == 0
    assert run_main(["remask", "--gamma", "0.5", "-i", str(d), "-o", str(m)]) == 0
    assert run_main(["revise", "--block", "8", "-i", str(m), "-o", str(r)]) == 0
    for a, b, c in zip(*(read_records(str(p)) for p in (d, m, r)), strict=True):
        assert b["tokens"] == a["tokens"] and len(b["masked"]) == 15
        assert b["scores"][1:] == a["confidence"][1:]
        worst = sorted(a["confidence"][1:])[14]
        assert all(a["confidence"][p] <= worst for p in b["masked"])
        keep = [i for i in range(32) if i not in b["masked"]]
        assert all(c["tokens"][i] == a["tokens"][i] for i in keep)
        assert all(c["confidence"][i] == a["confidence"][i] for i in keep)
        assert all(c["step"][p] > a["nfe"] for p in b["masked"])
        assert c["nfe"] == a["nfe"] + c["stages"][-1]["nfe"] and c["masked"] == []
        assert c["stages"][-1]["block"] == 8


def test_gamma_zero_revise_is_a_free_no_op(workdir, in_workdir):
    d, r = workdir / "d0.jsonl", workdir / "r0.jsonl"
    assert run_main(["draft", "-n", "2", "-o", str(d)]) == 0
    res = shell(f"sbd remask --gamma 0 -i {d} | sbd revise -o {r}", workdir)
    assert res.returncode == 0, res.stderr
    for a, c in zip(read_records(str(d)), read_records(str(r)), strict=True):
        assert c["tokens"] == a["tokens"] and c["nfe"] == a["nfe"]
        assert c["stages"][-1]["nfe"] == 0


@pytest.mark.slow
def test_head_one_ends_quietly(workdir, in_workdir):
    res = shell("sbd draft -n 6 --batch-size 1 | sbd remask | head -1", workdir)
    assert res.returncode == 0
    assert len(records(res.stdout)) == 1
    assert "Traceback" not in res.stderr and "Error" not in res.stderr, res.stderr


@pytest.mark.slow
def test_remask_streams_before_its_input_ends(workdir, in_workdir):
    d = workdir / "stream.jsonl"
    assert run_main(["draft", "-n", "2", "-o", str(d)]) == 0
    lines = d.read_text().splitlines()
    proc = subprocess.Popen(
        [*SBD, "remask", "--batch-size", "1"],
        cwd=workdir,
        env=env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        proc.stdin.write(lines[0] + "\n")
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        assert ready, "no output while the input was still open"
        first = json.loads(proc.stdout.readline())
        assert first["id"] == json.loads(lines[0])["id"]
        proc.stdin.write(lines[1] + "\n")
        proc.stdin.close()
        assert len(proc.stdout.read().splitlines()) == 1
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()


def test_bundle_output_and_input(workdir, in_workdir):
    b, m = workdir / "d.safetensors", workdir / "m.jsonl"
    assert run_main(["draft", "-n", "2", "-o", str(b)]) == 0
    assert (
        run_main(["remask", "--strategy", "masked", "--passes", "3", "-i", str(b), "-o", str(m)])
        == 0
    )
    recs = list(read_records(str(m)))
    assert len(recs) == 2 and all(r["stages"][-1]["nfe"] == 3 for r in recs)
    assert all(r["nfe"] == r["stages"][0]["nfe"] + 3 for r in recs)


def test_prompts_are_fixed_prefixes(workdir, in_workdir):
    p, d, m = workdir / "prompts.jsonl", workdir / "pd.jsonl", workdir / "pm.jsonl"
    p.write_text('{"prompt": "w1 w2 w3", "id": "a"}\n{"prompt_tokens": [12, 5, 6]}\n')
    assert run_main(["draft", "--prompts", str(p), "-n", "2", "-o", str(d)]) == 0
    recs = list(read_records(str(d)))
    assert [r["id"] for r in recs] == ["a-0", "a-1", "p2-0", "p2-1"]
    for r in recs[:2]:
        assert r["tokens"][:4] == [V, 1, 2, 3] and r["prompt_len"] == 4
        assert r["confidence"][:4] == [1.0] * 4
    assert recs[2]["tokens"][:3] == [V, 5, 6]
    assert run_main(["remask", "--gamma", "1", "-i", str(d), "-o", str(m)]) == 0
    for r in read_records(str(m)):
        assert r["masked"] == list(range(r["prompt_len"], 32))


def test_prompt_texts_on_the_command_line(workdir, in_workdir):
    d, g = workdir / "pt.jsonl", workdir / "pt-gen.jsonl"
    argv = ["--prompt", "w1 w2 w3", "--prompt", "w5", "-n", "2"]
    assert run_main(["draft", *argv, "-o", str(d)]) == 0
    recs = list(read_records(str(d)))
    assert [r["id"] for r in recs] == ["p1-0", "p1-1", "p2-0", "p2-1"]
    assert [r["tokens"][: r["prompt_len"]] for r in recs] == [[V, 1, 2, 3]] * 2 + [[V, 5]] * 2
    p = workdir / "same.jsonl"  # the same prompts from a file draw the same records
    p.write_text('{"prompt": "w1 w2 w3"}\n{"prompt": "w5"}\n')
    assert (
        run_main(["draft", "--prompts", str(p), "-n", "2", "-o", str(p.with_suffix(".out"))]) == 0
    )
    assert comparable(list(read_records(str(p.with_suffix(".out"))))) == comparable(recs)
    assert run_main(["generate", *argv, "-o", str(g)]) == 0
    gen = list(read_records(str(g)))
    assert [(r["id"], r["tokens"][: r["prompt_len"]]) for r in gen] == [
        (r["id"], r["tokens"][: r["prompt_len"]]) for r in recs
    ]


def test_explicit_model_and_sbd_model_env(workdir, in_workdir, monkeypatch):
    out = workdir / "env.jsonl"
    os.rename(workdir / "runs" / "latest", workdir / "runs" / "hidden")
    try:
        assert run_main(["draft", "-n", "1", "-o", str(out)]) == 2
        monkeypatch.setenv("SBD_MODEL", str(workdir / "runs" / "r1"))
        assert run_main(["draft", "-n", "1", "-o", str(out)]) == 0
    finally:
        os.rename(workdir / "runs" / "hidden", workdir / "runs" / "latest")
    assert next(read_records(str(out)))["model"].startswith("runs/r1@")


# --------------------------------------------------------------------------- errors
def write_jsonl(path: Path, recs: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return str(path)


@pytest.fixture(scope="module")
def good_record(workdir) -> dict:
    cwd, threads = os.getcwd(), torch.get_num_threads()
    os.chdir(workdir)
    torch.set_num_threads(1)
    try:
        out = workdir / "good.jsonl"
        assert run_main(["draft", "-n", "1", "-o", str(out)]) == 0
        rec = next(read_records(str(out)))
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
    rec["masked"] = [3, 4]
    return rec


def bad_inputs(workdir: Path, rec: dict) -> dict[str, list[str]]:
    k = 17  # beyond the 16 x L that revise runs in centred windows
    long = dict(
        rec,
        tokens=rec["tokens"] * k,
        confidence=rec["confidence"] * k,
        step=rec["step"] * k,
        confidence_nucleus=rec["confidence_nucleus"] * k,
    )
    wrong = workdir / "wrong.safetensors"
    save_tensors(wrong, {"tokens": torch.zeros(2, 4, dtype=torch.int32)}, "sbd.tokens")
    j = lambda name, r: write_jsonl(workdir / f"{name}.jsonl", [r])  # noqa: E731
    return {
        "vocab": ["revise", "-i", j("vocab", dict(rec, tokens=[99, *rec["tokens"][1:]]))],
        "too long": ["revise", "-i", j("long", long)],
        "masked range": ["revise", "-i", j("range", dict(rec, masked=[3, 40]))],
        "masked missing": [
            "revise",
            "-i",
            j("missing", {k: v for k, v in rec.items() if k != "masked"}),
        ],
        "gamma": ["remask", "--gamma", "1.5", "-i", j("ok", rec)],
        "bundle schema": ["revise", "-i", str(wrong)],
        "bad json": ["remask", "-i", str(workdir / "badjson.jsonl")],
        "no model": ["draft", "-m", "no/such/run"],
        "hub name": ["draft", "-m", "kuleshov-group/bd3lm-owt-block_size16"],
        "prompt and prompts": ["draft", "--prompt", "w1", "--prompts", j("ok", rec)],
        "prompt not a token": ["generate", "--prompt", "hello"],
        "stop at eos": ["draft", "--stop-at-eos", "-n", "1"],
        "block too big": ["draft", "--length", "64", "--block", "40"],
        "steps": ["draft", "--steps-per-block", "0"],
        "top-p": ["draft", "--top-p", "0"],
        "threshold 0": ["draft", "--threshold", "0"],
        "threshold nan": ["revise", "--threshold", "nan", "-i", j("ok", rec)],
        "threshold and steps": ["draft", "--threshold", "0.9", "--steps-per-block", "2"],
        "threshold and revise steps": [
            "generate",
            "--threshold",
            "0.9",
            "--revise-steps-per-block",
            "2",
        ],
        "schedule": ["generate", "--schedule", "cosine"],
        "cache kind": ["revise", "--cache", "fuzzy", "-i", j("ok", rec)],
        "refresh 0": ["revise", "--cache", "approx", "--refresh", "0", "-i", j("ok", rec)],
        "refresh without approx": ["revise", "--refresh", "2", "-i", j("ok", rec)],
        "approx without cache": ["generate", "--cache", "approx", "--no-kv-cache"],
        "compile draft on cpu": ["draft", "--compile", "--device", "cpu"],
        "compile revise on cpu": ["revise", "--compile", "--device", "cpu", "-i", j("ok", rec)],
        "compile generate on cpu": ["generate", "--compile", "--device", "cpu"],
        "compile with approx": ["generate", "--compile", "--cache", "approx"],
        "redraw below 0": ["draft", "--redraw-low-entropy", "-1"],
        "redraw nan": ["generate", "--redraw-low-entropy", "nan"],
        "redraw window": ["draft", "--redraw-low-entropy", "4", "--redraw-window", "0"],
        "device": ["draft", "--device", "tpu"],
        "stages": ["generate", "--stages", "4,full,full", "--gammas", "0.1,0.2,0.3"],
        "posthoc long": ["remask", "--strategy", "posthoc", "-i", j("long2", long)],
        "precision draft": ["draft", "--precision", "fp16"],
        "precision remask": ["remask", "--precision", "half", "-i", j("ok", rec)],
    }


def test_every_user_error_is_one_line_with_exit_2(workdir, in_workdir, good_record, capsys):
    (workdir / "badjson.jsonl").write_text("{not json\n")
    for name, argv in bad_inputs(workdir, good_record).items():
        out = workdir / "err-out.jsonl"
        code = run_main([*argv, "-o", str(out)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, (name, err)
        assert len(err) == 1 and "error" in err[0], (name, err)
        assert not out.exists(), name  # no partial output file


def test_error_in_a_real_pipe_is_one_line(workdir, in_workdir):
    res = shell("sbd draft -n 2 | sbd remask --gamma 7", workdir)
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "gamma" in res.stderr


def test_redraw_low_entropy_is_recorded_in_the_draft_entry(workdir, in_workdir):
    """A threshold no sample can reach forces every redraw; draft and generate record it."""
    flags = ["--redraw-low-entropy", "100", "--redraw-window", "8", "--redraw-attempts", "2"]
    d, g = workdir / "redraw-d.jsonl", workdir / "redraw-g.jsonl"
    assert run_main(["draft", "-n", "2", "--length", "16", *flags, "-o", str(d)]) == 0
    assert run_main(["generate", "-n", "2", "--length", "16", *flags, "-o", str(g)]) == 0
    for drafted, generated in zip(read_records(str(d)), read_records(str(g)), strict=True):
        stage = drafted["stages"][0]
        assert (stage["redraw_low_entropy"], stage["redraw_window"]) == (100.0, 8)
        assert stage["redraw_attempts"] == 2
        assert stage["redraws"] == 1 and stage["low_entropy"] is True
        assert stage["redraw_nfe"] == 15 and drafted["nfe"] == 30
        assert generated["stages"][0] == {**stage, "seconds": generated["stages"][0]["seconds"]}


def test_threshold_records_flow_through_the_pipe_as_through_generate(workdir, in_workdir):
    """--threshold on draft and revise: recorded in the stage entries, nfe = calls used,
    --batch-size changes nothing but `batch_size`, the pipe equals `generate`."""
    tau = ["--threshold", "0.43"]  # the random test model: most confidences 0.3-0.5
    paths = {x: str(workdir / f"tau-{x}.jsonl") for x in ("b1", "b2", "d", "m", "r", "g")}
    for size, name in (("1", "b1"), ("2", "b2"), ("16", "d")):
        assert run_main(["draft", "-n", "5", *tau, "--batch-size", size, "-o", paths[name]]) == 0
    assert run_main(["remask", "--gamma", "0.25", "-i", paths["d"], "-o", paths["m"]]) == 0
    assert run_main(["revise", *tau, "-i", paths["m"], "-o", paths["r"]]) == 0
    assert run_main(["generate", "-n", "5", *tau, "-o", paths["g"]]) == 0
    drafts = [list(read_records(paths[x])) for x in ("b1", "b2", "d")]
    for one, two, all_ in zip(*drafts, strict=True):
        for rec in (one, two):
            for key in ("tokens", "step", "nfe"):
                assert rec[key] == all_[key], key
            assert rec["confidence"] == pytest.approx(all_["confidence"], abs=1e-6)
        entry = all_["stages"][0]
        got = (entry["threshold"], entry["schedule"], entry["steps_per_block"])
        assert got == (0.43, "fixed", None)
        assert entry["nfe"] == all_["nfe"] == len(set(all_["step"]) - {0}) < 31
    revised = list(read_records(paths["r"]))
    assert comparable(revised) == comparable(list(read_records(paths["g"])))
    for rec in revised:
        entry = rec["stages"][-1]
        assert entry["threshold"] == 0.43 and 1 <= entry["nfe"] <= entry["n_masked"] == 7
        validate_record(rec, vocab_size=V + 2)


def test_reference_schedule_is_recorded(workdir, in_workdir):
    out = workdir / "ref-schedule.jsonl"
    argv = ["draft", "-n", "3", "--schedule", "reference", "--steps-per-block", "2"]
    assert run_main([*argv, "-o", str(out)]) == 0
    for rec in read_records(str(out)):
        entry = rec["stages"][0]
        assert (entry["schedule"], entry["steps_per_block"]) == ("reference", 2)
        assert 8 <= rec["nfe"] <= 16  # 8 blocks of 4, at most S = 2 calls each


def test_approx_cache_with_refresh_one_equals_exact_and_generate_equals_the_pipe(
    workdir, in_workdir
):
    """`--cache approx --refresh 1` revises record for record like `--cache exact` (only the
    stage entry's `cache`/`refresh` differ); `generate --cache approx` equals the pipe with
    `--cache approx` on revise (the draft keeps the exact cache)."""
    p = {x: str(workdir / f"approx-{x}.jsonl") for x in ("d", "m", "e", "a1", "a4", "g")}
    assert run_main(["draft", "-n", "4", "-o", p["d"]]) == 0
    assert run_main(["remask", "--gamma", "0.5", "-i", p["d"], "-o", p["m"]]) == 0
    assert run_main(["revise", "-i", p["m"], "-o", p["e"]]) == 0
    approx = ["revise", "--cache", "approx", "-i", p["m"]]
    assert run_main([*approx, "--refresh", "1", "-o", p["a1"]]) == 0
    assert run_main([*approx, "--refresh", "4", "-o", p["a4"]]) == 0
    assert (
        run_main(["generate", "-n", "4", "--cache", "approx", "--gammas", "0.5", "-o", p["g"]]) == 0
    )
    exact, one, four = (comparable(list(read_records(p[x]))) for x in ("e", "a1", "a4"))
    for e, a, f in zip(exact, one, four, strict=True):
        entry = a["stages"][-1]
        assert (entry["cache"], entry["refresh"], entry["compile"]) == ("approx", 1, False)
        assert (e["stages"][-1]["cache"], e["stages"][-1]["refresh"]) == ("exact", None)
        assert f["stages"][-1]["refresh"] == 4
        for key in ("cache", "refresh"):
            entry.pop(key), e["stages"][-1].pop(key)
        assert a == e  # bit-identical tokens, confidences, steps, nfe
        assert f["nfe"] == e["nfe"] and f["masked"] == e["masked"]
    generated = comparable(list(read_records(p["g"])))
    assert four == generated and generated[0]["stages"][0]["cache"] == "exact"


def test_precision_is_recorded_where_the_network_ran_in_bf16(workdir, in_workdir):
    """--precision bf16 on CPU: draft, model remask and revise entries say bf16; fp32 (the
    CPU's auto) leaves the key out, so fp32 records are unchanged; snapshot remask runs no
    network and records nothing."""
    d, r, v = (workdir / f"prec-{x}.jsonl" for x in "drv")
    bf16 = ["--precision", "bf16"]
    assert run_main(["draft", "-n", "2", "--length", "16", *bf16, "-o", str(d)]) == 0
    posthoc = ["--strategy", "posthoc", *bf16]
    assert run_main(["remask", *posthoc, "-i", str(d), "-o", str(r)]) == 0
    assert run_main(["revise", *bf16, "-i", str(r), "-o", str(v)]) == 0
    for rec in read_records(str(v)):
        assert [s.get("precision") for s in rec["stages"]] == ["bf16"] * 3
        assert all(0 < c <= 1 for c in rec["confidence"])
    g = workdir / "prec-g.jsonl"
    assert run_main(["generate", "-n", "2", "--length", "16", "-o", str(g)]) == 0
    assert run_main(["generate", "-n", "2", "--length", "16", *bf16, "-o", str(v)]) == 0
    for rec in read_records(str(g)):
        assert all("precision" not in s for s in rec["stages"])
    for rec in read_records(str(v)):
        assert [s.get("precision") for s in rec["stages"]] == ["bf16", None, "bf16"]


ALIASES = [
    ([], ["--reveal", "steps"]),
    (["--steps-per-block", "2"], ["--reveal", "steps:2"]),
    (["--steps-per-block", "2", "--unmask", "confident"], ["--reveal", "steps:2:confident"]),
    (["--unmask", "confident"], ["--reveal", "steps:confident"]),
    (["--schedule", "reference", "--steps-per-block", "3"], ["--reveal", "reference:3"]),
    (["--schedule", "reference"], ["--reveal", "reference"]),
    (["--threshold", "0.43"], ["--reveal", "threshold:0.43"]),
    (["--first-hitting"], ["--reveal", "first-hitting"]),
    (["--no-kv-cache"], ["--cache", "none"]),
    (["--cache", "approx"], ["--cache", "approx:4"]),  # both new spellings: no note
    (["--cache", "approx", "--refresh", "2"], ["--cache", "approx:2"]),
    (["--threshold", "0.43", "--no-kv-cache"], ["--reveal", "threshold:0.43", "--cache", "none"]),
]
"""Flags of 0.2 and their spelling in --reveal / --cache."""


@pytest.mark.parametrize(("old", "new"), ALIASES, ids=[" ".join(o) or "none" for o, _ in ALIASES])
def test_old_flags_and_their_new_spelling_write_identical_records(
    workdir, in_workdir, capsys, old, new
):
    """Draft and revise with the 0.2 flags and with their --reveal/--cache spelling: the
    records are identical (stage entries included), and the old flags print one note."""
    tag = abs(hash(" ".join(old)))
    p = {x: str(workdir / f"alias-{tag}-{x}.jsonl") for x in ("d0", "d1", "m", "r0", "r1")}
    assert run_main(["draft", "-n", "3", "--block", "8", *old, "-o", p["d0"]]) == 0
    note = capsys.readouterr().err
    assert run_main(["draft", "-n", "3", "--block", "8", *new, "-o", p["d1"]]) == 0
    assert capsys.readouterr().err == ""
    if any(flag.startswith("--") and flag != "--cache" for flag in old):  # --cache is new too
        assert note.count("\n") == 1 and "note:" in note
        assert all(flag in note for flag in new if flag.startswith("--"))
    assert run_main(["remask", "--gamma", "0.5", "-i", p["d0"], "-o", p["m"]]) == 0
    assert run_main(["revise", *old, "-i", p["m"], "-o", p["r0"]]) == 0
    assert run_main(["revise", *new, "-i", p["m"], "-o", p["r1"]]) == 0
    for a, b in (("d0", "d1"), ("r0", "r1")):
        assert comparable(list(read_records(p[a]))) == comparable(list(read_records(p[b])))


@pytest.mark.parametrize(
    "argv",
    [
        ["--reveal", "threshold:0.5", "--threshold", "0.5"],
        ["--reveal", "stepz"],
        ["--cache", "captured:2"],
        ["--cache", "none", "--refresh", "2"],
        ["--threshold", "0.5", "--first-hitting"],
    ],
)
def test_bad_reveal_or_cache_is_one_line(workdir, in_workdir, capsys, argv):
    assert run_main(["draft", "-n", "1", *argv, "-o", str(workdir / "never.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (workdir / "never.jsonl").exists()

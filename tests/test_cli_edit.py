"""Tests for `sbd encode` and `sbd edit` on a tiny random run directory: the pipe and the one
process agree for the same seeds, infilling keeps every other word, `--diff` and `-o`, and
every bad input is one line, exit 2, no output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fake_model import one_thread  # noqa: F401 (autouse fixture)
from sbdcli.artifacts import read_records, validate_record
from test_cli_sample import V, comparable, make_run, records, run_main, shell

TEXTS = "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10\nw3 [MASK:2] w4 w5 [MASK] w6 w7\n"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("edit")
    make_run(root)  # L = 32, synthetic words w0..w11
    (root / "texts.txt").write_text(TEXTS)
    return root


@pytest.fixture
def in_workdir(workdir, monkeypatch) -> Path:
    monkeypatch.chdir(workdir)
    monkeypatch.delenv("SBD_MODEL", raising=False)
    return workdir


def test_encode_writes_valid_records_with_markers_and_an_encode_entry(workdir, in_workdir):
    out = workdir / "enc.jsonl"
    assert run_main(["encode", "texts.txt", "-m", "runs/r1", "-o", str(out)]) == 0
    got = list(read_records(str(out)))
    assert [r["id"] for r in got] == ["t1", "t2"]
    for rec in got:
        validate_record(rec, vocab_size=V + 2)
        assert rec["prompt_len"] == 1 and rec["tokens"][0] == V and rec["nfe"] == 0
        entry = rec["stages"][0]
        assert entry["name"] == "encode" and entry["confidence"] == "unknown"
        assert entry["mask_id"] == V + 1 and entry["seq_len"] == 32 and entry["windows"] == 1
    assert got[0]["masked"] == [] and got[0]["text"] == TEXTS.splitlines()[0]
    assert got[1]["masked"] == [2, 3, 6]
    assert [got[1]["tokens"][p] for p in (2, 3, 6)] == [V + 1] * 3
    assert got[1]["stages"][0]["n_markers"] == 2


@pytest.mark.slow
def test_edit_equals_the_pipe_for_the_same_seeds(workdir, in_workdir):
    piped = shell(
        "sbd encode texts.txt -m runs/r1 | sbd remask --strategy masked --gamma 0.3 --seed 5"
        " | sbd revise --block full --seed 5 > piped.jsonl",
        workdir,
    )
    assert piped.returncode == 0, piped.stderr
    one = shell(
        "sbd edit texts.txt -m runs/r1 --gamma 0.3 --seed 5 --records one.jsonl > edited.txt",
        workdir,
    )
    assert one.returncode == 0, one.stderr
    a = records((workdir / "piped.jsonl").read_text())
    b = records((workdir / "one.jsonl").read_text())
    assert comparable(a) == comparable(b)
    assert [s["name"] for s in b[0]["stages"]] == ["encode", "remask", "revise"]
    assert (workdir / "edited.txt").read_text() == "".join(r["text"] + "\n" for r in a)


def test_infill_fills_exactly_the_markers(workdir, in_workdir):
    out, recs = workdir / "filled.txt", workdir / "filled.jsonl"
    (workdir / "one.txt").write_text(TEXTS.splitlines()[1] + "\n")
    argv = ["edit", "one.txt", "-m", "runs/r1", "--infill", "-o", str(out), "--records", str(recs)]
    assert run_main(argv) == 0
    words = out.read_text().split()  # w3 [MASK:2] w4 w5 [MASK] w6 w7
    assert len(words) == 8 and "[MASK]" not in words
    assert [w for i, w in enumerate(words) if i not in (1, 2, 5)] == ["w3", "w4", "w5", "w6", "w7"]
    rec = next(read_records(str(recs)))
    assert rec["stages"][-1]["n_masked"] == 3 and V + 1 not in rec["tokens"]


def test_diff_prints_a_unified_diff_and_o_writes_the_text(workdir, in_workdir):
    out = workdir / "diffed.txt"
    argv = ["edit", "texts.txt", "-m", "runs/r1", "--gamma", "0.5", "--diff", "-o", str(out)]
    assert run_main(argv) == 0
    edited = out.read_text().splitlines()
    assert len(edited) == 2 and "[MASK" not in out.read_text()
    from sbdcli.pipeline.edit import text_diff

    want = text_diff(TEXTS.splitlines()[0] + "\n", edited[0] + "\n", "texts.txt:t1")
    assert want.startswith("--- texts.txt:t1 (before)\n+++ texts.txt:t1 (edited)\n@@")


def test_diff_goes_to_stdout(workdir, in_workdir, capsys):
    assert run_main(["edit", "texts.txt", "-m", "runs/r1", "--gamma", "0.5", "--diff"]) == 0
    text = capsys.readouterr().out
    assert "--- texts.txt:t2 (before)" in text and "-w3 [MASK:2] w4 w5 [MASK] w6 w7" in text


def test_snapshot_refuses_encoded_records_naming_the_strategies_that_work(
    workdir, in_workdir, capsys
):
    enc = workdir / "enc2.jsonl"
    assert run_main(["encode", "texts.txt", "-m", "runs/r1", "-o", str(enc)]) == 0
    capsys.readouterr()
    out = workdir / "snap.jsonl"
    code = run_main(
        ["remask", "--strategy", "snapshot", "--gamma", "0.2", "-i", str(enc), "-o", str(out)]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and not out.exists()
    assert "posthoc, masked, random" in err[0]


def test_a_text_beyond_the_trained_length_is_edited_in_windows(workdir, in_workdir):
    words = [f"w{i % 12}" for i in range(90)]  # 91 tokens with BOS > L = 32: 5 windows
    (workdir / "long.txt").write_text(" ".join(words[:40]) + " [MASK:3] " + " ".join(words[43:]))
    out, recs = workdir / "long-out.txt", workdir / "long.jsonl"
    argv = ["edit", "long.txt", "--whole", "-m", "runs/r1", "--infill", "-o", str(out)]
    assert run_main([*argv, "--records", str(recs)]) == 0
    got = out.read_text().split()
    assert got[:40] == words[:40] and got[43:] == words[43:]
    rec = next(read_records(str(recs)))
    assert rec["stages"][0]["windows"] == 5 and rec["stages"][-1]["n_masked"] == 3


def test_o_keeps_the_old_file_when_the_edit_fails(workdir, in_workdir):
    out = workdir / "keep.txt"
    out.write_text("precious\n")
    (workdir / "empty.txt").write_text("\n\n")
    assert run_main(["edit", "empty.txt", "-m", "runs/r1", "--gamma", "0.1", "-o", str(out)]) == 2
    assert out.read_text() == "precious\n"
    assert not list(workdir.glob("*.tmp*")) and not list(workdir.glob(".keep*"))


def bad_inputs(workdir: Path) -> dict[str, list[str]]:
    """Every bad input of `sbd encode` / `sbd edit`: name -> argv (without -o)."""
    w = lambda name, text: str(_write(workdir / name, text))  # noqa: E731
    prompt = json.dumps({"text": "w1 w2", "prompt": "w3 [MASK]"}) + "\n"
    long_text = " ".join(["w1"] * 520)  # 521 tokens > 16 x 32
    edit = ["edit", "-m", "runs/r1", "--gamma", "0.1"]
    infill = ["edit", "-m", "runs/r1", "--infill"]
    same_size, other_vocab = _foreign_records(workdir)
    return {
        "empty file": [*edit, w("e.txt", "")],
        "blank lines": ["encode", "-m", "runs/r1", w("b.txt", " \n\n")],
        "empty jsonl text": [*edit, w("e.jsonl", json.dumps({"text": " "}) + "\n")],
        "marker in the prompt": [*edit, w("p.jsonl", prompt)],
        "MASK:0": [*infill, w("z.txt", "w1 [MASK:0] w2\n")],
        "MASK:100000": [*infill, w("h.txt", "w1 [MASK:100000] w2\n")],
        "beyond the length limit": [*edit, w("l.txt", long_text + "\n")],
        "foreign tokenizer": ["revise", "-m", "runs/r1", "-i", same_size],
        "foreign vocabulary": ["revise", "-m", "runs/r1", "-i", other_vocab],
        "binary input": [*edit, str(_write_bytes(workdir / "bin.txt", b"w1\x00\xff w2\n"))],
        "not utf-8": [*edit, str(_write_bytes(workdir / "latin.txt", b"w1 caf\xe9\n"))],
        "not byte for byte": [*edit, w("n.txt", "w1  w2\n")],
        "unknown word": [*edit, w("u.txt", "w1 hello\n")],
        "no marker, no remask": [*infill, w("m.txt", "w1 w2 w3\n")],
        "gamma and infill": [*edit, "--infill", w("g.txt", "w1 [MASK]\n")],
        "neither gamma nor infill": ["edit", "-m", "runs/r1", w("g2.txt", "w1 [MASK]\n")],
        "snapshot edit": [*edit, "--strategy", "snapshot", w("s.txt", "w1 w2\n")],
        "bad jsonl": [*edit, w("j.jsonl", "{not json\n")],
        "whole and format": [*edit, "--whole", "--format", "lines", w("wf.txt", "w1\n")],
        "no such file": [*edit, "no/such.txt"],
        "both -m and --data": ["encode", "-m", "runs/r1", "--data", "runs/r1/data", "x.txt"],
        "empty marker": ["encode", "-m", "runs/r1", "--mask-token", "", w("em.txt", "w1\n")],
        "duplicate ids": [
            *edit,
            w("d.jsonl", '{"id": 1, "text": "w1"}\n{"id": 1, "text": "w2"}\n'),
        ],
    }


EXPECTED = {
    "empty file": "empty input",
    "blank lines": "empty input",
    "empty jsonl text": "is empty",
    "marker in the prompt": "inside the prompt",
    "MASK:0": "asks for 0 tokens",
    "MASK:100000": "more than the limit of 512",
    "beyond the length limit": "more than the limit of 512",
    "foreign tokenizer": "another tokenizer",
    "foreign vocabulary": "vocab_size 12",
    "binary input": "binary input",
    "not utf-8": "not UTF-8",
    "not byte for byte": "byte for byte",
    "unknown word": "'hello'",
    "no marker, no remask": "nothing to revise",
    "snapshot edit": "masked, posthoc or random",
}
"""What the error line of some of the cases must say (the reason, not another one)."""


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _foreign_records(workdir: Path) -> tuple[str, str]:
    """Records of another tokenizer: one with the same vocabulary size (its sha differs),
    one encoded with a data directory of a 10-word synthetic language."""
    src = _write(workdir / "f.txt", "w1 [MASK] w2\n")
    enc = workdir / "f-enc.jsonl"
    assert run_main(["encode", "-m", "runs/r1", str(src), "-o", str(enc)]) == 0
    rec = next(read_records(str(enc)))
    rec["stages"][0]["tokenizer"] = "0" * 64
    same_size = _write(workdir / "foreign-sha.jsonl", json.dumps(rec) + "\n")
    data = workdir / "foreign-data"
    data.mkdir(exist_ok=True)
    manifest = json.loads((workdir / "runs" / "r1" / "data" / "manifest.json").read_text())
    manifest.update(tokenizer={"kind": "synthetic", "vocab": 10}, vocab_size=12, mask_id=11)
    (data / "manifest.json").write_text(json.dumps(manifest | {"bos_id": 10}))
    other = workdir / "foreign-vocab.jsonl"
    assert run_main(["encode", "--data", str(data), str(src), "-o", str(other)]) == 0
    return str(same_size), str(other)


def test_every_bad_input_is_one_line_exit_2_and_no_output(workdir, in_workdir, capsys):
    for name, argv in bad_inputs(workdir).items():
        capsys.readouterr()
        out = workdir / "err-out.txt"
        code = run_main([*argv, "-o", str(out)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, (name, err)
        assert len(err) == 1 and "error" in err[0], (name, err)
        assert EXPECTED.get(name, "") in err[0], (name, err)
        assert not out.exists(), name


def _byte_run(root: Path) -> Path:
    """A tiny random model over UTF-8 bytes (BOS 256, EOS 257, MASK 258), L = 32."""
    import torch

    from sbdcli.config import ModelConfig
    from sbdcli.model import Denoiser
    from sbdcli.model.checkpoint import save_sbd_model

    cfg = ModelConfig(vocab_size=259, mask_id=258, seq_len=32, n_layers=1, d_model=32,
                      n_heads=4, cond_dim=16, dropout=0.0, bos_id=256, eos_id=257)  # fmt: skip
    torch.manual_seed(0)
    run = root / "byte-run"
    (run / "data").mkdir(parents=True)
    save_sbd_model(Denoiser(cfg).eval(), run / "model.safetensors", {"model_config": cfg.to_dict()})
    manifest = {"schema": "sbd.data", "schema_version": 1, "source": "test",
                "tokenizer": {"kind": "bytes"}, "vocab_size": 259, "mask_id": 258,
                "bos_id": 256, "eos_id": 257, "seq_len": 32}  # fmt: skip
    (run / "data" / "manifest.json").write_text(json.dumps(manifest))
    return run


def test_infill_keeps_every_other_byte_of_a_real_text(workdir, in_workdir):
    run = _byte_run(workdir)
    head, tail = "Hé  wö,\t", " ☃ end  \n"  # spaces, a tab, multi-byte characters
    (workdir / "bytes.txt").write_text(head + "[MASK:3]" + tail)
    out, recs = workdir / "bytes-out.txt", workdir / "bytes.jsonl"
    argv = ["edit", "bytes.txt", "--whole", "-m", str(run), "--infill", "--records", str(recs)]
    assert run_main([*argv, "-o", str(out)]) == 0
    rec = next(read_records(str(recs)))
    n = len(head.encode())
    assert rec["stages"][-1]["positions"] == [1 + n, 2 + n, 3 + n]
    assert rec["tokens"][1 : 1 + n] == list(head.encode())
    assert rec["tokens"][4 + n :] == list(tail.encode())
    text = out.read_text()
    assert text.startswith(head) and text.endswith(tail) and "[MASK" not in text

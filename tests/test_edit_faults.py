"""`sbd encode` and `sbd edit` as the hostile and careless user meets them, one section per
class of fault (the classes of tests/test_cli_faults.py): `-o` and `--records` naming a
device, names the console would read as markup, deeply nested JSON, non-finite numbers,
control characters, FIFO and /dev/fd inputs, errors naming the path asked for, `.json`
against `.jsonl`, settings that would be ignored. Every refusal holds the contract of
tests/fault_helpers.py (exit 2, one line, no traceback, nothing on stdout, nothing that
existed changed)."""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path

import pytest
import torch

from fake_model import one_thread  # noqa: F401 (autouse fixture)
from fault_helpers import code, refused, shell

TEXTS = "hello [MASK] world\nsecond [MASK] here\n"
EDIT = ["edit", "t.txt", "-m", "runs/b1", "--infill", "--device", "cpu"]
DEEP = "[" * 100_000 + "]" * 100_000
OVER = "[" * 70 + "]" * 70  # parses, but nests deeper than sbd reads


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """runs/b1 (a tiny random model on the bytes tokenizer), texts with [MASK] markers in
    three formats, hostile inputs and a file the commands must leave alone."""
    from sbdcli.config import ModelConfig
    from sbdcli.model import Denoiser
    from sbdcli.model.checkpoint import save_sbd_model

    root = tmp_path_factory.mktemp("editfaults")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=259, mask_id=258, bos_id=256, eos_id=257, seq_len=32,
                      n_layers=1, d_model=32, n_heads=4, cond_dim=16, dropout=0.0)  # fmt: skip
    run = root / "runs" / "b1"
    (run / "data").mkdir(parents=True)
    save_sbd_model(Denoiser(cfg), run / "model.safetensors", {"model_config": cfg.to_dict()})
    manifest = {"schema": "sbd.data", "schema_version": 1, "source": "test",
                "tokenizer": {"kind": "bytes"}, "vocab_size": 259, "mask_id": 258,
                "bos_id": 256, "eos_id": 257, "seq_len": 32}  # fmt: skip
    (run / "data" / "manifest.json").write_text(json.dumps(manifest))
    (root / "t.txt").write_text(TEXTS)
    items = [{"id": "a", "text": "one [MASK] two"}, {"text": "three [MASK]"}]
    (root / "t.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    (root / "t.json").write_text(json.dumps(items))
    (root / "deep.jsonl").write_text('{"text": ' + DEEP + "}\n")
    (root / "over.jsonl").write_text('{"text": "x", "id": ' + OVER + "}\n")
    (root / "deep.json").write_text(DEEP)
    (root / "dup.jsonl").write_text('{"id": "[/]x[bold]", "text": "a"}\n' * 2)
    (root / "esc.jsonl").write_text(
        (json.dumps({"id": "\x1b]0;owned\x07", "text": "a"}) + "\n") * 2
    )
    (root / "kept.txt").write_text("mine\n")
    return root


@pytest.fixture
def here(work, monkeypatch) -> Path:
    monkeypatch.chdir(work)
    monkeypatch.delenv("SBD_MODEL", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    return work


# --------------------------------------------------------------------------- 2. devices
@pytest.mark.parametrize(
    "argv",
    [
        ["encode", "t.txt", "-m", "runs/b1", "-o", "/dev/full"],
        [*EDIT, "-o", "/dev/full"],
        [*EDIT, "--records", "/dev/full"],  # the texts would go to stdout: nothing may
        [*EDIT, "--records", "/dev/full", "-o", "kept.txt"],  # kept.txt stays as it was
    ],
)
def test_a_full_device_is_one_line_and_nothing_is_written(here, capsys, argv):
    refused(argv, here, capsys, "/dev/full: No space left on device")


def test_dev_null_takes_the_texts_and_stays_a_device(here, capsys):
    assert code([*EDIT, "-o", "/dev/null", "--records", "/dev/null"]) == 0
    assert capsys.readouterr().out == ""
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")


# --------------------------------------------------------------------------- 3. markup
@pytest.mark.parametrize(
    "argv, expect",
    [
        (["encode", "a[/]b.txt", "-m", "runs/b1"], "a[/]b.txt"),
        (["edit", "t.txt", "-m", "x[/]y[bold]", "--infill"], "x[/]y[bold]"),
        (["encode", "dup.jsonl", "-m", "runs/b1"], "'[/]x[bold]'"),
        (["encode", "t.txt", "--data", "[red]d[/]"], "[red]d[/]"),
    ],
)
def test_text_that_looks_like_markup_is_printed_as_it_is(here, capsys, argv, expect):
    refused(argv, here, capsys, expect)


# --------------------------------------------------------------------------- 4. nesting
@pytest.mark.parametrize(
    "argv",
    [
        ["encode", "deep.jsonl", "-m", "runs/b1"],
        ["encode", "over.jsonl", "-m", "runs/b1"],
        ["encode", "deep.json", "-m", "runs/b1"],
        ["edit", "deep.jsonl", "-m", "runs/b1", "--infill", "--device", "cpu"],
    ],
)
def test_deeply_nested_json_is_one_line(here, capsys, argv):
    refused(argv, here, capsys, "nested deeper than 64 levels")


# --------------------------------------------------------------------------- 5. non-finite
@pytest.mark.parametrize(
    "flags, flag",
    [
        (["--temperature", "inf"], "--temperature"),
        (["--top-p", "nan"], "--top-p"),
        (["--gamma", "-inf"], "--gamma"),
    ],
)
def test_non_finite_numbers_are_refused(here, capsys, flags, flag):
    argv = ["edit", "t.txt", "-m", "runs/b1", "--device", "cpu", *flags]
    line = refused(argv, here, capsys, flag)
    assert "finite" in line


# --------------------------------------------------------------------------- 6. control chars
def test_control_characters_are_visible_in_errors(here, capsys):
    line = refused(["encode", "esc.jsonl", "-m", "runs/b1"], here, capsys, "\\x1b]0;owned\\x07")
    assert "\x1b" not in line and "\x07" not in line
    line = refused(["encode", "x\x1b[2J.txt", "-m", "runs/b1"], here, capsys, "x\\x1b[2J.txt")
    assert "\x1b" not in line


def test_edited_text_is_exact_into_a_pipe_and_visible_on_a_terminal(here, capsys, monkeypatch):
    shown = []
    for tty in (False, True):
        monkeypatch.setattr("sys.stdout.isatty", lambda tty=tty: tty)
        monkeypatch.setattr("sbdcli.pipeline.edit.edited_text", lambda r: r["text"] + "\x1b[2J")
        assert code([*EDIT, "--whole"]) == 0
        shown.append(capsys.readouterr().out)
    assert shown[0].endswith("\x1b[2J")  # a pipe gets the bytes as they are
    assert "\x1b" not in shown[1] and shown[1].endswith("\\x1b[2J")


# --------------------------------------------------------------------------- 8. dependent options
@pytest.mark.parametrize(
    "flags, expect",
    [
        (["--infill", "--strategy", "random"], "--infill remasks nothing"),
        (["--infill", "--passes", "2"], "--infill remasks nothing"),
        (["--gamma", "0.5", "--strategy", "random", "--passes", "3"], "needs --strategy masked"),
    ],
)
def test_a_setting_that_would_be_ignored_is_refused(here, capsys, flags, expect):
    refused(["edit", "t.txt", "-m", "runs/b1", "--device", "cpu", *flags], here, capsys, expect)


# --------------------------------------------------------------------------- 9. FIFOs, /dev/fd
def _feed(path: str | int, text: str) -> threading.Thread:
    """A writer thread that puts `text` into a FIFO (path) or a pipe (write descriptor)."""

    def write() -> None:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("command", ["encode", "edit"])
def test_a_fifo_and_a_dev_fd_path_are_read(here, capsys, tmp_path, command):
    extra = ["--infill", "--device", "cpu"] if command == "edit" else []
    fifo = tmp_path / "texts.txt"
    os.mkfifo(fifo)
    read_end, write_end = os.pipe()
    outs = []
    for source, sink in ((str(fifo), str(fifo)), (f"/dev/fd/{read_end}", write_end)):
        writer = _feed(sink, TEXTS)
        assert code([command, source, "-m", "runs/b1", *extra]) == 0
        writer.join(timeout=30)
        outs.append(re.sub(r'"seconds":[^,}]*', "", capsys.readouterr().out))  # measured
    os.close(read_end)
    assert outs[0] and len(outs[0].splitlines()) == 2 and outs[0] == outs[1]


def test_process_substitution_is_read(work):
    done = shell("sbd encode <(cat t.txt) -m runs/b1", work)
    assert done.returncode == 0, done.stderr
    assert [json.loads(x)["id"] for x in done.stdout.splitlines()] == ["t1", "t2"]


# --------------------------------------------------------------------------- 11. naming
@pytest.mark.parametrize(
    "argv, target",
    [
        (["encode", "t.txt", "-m", "runs/b1", "-o", "/proc/x.jsonl"], "/proc/x.jsonl"),
        ([*EDIT, "-o", "/proc/x.txt"], "/proc/x.txt"),
        ([*EDIT, "--diff", "-o", "/proc/x.txt"], "/proc/x.txt"),  # the diff is not printed
        ([*EDIT, "--records", "/proc/x.safetensors"], "/proc/x.safetensors"),
    ],
)
def test_a_failed_write_names_the_path_asked_for(here, capsys, argv, target):
    line = refused(argv, here, capsys, target)
    assert ".tmp" not in line


def test_records_and_texts_cannot_share_stdout(here, capsys):
    refused([*EDIT, "--records", "-"], here, capsys, "share stdout")
    refused([*EDIT, "--records", "-", "--diff", "-o", "x.txt"], here, capsys, "share stdout")


# --------------------------------------------------------------------------- 13. formats
def test_a_json_document_reads_as_its_jsonl_lines(here, capsys):
    outs = []
    for name in ("t.jsonl", "t.json"):
        assert code(["encode", name, "-m", "runs/b1"]) == 0
        outs.append([json.loads(x) for x in capsys.readouterr().out.splitlines()])
    assert [r["id"] for r in outs[0]] == ["a", "t2"]
    assert [r["id"] for r in outs[1]] == ["a", "t2"]
    assert [r["tokens"] for r in outs[0]] == [r["tokens"] for r in outs[1]]


def test_edited_texts_written_to_json_are_one_document_edit_reads_again(here):
    assert code(["edit", "t.jsonl", "-m", "runs/b1", "--infill", "--device", "cpu",
                 "-o", "ed.json", "--records", "ed-records.json"]) == 0  # fmt: skip
    texts = json.loads((here / "ed.json").read_text())
    assert [t["id"] for t in texts] == ["a", "t2"]
    records = json.loads((here / "ed-records.json").read_text())
    assert [r["id"] for r in records] == ["a", "t2"]
    assert code(["encode", "ed.json", "-m", "runs/b1", "-o", "again.jsonl"]) == 0
    assert len((here / "again.jsonl").read_text().splitlines()) == 2

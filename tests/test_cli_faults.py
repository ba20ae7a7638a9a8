"""The hostile and careless user, one class of fault per section, several cases each: a
`--force` that would delete a run, `-o` naming a device or a FIFO, text that the console
would read as markup, deeply nested JSON, non-finite numbers, control characters from
data, limits checked late, stage entries that misreport, FIFO and /dev/fd inputs, an
inconsistent record bundle, errors naming a temporary, multi-process errors, and `.json`
against `.jsonl`.

Every refusal asserts the same contract: exit status 2, exactly one line on stderr
(`sbd: error: ...`), no traceback, nothing on stdout, and every file and directory that
existed before unchanged (none created, none deleted)."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from fake_model import one_thread  # noqa: F401 (autouse fixture)
from fault_helpers import SBD, refused, refused_in_shell
from fault_helpers import code as _code
from fault_helpers import env as _env
from sbdcli.artifacts import load_tensors, save_tensors, visible
from sbdcli.cli import app
from test_cli_sample import make_run

BYTES_MANIFEST = {
    "schema": "sbd.data", "schema_version": 1, "source": "test", "tokenizer": {"kind": "bytes"},
    "vocab_size": 259, "mask_id": 258, "bos_id": 256, "eos_id": 257, "seq_len": 16,
}  # fmt: skip
INJECTED_ID = "\x1b]0;owned\x07\x1b[2J\x9b"
"""A record id that sets the window title and clears the screen when printed raw (and ends
in a C1 control, CSI)."""


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """runs/r1 (a tiny random model and a resume state/), runs/r2 (another run), a draft
    of 4 records, a bytes-tokenizer data directory and records that hold control bytes."""
    root = tmp_path_factory.mktemp("clifaults")
    run = make_run(root)
    (run / "state").mkdir()
    (run / "state" / "trainer.json").write_text('{"step": 3}\n')
    other = root / "runs" / "r2"
    (other / "state").mkdir(parents=True)
    (other / "state" / "trainer.json").write_text('{"step": 5}\n')
    (other / "config.json").write_text(json.dumps({"schema": "sbd.run", "schema_version": 1}))
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("mine\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("SBD_MODEL", raising=False)
        argv = ["draft", "-m", "runs/r1", "-n", "4", "--length", "16", "--device", "cpu"]
        assert _code([*argv, "-o", "draft.jsonl"]) == 0
        assert _code([*argv, "-o", "draft.safetensors"]) == 0
    _hostile_files(root)
    return root


def _hostile_files(root: Path) -> None:
    recs = [json.loads(x) for x in (root / "draft.jsonl").read_text().splitlines()]
    (root / "bytes").mkdir()
    (root / "bytes" / "manifest.json").write_text(json.dumps(BYTES_MANIFEST))
    ansi = [256, *b"\x1b[2J\x1b]0;t\x07ok"]  # clear the screen, set the title, ring the bell
    rec = {"id": INJECTED_ID, "tokens": ansi, "confidence": [0.5] * len(ansi), "masked": [],
           "prompt_len": 1, "nfe": 0, "stages": [], "text": "", "model": "gone/run@0"}  # fmt: skip
    _jsonl(root / "ansi.jsonl", [rec])
    _jsonl(root / "markup.jsonl", [dict(recs[0], id="[/]x[bold]", confidence=[2.0] * 16)])
    _jsonl(root / "orphan.jsonl", [dict(r, model="gone/run@0123456789ab") for r in recs])
    deep = "[" * 100_000 + "]" * 100_000
    over = "[" * 70 + "]" * 70  # parses, but nests deeper than sbd reads
    for name, nested in (("deep", deep), ("over", over)):
        line = json.dumps(dict(recs[0], extra="@")).replace('"@"', nested)
        (root / f"{name}.jsonl").write_text(line + "\n")
    tensors, header = load_tensors(root / "draft.safetensors", schema="sbd.records")
    short = {**header, "records": header["records"][:3]}
    save_tensors(root / "short.safetensors", tensors, "sbd.records", short)
    cut = {**tensors, "confidence": tensors["confidence"][:-1]}
    save_tensors(root / "cut.safetensors", cut, "sbd.records", header)


def _jsonl(path: Path, recs: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))


@pytest.fixture
def here(work, monkeypatch) -> Path:
    monkeypatch.chdir(work)
    monkeypatch.delenv("SBD_MODEL", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    return work


# --------------------------------------------------------------------------- 1. data loss
@pytest.mark.parametrize("out", ["runs/r1", "runs/r2", "notes"])
def test_export_force_never_deletes_a_run_or_files_it_did_not_write(here, capsys, out):
    refused(["export", "runs/r1", out, "--force"], here, capsys, "not an earlier export")


def test_export_force_replaces_an_earlier_export(here, capsys):
    assert _code(["export", "runs/r1", "exported"]) == 0
    (here / "exported" / "config.json").write_text(json.dumps({"model_type": "bd3lm"}))
    assert _code(["export", "runs/r1", "exported", "--force"]) == 0
    assert json.loads((here / "exported" / "config.json").read_text())["n_blocks"] >= 1


# --------------------------------------------------------------------------- 2. devices, FIFOs
DRAFT = "sbd draft -m runs/r1 -n 2 --length 16 --device cpu"


@pytest.mark.parametrize("target", ["/dev/full", "full.safetensors", "full.json"])
def test_a_full_device_is_reported_and_stays_a_device(work, target):
    for name in ("full.safetensors", "full.json"):
        if not (work / name).is_symlink():
            (work / name).symlink_to("/dev/full")
    line = refused_in_shell(f"{DRAFT} -o {target}", work, "No space left on device")
    assert target in line
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_dev_null_is_written_through_not_replaced(work):
    done = subprocess.run(["bash", "-c", DRAFT.replace("sbd ", " ".join(SBD) + " ") +
                           " -o /dev/null"], cwd=work, env=_env(), capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert not list(Path("/dev").glob(".null.*"))


def test_a_fifo_is_written_through_and_a_closed_reader_is_one_line(work, tmp_path):
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    cmd = DRAFT.replace("sbd ", " ".join(SBD) + " ") + f" -o {fifo}"
    done = subprocess.run(["bash", "-c", cmd], cwd=work, env=_env(), capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    got = reader.communicate(timeout=60)[0].decode()
    assert done.returncode == 0, done.stderr
    assert len(got.splitlines()) == 2 and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    # a reader that goes away: EPIPE is one line, exit 2 (not a quiet success)
    closer = subprocess.Popen(["bash", "-c", f"exec 3<{fifo}; exec 3<&-"])
    line = refused_in_shell(f"sbd draft -m runs/r1 -n 64 --length 32 --device cpu -o {fifo}",
                            work, "Broken pipe")  # fmt: skip
    closer.wait(timeout=60)
    assert str(fifo) in line and stat.S_ISFIFO(os.lstat(fifo).st_mode)


# --------------------------------------------------------------------------- 3. markup
@pytest.mark.parametrize(
    "argv, expect",
    [
        (["show", "a[/]b.jsonl"], "a[/]b.jsonl"),
        (["draft", "-m", "x[/]y[bold]", "-n", "1"], "x[/]y[bold]"),
        (["remask", "-i", "markup.jsonl", "-o", "m.jsonl"], "'[/]x[bold]'"),
        (["report", "[red]x[/].jsonl", "-o", "r.html"], "[red]x[/].jsonl"),
    ],
)
def test_text_that_looks_like_markup_is_printed_as_it_is(here, capsys, argv, expect):
    refused(argv, here, capsys, expect)


# --------------------------------------------------------------------------- 4. nesting
@pytest.mark.parametrize("name", ["deep", "over"])
@pytest.mark.parametrize(
    "argv",
    [["remask", "-i", "{f}", "-o", "m.jsonl"], ["show", "{f}"],
     ["report", "{f}", "-o", "r.html"], ["eval", "genppl", "{f}", "-e", "runs/r1"]],
)  # fmt: skip
def test_deeply_nested_json_is_one_line(here, capsys, name, argv):
    argv = [a.format(f=f"{name}.jsonl") for a in argv]
    refused(argv, here, capsys, "nested deeper than 64 levels")


# --------------------------------------------------------------------------- 5. non-finite
@pytest.mark.parametrize(
    "argv, expect",
    [
        (["draft", "-n", "1", "--temperature", "inf", "-o", "x.jsonl"], "--temperature"),
        (["draft", "-n", "1", "--top-p", "nan", "-o", "x.jsonl"], "--top-p"),
        (["generate", "-n", "1", "--gammas", "inf", "-o", "x.jsonl"], "--gamma"),
        (["remask", "--threshold", "-inf", "-i", "draft.jsonl", "-o", "x.jsonl"], "--threshold"),
        (["eval", "genppl", "draft.jsonl", "-e", "runs/r1", "--low-entropy", "inf"],
         "--low-entropy"),
        (["train", "--preset", "tiny", "--lr", "inf", "--data", "runs/r1/data", "--out", "t"],
         "--lr"),
        (["train", "--preset", "tiny", "--eps-large", "0.1,inf", "--data", "runs/r1/data",
          "--out", "t"], "finite"),
    ],
)  # fmt: skip
def test_non_finite_numbers_are_refused_before_any_work(here, capsys, argv, expect):
    line = refused([*argv, "--device", "cpu"], here, capsys, expect)
    assert "finite" in line


def _float_options(command, path=()):
    """(command path, option, placeholder values of its required parameters) for every
    float option of every sbd command."""
    for name, sub in getattr(command, "commands", {}).items():
        yield from _float_options(sub, (*path, name))
    required = []
    for p in command.params:
        kind = str(p.type_descriptor.annotation)
        if p.required:
            value = "1" if "int" in kind else "x"
            required += [value] if not p.opts[0].startswith("-") else [p.opts[0], value]
    for p in command.params:
        if "float" in str(p.type_descriptor.annotation) and p.opts[0].startswith("--"):
            yield path, p.opts[0], required


FLOAT_OPTIONS = list(_float_options(typer.main.get_command(app)))


def test_every_float_option_of_every_command_is_finite(here, capsys):
    assert len(FLOAT_OPTIONS) >= 25, FLOAT_OPTIONS  # the walk found sbd's float options
    for i, (path, option, required) in enumerate(FLOAT_OPTIONS):
        value = ("inf", "-inf", "nan", "1e999")[i % 4]
        line = refused([*path, *required, option, value], here, capsys, option)
        assert "finite" in line, (path, option, line)


# --------------------------------------------------------------------------- 6. control chars
ESCAPES = re.compile(r"\x1b\[[0-9;]*m")  # the colour (SGR) sequences --color itself writes


@pytest.mark.parametrize("extra", [["--no-color"], ["--color"], ["--color", "--tokens"]])
def test_show_writes_control_characters_visibly(here, capsys, extra):
    assert _code(["show", "ansi.jsonl", "--data", "bytes", *extra]) == 0
    out = capsys.readouterr().out
    raw = ESCAPES.sub("", out)
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", raw), repr(out)
    assert "\\x1b]0;owned\\x07\\x1b[2J\\x9b" in out  # the id, visibly
    if "--tokens" not in extra:
        assert "\\x1b[2J\\x1b]0;t\\x07ok" in ESCAPES.sub("", out)  # decoded bytes, visibly


def test_control_characters_in_an_error_and_in_the_report_are_visible(here, capsys):
    line = refused(["show", "x\x1b[2Jy.jsonl"], here, capsys, "x\\x1b[2Jy.jsonl")
    assert "\x1b" not in line
    assert _code(["report", "ansi.jsonl", "--data", "bytes", "-o", "ansi.html"]) == 0
    page = (here / "ansi.html").read_text()
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", page)
    assert "\\x1b]0;owned\\x07" in page


def test_visible_escapes_every_control_character_and_only_those():
    assert visible("a\x1b[31mb\x07\x9b\x00é\n") == "a\\x1b[31mb\\x07\\x9b\\x00é\\n"
    assert visible("line\n\ttab\x1b", lines=True) == "line\n\ttab\\x1b"


# --------------------------------------------------------------------------- 7. limits
def test_a_huge_sample_count_is_refused_before_the_work_list(work):
    for n in ("99999999999999999999999", "1000001"):
        refused_in_shell(f"timeout 60 sbd draft -m runs/r1 -n {n} -o x.jsonl", work,
                         "more than 1,000,000")  # fmt: skip


@pytest.mark.parametrize(
    "argv, expect",
    [
        (["demo", "--steps", "0", "--out", "demo-out"], "steps must be >= 1"),
        (["demo", "-n", "0", "--out", "demo-out"], "--samples"),
        (["show", "orphan.jsonl", "--stage", "99"], "--stage 99"),
        (["show", "orphan.jsonl", "--stage", "0"], "--stage 0"),
    ],
)
def test_limits_are_checked_before_anything_is_printed_or_made(here, capsys, argv, expect):
    refused(argv, here, capsys, expect)


# --------------------------------------------------------------------------- 8. stage entries
def test_a_remask_chosen_by_threshold_records_gamma_null(here):
    argv = ["remask", "-i", "draft.jsonl", "--gamma", "0.3", "--threshold", "0.1"]
    assert _code([*argv, "-o", "th.jsonl"]) == 0
    entries = [json.loads(x)["stages"][-1] for x in (here / "th.jsonl").read_text().splitlines()]
    assert all(e["gamma"] is None and e["threshold"] == 0.1 for e in entries)


@pytest.mark.parametrize(
    "argv",
    [["draft", "-n", "1", "--redraw-window", "8"],
     ["draft", "-n", "1", "--redraw-attempts", "3"],
     ["generate", "-n", "1", "--redraw-window", "8"]],
)  # fmt: skip
def test_a_redraw_setting_without_redraw_is_refused(here, capsys, argv):
    refused([*argv, "--device", "cpu", "-o", "x.jsonl"], here, capsys, "--redraw-low-entropy")


@pytest.mark.parametrize("strategy", [[], ["--strategy", "random"], ["--strategy", "posthoc"]])
def test_passes_without_the_masked_strategy_is_refused(here, capsys, strategy):
    argv = ["remask", "-i", "draft.jsonl", "--gamma", "0.5", "--passes", "3", *strategy]
    refused([*argv, "-o", "x.jsonl"], here, capsys, "needs --strategy masked")


# --------------------------------------------------------------------------- 9. FIFO inputs
@pytest.mark.parametrize(
    "cmd",
    ["sbd remask --gamma 0.5 -i <(cat draft.jsonl)", "sbd show <(cat draft.jsonl) --no-color",
     "sbd eval genppl <(cat draft.jsonl) -e runs/r1 --device cpu"],
)  # fmt: skip
def test_dev_fd_inputs_are_read(work, cmd):
    done = subprocess.run(["bash", "-c", cmd.replace("sbd ", " ".join(SBD) + " ")], cwd=work,
                          env=_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


@pytest.mark.parametrize("name", ["in.jsonl", "in.safetensors"])
def test_a_fifo_input_is_read(work, tmp_path, name):
    fifo = tmp_path / name
    os.mkfifo(fifo)
    source = work / ("draft.jsonl" if name.endswith(".jsonl") else "draft.safetensors")
    writer = subprocess.Popen(["bash", "-c", f"cat {source} > {fifo}"])
    done = subprocess.run([*SBD, "remask", "--gamma", "0.5", "-i", str(fifo)], cwd=work,
                          env=_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    writer.wait(timeout=60)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 4


# --------------------------------------------------------------------------- 10. bundles
@pytest.mark.parametrize(
    "name, expect", [("short", "lists 3 records for 4 lengths"), ("cut", "'confidence'")]
)
@pytest.mark.parametrize("command", ["remask", "show"])
def test_an_inconsistent_bundle_is_refused(here, capsys, name, expect, command):
    argv = (
        ["remask", "-i", f"{name}.safetensors"]
        if command == "remask"
        else ["show", f"{name}.safetensors"]
    )
    refused(argv, here, capsys, expect)


# --------------------------------------------------------------------------- 11. naming
@pytest.mark.parametrize(
    "cmd, target",
    [
        ("sbd remask -i draft.jsonl -o /proc/x.jsonl", "/proc/x.jsonl"),
        ("sbd remask -i draft.jsonl -o /proc/x.safetensors", "/proc/x.safetensors"),
        ("sbd export runs/r1 /proc/exported", "/proc/exported"),
    ],
)
def test_a_failed_write_names_the_path_asked_for(work, cmd, target):
    line = refused_in_shell(cmd, work, target)
    assert ".tmp" not in line, line


def test_a_failed_summary_write_names_the_path_asked_for(work):
    cmd = [*SBD, "eval", "genppl", "draft.jsonl", "-e", "runs/r1", "--out", "/proc/s.json"]
    done = subprocess.run(cmd, cwd=work, env=_env(), capture_output=True, text=True, timeout=300)
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("sbd: error:")]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert len(errors) == 1 and done.stderr.strip().splitlines()[-1] == errors[0]  # after the table
    assert "/proc/s.json" in errors[0] and ".tmp" not in errors[0], errors


# --------------------------------------------------------------------------- 12. processes
def test_only_process_0_prints_a_user_error_every_process_shares(here, capsys, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    capsys.readouterr()
    assert _code(["show", "missing.jsonl"]) == 2
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    refused(["show", "missing.jsonl"], here, capsys, "missing.jsonl")


def test_a_launch_prints_one_error_line(work):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    for args in (["draft", "-m", "runs/r1", "-n", "0", "-o", "x.jsonl"],
                 ["remask", "-i", "missing.jsonl", "-o", "x.jsonl"]):  # fmt: skip
        done = subprocess.run([*torchrun, "2", "-m", "sbdcli", *args], cwd=work, env=_env(),
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        errors = [ln for ln in done.stderr.splitlines() if ln.startswith("sbd: error:")]
        assert len(errors) == 1, done.stderr[-3000:]
        assert done.returncode == 1 and "exitcode  : 2" in done.stderr  # torchrun's own report
        assert not (work / "x.jsonl").exists()


# --------------------------------------------------------------------------- 13. formats
def test_a_json_summary_is_json_and_the_report_reads_it(here):
    assert _code(["eval", "genppl", "draft.jsonl", "-e", "runs/r1", "--out", "sum.json"]) == 0
    summaries = json.loads((here / "sum.json").read_text())
    assert isinstance(summaries, list) and summaries[0]["n"] == 4
    assert _code(["report", "sum.json", "draft.jsonl", "-o", "sum.html"]) == 0


def test_records_written_to_json_are_one_document_every_reader_takes(here):
    assert _code(["remask", "--gamma", "0.5", "-i", "draft.jsonl", "-o", "rm.json"]) == 0
    recs = json.loads((here / "rm.json").read_text())
    assert isinstance(recs, list) and len(recs) == 4
    assert (
        _code(["revise", "-m", "runs/r1", "--device", "cpu", "-i", "rm.json", "-o", "rv.jsonl"])
        == 0
    )
    assert len((here / "rv.jsonl").read_text().splitlines()) == 4
    assert _code(["show", "rm.json", "--no-color"]) == 0
    assert _code(["report", "rm.json", "-o", "rm.html"]) == 0

"""Tests for artifacts/files.py and artifacts/tensors.py: atomic writes, JSONL, safetensors headers.

Sample records (artifacts/records.py) are tested in test_records.py.
"""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys

import pytest
import torch

from sbdcli import artifacts
from sbdcli.artifacts.files import atomic_dir, atomic_file, atomic_path
from sbdcli.errors import UserError


def test_atomic_file_keeps_old_content_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), artifacts.atomic_file(target) as handle:
        handle.write("new partial")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_dir_replaces_only_when_complete(tmp_path):
    target = tmp_path / "d"
    target.mkdir()
    (target / "a").write_text("1")
    with pytest.raises(ValueError), artifacts.atomic_dir(target) as tmp:
        (tmp / "b").write_text("2")
        raise ValueError
    assert sorted(p.name for p in target.iterdir()) == ["a"]
    with artifacts.atomic_dir(target) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_tensors_roundtrip_with_header_and_schema(tmp_path):
    path = tmp_path / "t.safetensors"
    artifacts.save_tensors(path, {"x": torch.arange(6).view(2, 3)}, "sbd.test", {"a": [1, 2]})
    tensors, header = artifacts.load_tensors(path, schema="sbd.test")
    assert torch.equal(tensors["x"], torch.arange(6).view(2, 3))
    assert header["a"] == [1, 2]
    with pytest.raises(UserError, match="schema 'sbd.test', expected 'other'"):
        artifacts.load_tensors(path, schema="other")


def test_load_tensors_rejects_garbage(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 5)
    with pytest.raises(UserError, match="not a readable safetensors"):
        artifacts.load_tensors(bad)
    with pytest.raises(UserError, match="not found"):
        artifacts.load_tensors(tmp_path / "missing.safetensors")


def test_jsonl_reads_lazily_and_names_bad_lines(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\nnot json\n')
    reader = artifacts.read_jsonl(str(path))
    assert next(reader) == {"a": 1}
    assert next(reader) == {"a": 2}
    with pytest.raises(UserError, match=r"r.jsonl:4: not valid JSON"):
        next(reader)


def test_jsonl_stdin(monkeypatch):
    fake = io.TextIOWrapper(io.BytesIO(b'{"x": 1}\n[1]\n'), encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", fake)
    reader = artifacts.read_jsonl("-")
    assert next(reader) == {"x": 1}
    with pytest.raises(UserError, match="stdin:2: expected a JSON object"):
        next(reader)


def test_jsonl_writer_to_stdout(capsys):
    with artifacts.JsonlWriter("-") as writer:
        writer.write({"a": 1})
        writer.write({"b": [1.5]})
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == [{"a": 1}, {"b": [1.5]}]


def test_atomic_outputs_honour_umask_not_private_temp_modes(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        with artifacts.atomic_file(tmp_path / "f.txt") as handle:
            handle.write("x")
        with artifacts.atomic_dir(tmp_path / "d") as tmp:
            (tmp / "a").write_text("1")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_write_removes_temporaries_of_dead_writers_only(tmp_path):
    target = tmp_path / "out.jsonl"
    dead, live = _dead_pid(), os.getpid()
    stale = [tmp_path / f".out.jsonl.{dead}.x1.tmp", tmp_path / f".out.jsonl.old-{dead}"]
    stale[0].write_text("half")
    stale[1].mkdir()
    kept = [tmp_path / f".out.jsonl.{live}.x2.tmp", tmp_path / f".other.{dead}.x3.tmp"]
    for path in kept:
        path.write_text("in use")
    with atomic_file(target) as handle:
        handle.write("new\n")
    assert target.read_text() == "new\n"
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)


def test_temporaries_name_the_writer_and_a_failed_write_names_the_target(tmp_path):
    target = tmp_path / "x.json"
    with pytest.raises(OSError) as info, atomic_file(target) as handle:
        seen = [p.name for p in tmp_path.iterdir()]
        assert seen and seen[0].startswith(f".x.json.{os.getpid()}.")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), handle.name)
    assert info.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("writer", ["path", "dir"])
def test_atomic_path_and_dir_also_remove_dead_writers_temporaries(tmp_path, writer):
    target = tmp_path / "out"
    dead, live = _dead_pid(), os.getpid()
    stale, kept = tmp_path / f".out.{dead}.a.tmp", tmp_path / f".out.{live}.b.tmp"
    stale.mkdir()
    (stale / "part").write_text("half")
    kept.write_text("in use")
    if writer == "path":
        with atomic_path(target) as tmp:
            tmp.write_text("new")
    else:
        with atomic_dir(target) as tmp:
            (tmp / "f").write_text("new")
    assert not stale.exists() and kept.read_text() == "in use"


def test_run_names_and_the_latest_link(tmp_path):
    from sbdcli.artifacts.rundir import new_run_dir, point_latest, run_dir_of_records

    runs = tmp_path / "runs"
    runs.mkdir()
    a = new_run_dir(runs, "tiny", "topic-markov")
    assert a.parent == runs and a.name.startswith("tiny-topic-markov-2")
    assert new_run_dir(runs, "tiny").name.count("-") == 2  # tiny-<date>-<time>
    a.mkdir()
    b = runs / "b"
    b.mkdir()
    assert point_latest(a, runs) is None  # the first link moved nothing
    assert point_latest(a, runs) is None  # the same run again
    assert point_latest(b, runs) == a.name and (runs / "latest").resolve() == b.resolve()
    assert point_latest(tmp_path / "elsewhere", runs) is None  # outside runs/: untouched
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.json").write_text("{}")
    records = [{"model": str(tmp_path / "gone" / "model.safetensors") + "@0"}]
    assert run_dir_of_records(records) is None  # a missing model never names its parent

"""Tests for sbdcli.distributed: draft, generate, remask, revise and `eval genppl` under
torchrun with 2 CPU processes (gloo) write exactly what one process writes (but the
measured seconds); bad launches are one-line errors; a failing or killed process leaves
no output file. Tiny random model, a handful of records: CI has two cores."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fake_model import one_thread, tiny_denoiser  # noqa: F401 (autouse fixture)
from sbdcli import distributed as dist
from sbdcli.errors import UserError

SBD = [sys.executable, "-m", "sbdcli"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """runs/latest: a random tiny model over a prepared synthetic language (with its oracle)."""
    from sbdcli.data import prepare_synthetic
    from sbdcli.model.checkpoint import save_sbd_model

    root = tmp_path_factory.mktemp("dist")
    run = root / "runs" / "r1"
    prepare_synthetic(run / "data", seq_len=16, num_train=8, num_val=8, floor_samples=64)
    vocab = json.loads((run / "data" / "manifest.json").read_text())["vocab_size"]
    model = tiny_denoiser(seq_len=16, vocab_size=vocab)
    save_sbd_model(model, run / "model.safetensors", {"model_config": model.config.to_dict()})
    (root / "runs" / "latest").symlink_to("r1")
    one = sbd(root, "draft", "-n", "6", "--batch-size", "2", "-o", "draft.jsonl")
    assert one.returncode == 0, one.stderr
    return root


def env() -> dict[str, str]:
    e = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    e.pop("SBD_MODEL", None)
    return e


def sbd(cwd: Path, *args: str, procs: int = 1) -> subprocess.CompletedProcess:
    """`sbd ARGS` in one process, or under torchrun with `procs` processes."""
    cmd = [*SBD, *args] if procs == 1 else [*TORCHRUN, str(procs), "-m", "sbdcli", *args]
    return subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=300)


def sbd_ok(cwd: Path, *args: str, procs: int = 1) -> subprocess.CompletedProcess:
    """`sbd` that must succeed; one retry: torchrun's local rendezvous can flake when busy."""
    for _ in range(2):
        done = sbd(cwd, *args, procs=procs)
        if done.returncode == 0:
            return done
    raise AssertionError(done.stderr[-3000:])


def comparable(path: Path) -> list[dict]:
    """The records of a file without their wall-clock fields."""
    out = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        rec["stages"] = [{k: v for k, v in s.items() if k != "seconds"} for s in rec["stages"]]
        out.append(rec)
    return out


def both(work: Path, name: str, *args: str) -> tuple[list[dict], list[dict]]:
    """The records of `sbd ARGS -o FILE` in one process and in two."""
    sbd_ok(work, *args, "-o", f"{name}-1.jsonl")
    sbd_ok(work, *args, "-o", f"{name}-2.jsonl", procs=2)
    return comparable(work / f"{name}-1.jsonl"), comparable(work / f"{name}-2.jsonl")


def leftovers(work: Path, name: str) -> list[str]:
    return [p.name for p in work.iterdir() if name in p.name]


# --------------------------------------------------------------------------- same output
@pytest.mark.slow
def test_two_processes_draft_and_generate_what_one_process_does(work):
    # 3 batches over 2 processes: rounds of two batches, the last one uneven
    one, two = both(work, "draft", "draft", "-n", "6", "--batch-size", "2")
    assert len(one) == 6 and one == two
    assert [r["id"] for r in two] == [f"s0-{i}" for i in range(6)]
    one, two = both(work, "gen", "generate", "-n", "5", "--batch-size", "2", "--seed", "3")
    assert len(one) == 5 and one == two
    assert {len(r["stages"]) for r in two} == {3}  # draft, remask, revise


@pytest.mark.slow
def test_two_processes_remask_and_revise_what_one_process_does(work):
    one, two = both(work, "remask", "remask", "--gamma", "0.5", "--batch-size", "2",
                    "-i", "draft.jsonl")  # fmt: skip
    assert one == two and all(r["masked"] for r in two)
    one, two = both(work, "revise", "revise", "--batch-size", "2", "-i", "remask-1.jsonl")
    assert one == two and not any(r["masked"] for r in two)


def test_two_processes_judge_what_one_process_judges(work):
    args = ("eval", "genppl", "draft.jsonl", "--batch-size", "2", "--floor-samples", "64")
    one = sbd_ok(work, *args, "--markdown", "--out", "eval-1.jsonl")
    two = sbd_ok(work, *args, "--markdown", "--out", "eval-2.jsonl", procs=2)
    assert one.stdout == two.stdout and "| draft.jsonl" in one.stdout
    a, b = ((work / f"eval-{k}.jsonl").read_text() for k in (1, 2))
    assert a == b and json.loads(a)["n"] == 6


# --------------------------------------------------------------------------- bad launches
@pytest.mark.parametrize(
    "args, message",
    [
        (["draft", "-n", "4"], "with 2 processes, pass -o FILE"),
        (["draft", "-n", "1", "-o", "x.jsonl"], "2 processes but only 1 records"),
    ],
)
def test_a_bad_launch_is_a_one_line_error_and_writes_nothing(work, args, message):
    done = sbd(work, *args, procs=2)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("sbd: error:")]
    assert errors and all(message in line for line in errors), done.stderr[-2000:]
    assert not leftovers(work, "x.jsonl")


def test_an_invalid_record_on_one_process_stops_every_process(work):
    recs = (work / "draft.jsonl").read_text().splitlines()
    bad = json.loads(recs[3])  # batch 1 of --batch-size 2: process 1's
    bad["tokens"] = bad["tokens"][:-1]
    recs[3] = json.dumps(bad)
    (work / "bad.jsonl").write_text("\n".join(recs) + "\n")
    args = ("remask", "--batch-size", "2", "-i", "bad.jsonl", "-o", "bad-out.jsonl")
    single = sbd(work, *args)
    assert single.returncode == 2
    done = sbd(work, *args, procs=2)
    assert done.returncode != 0 and "exitcode  : 2" in done.stderr
    assert single.stderr.strip() in done.stderr  # the message one process gives
    assert not leftovers(work, "bad-out")


def test_a_killed_process_leaves_no_output(work):
    # long enough (thousands of batches) that no machine finishes it before the kill
    args = ("draft", "-n", "4096", "--batch-size", "2", "--length", "128", "-o", "killed.jsonl")
    cmd = [*TORCHRUN, "2", "-m", "sbdcli", *args]
    launch = subprocess.Popen(cmd, cwd=work, env=env(), stderr=subprocess.PIPE, text=True)
    victim = _wait_for_rank(launch.pid, 1)
    time.sleep(3)  # into the run (or still importing: either way, mid-run)
    os.kill(victim, signal.SIGKILL)
    _, stderr = launch.communicate(timeout=120)
    assert launch.returncode != 0 and "SIGKILL" in stderr
    assert "Signal 15 (SIGTERM) received" in stderr  # process 0, waiting for process 1
    assert not (work / "killed.jsonl").exists()


def _wait_for_rank(parent: int, rank: int, timeout: float = 60) -> int:
    """The pid of the child of `parent` whose environment says RANK=`rank`."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for child in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
            environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            if f"RANK={rank}".encode() in environ:
                return int(child)
        time.sleep(0.1)
    raise AssertionError(f"no process of rank {rank} appeared")


# --------------------------------------------------------------------------- in one process
def test_one_process_maps_in_order_and_needs_no_files():
    w = dist.World()
    assert w.main and list(dist.map_ordered(lambda x: x * x, range(4), w)) == [0, 1, 4, 9]
    dist.require_files(w, input="-", output="-")
    dist.check_enough(w, 1, 1, "batches")
    assert list(dist.rounds(range(5), 2)) == [[0, 1], [2, 3], [4]]


def test_checks_of_a_launch_of_four():
    w = dist.World(rank=2, size=4, local_rank=2)
    assert not w.main
    with pytest.raises(UserError, match="pass -o FILE: the processes cannot share stdout"):
        dist.require_files(w, input="in.jsonl", output="-")
    with pytest.raises(UserError, match="4 processes but only 3 records"):
        dist.check_enough(w, 2, 3, "batches")
    with pytest.raises(UserError, match="only 2 batches of work for 8 records"):
        dist.check_enough(w, 2, 8, "batches")
    dist.check_enough(w, 4, 8, "batches")
    dist.require_files(w, input=None, output="out.jsonl")
    with pytest.raises(UserError, match="pass -i FILE: the processes cannot share stdin"):
        dist.require_files(w, input="-")
    assert dist.device_for("cpu", w) == "cpu"

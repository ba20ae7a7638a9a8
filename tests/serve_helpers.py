"""Shared helpers of the `sbd serve` tests: a tiny random run, a live server on loopback,
a held batch worker, server-sent events, what `sbd generate` writes, records without their
wall-clock fields."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fake_model import tiny_denoiser

V = 12  # content tokens of the synthetic vocabulary: BOS = 12, MASK = 13, EOS = 14


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


def comparable(rec: dict[str, Any]) -> dict[str, Any]:
    """A record without what says how it ran (seconds, batch_size: docs/serving.md)."""
    out = dict(rec)
    out["stages"] = [
        {k: v for k, v in s.items() if k not in ("seconds", "batch_size")} for s in rec["stages"]
    ]
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live_server(app: Any) -> Iterator[str]:
    """`app` under uvicorn in a thread on a free loopback port; stopped on exit."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning",
                            lifespan="on", timeout_graceful_shutdown=5)  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join(15)


@contextlib.contextmanager
def held_worker(app: Any) -> Iterator[threading.Event]:
    """The app's batch worker stops inside its next batch until the yielded event is set
    (so requests queue behind it in a known order); waits (bounded) until it is held."""
    batcher = app.state.server.batcher
    release, entered = threading.Event(), threading.Event()
    real_run = batcher._run

    def held(batch: Any) -> int:
        batcher._run = real_run
        entered.set()
        assert release.wait(60), "the held batch was never released"
        return real_run(batch)

    batcher._run = held
    try:
        yield release
    finally:
        release.set()
        batcher._run = real_run


def wait_for(check: Any, seconds: float = 30.0) -> None:
    """Poll `check()` until true (every 20 ms, at most `seconds`)."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """(event name, data) of each server-sent event ("message" when unnamed)."""
    name, data = "message", []
    for line in lines:
        if line == "":
            if data:
                yield name, "\n".join(data)
            name, data = "message", []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    if data:
        yield name, "\n".join(data)


def generate(
    workdir: Path, prompt: str, seed: int, argv: list[str], rid: str | None = None
) -> list[dict[str, Any]]:
    """What `sbd generate` writes for one prompt (a one-line prompts file), run in `workdir`."""
    from sbdcli.cli import main

    src, out = workdir / f"p{seed}.jsonl", workdir / f"g{seed}.jsonl"
    line = {"prompt": prompt} if rid is None else {"prompt": prompt, "id": rid}
    src.write_text(json.dumps(line) + "\n")
    with pytest.raises(SystemExit) as info:
        main(["generate", "--prompts", str(src), "--seed", str(seed), "-o", str(out), *argv])
    assert info.value.code in (0, None)
    return [json.loads(line) for line in out.read_text().splitlines()]


def ref_in(workdir: Path) -> Any:
    """runs/latest of `workdir`, loaded from there: its records name the model as a
    command run in that directory (`sbd generate`, `sbd edit -m runs/latest`) does."""
    from sbdcli import pipeline as pl

    here = Path.cwd()
    os.chdir(workdir)
    try:
        return pl.load_model_ref("runs/latest")
    finally:
        os.chdir(here)

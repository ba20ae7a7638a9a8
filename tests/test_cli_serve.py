"""`sbd serve` as a command: a missing model or a bad option is one line and exit 2 before
any port opens; a started server prints its URL, logs one line per request, and stops on
SIGTERM or SIGINT with every in-flight stream ended (finished, or an `error` event),
nothing hung, exit 0."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra (pip install 'sbdcli[serve]')")
pytest.importorskip("httpx", reason="the dev extra (pip install -e '.[dev]')")

import httpx

from sbdcli.cli import main
from serve_helpers import make_run, sse_events


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    out = capsys.readouterr()
    return int(info.value.code or 0), out.out, out.err


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["-m", "no/such/run"], "no/such/run"),
        (["--max-batch", "0"], "--max-batch"),
        (["--max-batch", "8", "--max-queue", "4"], "--max-queue"),
        (["--port", "70000"], "--port"),
        (["--max-body", "10"], "--max-body"),
    ],
    ids=["missing-model", "max-batch", "queue-below-batch", "port", "max-body"],
)
def test_a_bad_start_is_one_line_and_exit_2(argv, words, capsys):
    code, out, err = run_cli(["serve", *argv], capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and words in err, err


def test_a_broken_model_fails_before_the_port_opens(tmp_path, capsys):
    run = make_run(tmp_path)
    (run / "model.safetensors").write_bytes(b"not a checkpoint")
    code, _, err = run_cli(["serve", "-m", str(run)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err


def test_a_taken_port_is_one_line(tmp_path, capsys):
    run = make_run(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code, _, err = run_cli(["serve", "-m", str(run), "--port", str(port)], capsys)
    assert code == 2 and f"cannot listen on 127.0.0.1:{port}" in err, err


class Started:
    """`sbd serve` in a subprocess: its stderr read by a thread (the URL line, then logs)."""

    def __init__(self, run: Path, *extra: str) -> None:
        argv = [sys.executable, "-m", "sbdcli", "serve", "-m", str(run), "--port", "0", *extra]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, cwd=run.parent)  # fmt: skip
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        assert self.ready.wait(120), "the server did not print its URL"
        line = next(ln for ln in self.lines if " at http://" in ln)
        self.url = line.split(" at ")[1].split()[0]

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            if " at http://" in line:
                self.ready.set()
        self.ready.set()

    def stop(self, sig: int, seconds: float = 30) -> int:
        self.proc.send_signal(sig)
        code = self.proc.wait(seconds)
        self.reader.join(10)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def stream_until_end(url: str, seed: int, ends: dict[int, str]) -> None:
    """One streamed request; records how it ended ([DONE], an error event, or the
    connection closing)."""
    body = {"seed": seed, "stream": True, "sbd": {"events": True}}
    try:
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as resp:
            if resp.status_code != 200:  # arrived after the signal: 503
                ends[seed] = json.loads(resp.read())["error"]["message"]
                return
            for name, data in sse_events(resp.iter_lines()):
                if data == "[DONE]":
                    ends[seed] = "done"
                elif name == "error":
                    ends[seed] = json.loads(data)["error"]["message"]
    except httpx.HTTPError as exc:
        ends[seed] = f"closed: {exc!r}"


def test_sigterm_ends_every_stream_and_stops(tmp_path):
    server = Started(make_run(tmp_path, seq_len=64))
    try:
        url = server.url
        assert httpx.get(f"{url}/health", timeout=10).json()["status"] == "ok"
        ends: dict[int, str] = {}
        # different seeds: one batch each, so most wait in the queue when the signal comes
        threads = [threading.Thread(target=stream_until_end, args=(url, s, ends)) for s in range(6)]
        for t in threads:
            t.start()
        for _ in range(500):  # until a request is running (bounded)
            if httpx.get(f"{url}/health", timeout=10).json()["queue"] >= 4:
                break
            threading.Event().wait(0.01)
        code = server.stop(signal.SIGTERM)
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads)
    finally:
        server.close()
    err = "\n".join(server.lines)
    assert code == 0, err
    assert sorted(ends) == list(range(6))
    stopped = [s for s, how in ends.items() if how == "the server is shutting down"]
    assert stopped, ends  # the queued ones end with an error event
    assert all(how in ("done", "the server is shutting down") for how in ends.values()), ends
    assert "Traceback" not in err
    logged = [ln for ln in server.lines if ln.startswith("sbd serve: ")][1:]
    assert len(logged) == 6, err
    assert {ln.split("status=")[1].split()[0] for ln in logged} <= {"200", "503"}


def test_sigint_stops_a_keyed_server(tmp_path):
    """`--port 0` takes a free port; the printed URL is where the server answers."""
    server = Started(make_run(tmp_path), "--api-key", "k")
    try:
        assert httpx.get(f"{server.url}/v1/models", timeout=10).status_code == 401
        assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
        assert server.stop(signal.SIGINT) == 0
    finally:
        server.close()

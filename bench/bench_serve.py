"""`sbd serve` under concurrency: batched vs one-at-a-time throughput, latency, a load test.

    python -m bench.bench_serve [--length 128] [--requests 16] [--repeats 3]
        [--windows 10,20,0] [--load 200] [--write]

One run, side by side on the same model and server (a random tiny model, the `tiny`
preset, at L = `--length` with a synthetic vocabulary; its text is meaningless, its
costs are a trained model's): the server runs in a subprocess (`sbd serve`, so its memory
can be read from /proc), clients are threads on loopback.

1. Throughput: `--requests` unseeded streaming requests (draft block 4, one revise stage
   of gamma 0.25 with a full block: `sbd generate`'s defaults) sent one at a time, then by
   as many concurrent clients; completed tokens/s of each and their ratio, `--repeats`
   rounds (the median round is reported, with the range), for each `--windows` batch
   window (one server each: the window trades this ratio against the first event).
2. Latency: time to the first draft event and to the final event, p50/p95, at
   concurrency 1, 4 and 16 (each client sends its requests one after another).
3. First event vs one cached draft call: the draft's seconds per network call of one row,
   as the server measured it (the draft stage's `seconds` / `nfe` of the records at
   concurrency 1), plus the HTTP round trip of `GET /health`.
4. Load test: `--load` requests from 32 clients, a mix of valid seeded requests (streaming
   and not), malformed ones (expect 400) and clients that leave after their first event;
   then the server must be up, every valid request answered 200 with the record computed
   for it in this process, and its resident memory within 10% of its idle value.
5. The ceiling: the same requests through the sampler alone in this process (one at a
   time, then as one batch), which is all that batching can give before any server cost.

Not here: unit tests of the server (tests/test_serve_*.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import torch

from bench.bench_sampler import build
from bench.timer import stopwatch, timed
from sbdcli.evaluate.report import markdown_grid

VOCAB = 64
"""Content tokens of the synthetic vocabulary (+ BOS and MASK)."""
PROMPT = "w1 w2"


def make_run(root: Path, length: int) -> Path:
    """RUN/model.safetensors (random `tiny` model) + RUN/data/manifest.json."""
    from sbdcli.model.checkpoint import save_sbd_model

    torch.manual_seed(0)
    model = build("tiny", VOCAB + 2, length, "cpu")
    run = root / "run"
    (run / "data").mkdir(parents=True)
    save_sbd_model(model, run / "model.safetensors", {"model_config": model.config.to_dict()})
    manifest = {
        "schema": "sbd.data",
        "schema_version": 1,
        "source": "bench",
        "tokenizer": {"kind": "synthetic", "vocab": VOCAB},
        "vocab_size": VOCAB + 2,
        "mask_id": VOCAB + 1,
        "bos_id": VOCAB,
        "eos_id": None,
        "seq_len": length,
    }
    (run / "data" / "manifest.json").write_text(json.dumps(manifest))
    return run


def draft_call_seconds(results: list[dict[str, Any]]) -> float:
    """Seconds per network call of a one-row cached draft, as the server timed its draft
    stage (median over the requests)."""
    return statistics.median(r["record"]["stages"][0]["seconds"] / r["record"]["stages"][0]["nfe"]
                             for r in results)  # fmt: skip


class Server:
    """`sbd serve` in a subprocess; stderr read by a thread (URL, then one line per request)."""

    def __init__(self, run: Path, *extra: str) -> None:
        argv = [sys.executable, "-m", "sbdcli", "serve", "-m", str(run), "--port", "0", *extra]
        self.proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     text=True)  # fmt: skip
        self.lines: list[str] = []
        ready = threading.Event()

        def read() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.lines.append(line.rstrip("\n"))
                if " at http://" in line:
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(300) or self.proc.poll() is not None:
            raise SystemExit("the server did not start:\n" + "\n".join(self.lines))
        line = next(ln for ln in self.lines if " at http://" in ln)
        self.url = line.split(" at ")[1].split()[0]

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def sse(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
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


def streamed(url: str, body: dict[str, Any], leave: bool = False) -> dict[str, Any]:
    """One streaming request: seconds to the first event and to the final one, tokens."""
    body = {**body, "stream": True, "sbd": {**body.get("sbd", {}), "events": True}}
    clock = stopwatch()
    out: dict[str, Any] = {"status": None, "first": None, "final": None, "tokens": 0}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=600) as resp:
        out["status"] = resp.status_code
        if resp.status_code != 200:
            resp.read()
            return out
        for name, data in sse(resp.iter_lines()):
            if out["first"] is None and name.startswith("sbd."):
                out["first"] = clock()
                if leave:
                    return out
            if name == "sbd.final":
                rec = json.loads(data)["record"]
                out.update(final=clock(), record=rec)
                out["tokens"] += len(rec["tokens"]) - rec["prompt_len"]
            if name == "error":
                out["status"] = json.loads(data)["error"].get("code") or "error"
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def quantiles(results: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """p50 and p95 of the seconds to the first and to the final event."""
    return {k: (pct([r[k] for r in results], 0.5), pct([r[k] for r in results], 0.95))
            for k in ("first", "final")}  # fmt: skip


def run_clients(url: str, bodies: list[dict[str, Any]], clients: int) -> tuple[float, list]:
    """Send `bodies` from `clients` threads (each one request after another)."""
    return timed(lambda: list(ThreadPoolExecutor(clients).map(lambda b: streamed(url, b), bodies)))


# --------------------------------------------------------------------------- load test
BAD_BODIES: list[Any] = [
    b"{not json",
    {"max_tokens": 100000},
    {"sbd": {"gammas": 2}},
    {"sbd": {"strategy": "loudest"}},
    {"n": 99},
    {"seed": "x"},
]


def expected_records(run: Path, bodies: list[dict[str, Any]], length: int) -> list[dict]:
    """Each valid body's record, computed in this process (what `sbd generate` writes)."""
    from sbdcli import pipeline as pl
    from sbdcli.serve.jobs import Limits, make_job
    from sbdcli.serve.schemas import CompletionRequest

    ref = pl.load_model_ref(str(run), "cpu")
    out = []
    for body in bodies:
        job = make_job(CompletionRequest.model_validate(body), ref, Limits(), "x")
        (rec,) = pl.draft_batch(ref, job.prompts, job.length, job.draft_cfg, body["seed"])
        for stage in job.plan:
            rec = pl.remask_batch([rec], stage.remask, ref)[0]
            rec = pl.revise_batch([rec], ref, stage.revise, stage.seed)[0]
        out.append(rec)
    return out


def strip(rec: dict[str, Any]) -> dict[str, Any]:
    """A record without how it ran (seconds, batch_size, n_records)."""
    drop = ("seconds", "batch_size", "n_records")
    return {**rec, "stages": [{k: v for k, v in s.items() if k not in drop} for s in rec["stages"]]}


def load_test(server: Server, run: Path, total: int, length: int) -> dict[str, Any]:
    rng = random.Random(0)
    valid = [{"prompt": PROMPT, "seed": s, "sbd": {"id": f"v{s}-{k}"}} for s in (1, 2)
             for k in range(4)]  # fmt: skip
    idle = server.rss_mib()
    plan = [rng.choices(["valid", "stream", "bad", "leave"], [3, 3, 2, 2])[0] for _ in range(total)]

    def one(i: int) -> tuple[str, Any, Any]:
        kind = plan[i]
        if kind == "bad":
            body = BAD_BODIES[i % len(BAD_BODIES)]
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            resp = httpx.post(f"{server.url}/v1/completions", content=data, timeout=600,
                              headers={"Content-Type": "application/json"})  # fmt: skip
            return kind, None, resp.status_code
        k = i % len(valid)
        if kind == "leave":
            return kind, k, streamed(server.url, valid[k], leave=True)["status"]
        if kind == "stream":
            got = streamed(server.url, valid[k])
            return kind, k, (got["status"], got.get("record"))
        resp = httpx.post(f"{server.url}/v1/completions", json=valid[k], timeout=600)
        rec = resp.json()["sbd"]["records"][0] if resp.status_code == 200 else None
        return kind, k, (resp.status_code, rec)

    seconds, results = timed(lambda: list(ThreadPoolExecutor(32).map(one, range(total))))
    time.sleep(2)
    after = server.rss_mib()
    up = httpx.get(f"{server.url}/health", timeout=30).json()["status"] == "ok"
    expected = [strip(r) for r in expected_records(run, valid, length)]
    answered = [(k, got) for kind, k, got in results if kind in ("valid", "stream")]
    right = sum(1 for k, (status, rec) in answered if status == 200 and strip(rec) == expected[k])
    bad = [got for kind, _, got in results if kind == "bad"]
    return {
        "requests": total,
        "seconds": seconds,
        "valid": len(answered),
        "right": right,
        "bad": len(bad),
        "bad_400": sum(1 for s in bad if s == 400),
        "left": plan.count("leave"),
        "up": up,
        "idle_mib": idle,
        "after_mib": after,
    }


# --------------------------------------------------------------------------- report
def report(args: argparse.Namespace, m: dict[str, Any]) -> str:
    main = m["windows"][0]
    tp = main["throughput"]
    seq, conc = tp["sequential"], tp["concurrent"]
    lines = [
        f"Random `tiny` model (2 layers, d 128) at L = {args.length}, synthetic vocabulary, "
        f"`sbd serve` defaults (draft block 4, one revise stage, gamma 0.25, full block), "
        f"{m['threads']} torch threads in the server, batch window {main['window']:g} ms "
        f"(the default) unless a row says otherwise. Measured in one run on {m['machine']}; "
        f"load average {m['load_before']:.1f} when it started, {m['load_after']:.1f} when it "
        "ended. The clients (Python threads parsing every event) share the two cores with "
        "the server.",
        "",
        f"Command: `python -m bench.bench_serve --length {args.length} --requests "
        f"{args.requests} --repeats {args.repeats} --windows {args.windows} --load "
        f"{args.load} --write`",
        "",
        f"Throughput: {args.repeats} rounds of {args.requests} streaming requests one at a "
        f"time, then the same from {args.requests} concurrent clients; the round with the "
        "median ratio:",
        "",
        markdown_grid(
            ["workload", "seconds", "completed tokens/s"],
            [
                [
                    f"{args.requests} streaming requests one at a time",
                    f"{seq['seconds']:.2f}",
                    f"{seq['tps']:.0f}",
                ],
                [
                    f"the same from {args.requests} concurrent clients",
                    f"{conc['seconds']:.2f}",
                    f"{conc['tps']:.0f}",
                ],
            ],
            "lrr",
        ),
        "",
        f"Concurrent / one at a time: **{tp['ratio']:.2f}x** (rounds: {tp['low']:.2f}x to "
        f"{tp['high']:.2f}x; target >= 4x: {'met' if tp['ratio'] >= 4 else 'NOT met'}).",
        "",
        markdown_grid(
            ["concurrency", "first event p50 / p95 (s)", "final event p50 / p95 (s)"],
            [
                [
                    str(c),
                    f"{lat['first'][0]:.3f} / {lat['first'][1]:.3f}",
                    f"{lat['final'][0]:.3f} / {lat['final'][1]:.3f}",
                ]
                for c, lat in main["latency"].items()
            ],
            "rrr",
        ),
    ]
    ip = m["in_process"]
    lines += [
        "",
        f"The sampler alone, without the server (the same {args.requests} requests in this "
        "process's main thread, no HTTP, no events; best of the rounds): one at a time "
        f"{ip['one']:.2f} s, as one batch of {args.requests} rows {ip['batch']:.2f} s: "
        f"**{ip['ratio']:.2f}x**, the most batching can give at this size on these cores.",
    ]
    lines += ["", workload_table(main, args.requests), ""]
    lines += [
        first_event_line(main, main["http"]),
        "",
        window_table(m, main["http"], args.requests),
        "",
    ]
    ld = main["load"]
    lines += [
        f"Load test: {ld['requests']} requests from 32 concurrent clients in "
        f"{ld['seconds']:.1f} s ({ld['valid']} valid seeded, {ld['bad']} malformed, "
        f"{ld['left']} clients leaving after their first event): server up afterwards: "
        f"{ld['up']}; valid requests answered 200 with their seeded record: "
        f"{ld['right']} / {ld['valid']}; malformed answered 400: {ld['bad_400']} / {ld['bad']}; "
        f"server memory idle {ld['idle_mib']:.0f} MiB, after {ld['after_mib']:.0f} MiB "
        f"({100 * (ld['after_mib'] / ld['idle_mib'] - 1):+.1f}%, target within 10%).",
    ]
    return "\n".join(lines)


def workload_table(m: dict[str, Any], n: int) -> str:
    """The throughput ratio of each workload: batching pays where calls are small."""
    rows = []
    for name, tp in [("draft + exact revise (the default)", m["throughput"]),
                     *m["workloads"].items()]:  # fmt: skip
        rows.append([name, f"{tp['sequential']['tps']:.0f}", f"{tp['concurrent']['tps']:.0f}",
                     f"{tp['ratio']:.2f}x ({tp['low']:.2f}-{tp['high']:.2f})"])  # fmt: skip
    head = ["workload", "one at a time tokens/s", f"{n} concurrent tokens/s", "ratio (range)"]
    return (
        "The same rounds with other settings (same server): a draft call of one row is "
        "a few small matrix products dominated by fixed costs, so rows batch almost for "
        "free; an exact revise call runs all L positions of every row, so its cost grows "
        "with the rows:\n\n" + markdown_grid(head, rows, "lrrr")
    )


def bound(m: dict[str, Any], http: float) -> float:
    """The first-event target: 2 x (one cached draft call + the HTTP round trip)."""
    return 2 * (m["draft_call"] + http)


def first_event_line(m: dict[str, Any], http: float) -> str:
    first, limit = m["first_1"], bound(m, http)
    return (
        f"Time to the first draft event at concurrency 1: p50 {first * 1e3:.1f} ms; one cached "
        f"draft call {m['draft_call'] * 1e3:.1f} ms, HTTP round trip (`GET /health`, p50) "
        f"{http * 1e3:.1f} ms; 2 x their sum = {limit * 1e3:.1f} ms "
        f"({'met' if first <= limit else 'NOT met'})."
    )


def window_table(m: dict[str, Any], http: float, n: int) -> str:
    """The batch window's trade-off: throughput ratio against the first event alone."""
    rows = []
    for w in m["windows"]:
        tp = w["throughput"]
        rows.append([f"{w['window']:g}", f"{tp['sequential']['tps']:.0f}",
                     f"{tp['concurrent']['tps']:.0f}",
                     f"{tp['ratio']:.2f}x ({tp['low']:.2f}-{tp['high']:.2f})",
                     f"{w['first_1'] * 1e3:.1f}", f"{bound(w, http) * 1e3:.1f}"])  # fmt: skip
    head = ["--batch-window (ms)", "one at a time tokens/s", f"{n} concurrent tokens/s",
            "ratio (range)", "first event p50, concurrency 1 (ms)", "its target (ms)"]  # fmt: skip
    return (
        "The batch window trades the two targets: a request alone waits the window before "
        "its first call, and concurrent clients that do not arrive within the window split into "
        "batches (each window: its own server, the same rounds):\n\n"
        + markdown_grid(head, rows, "rrrrrr")
    )


WORKLOADS = {
    "draft only (`stages` 4)": {"prompt": PROMPT, "sbd": {"stages": "4", "gammas": ""}},
    "draft + approximate revise (`cache` approx)": {"prompt": PROMPT, "sbd": {"cache": "approx"}},
}
"""Other settings, measured like the default at the first window: where batching pays."""


def throughput(
    url: str, n: int, repeats: int, body: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """`repeats` rounds of: `n` requests one at a time, then from `n` concurrent clients."""
    body = body or {"prompt": PROMPT}
    rounds = []
    for _ in range(repeats):
        seconds, res = run_clients(url, [body] * n, 1)
        one = {"seconds": seconds, "tps": sum(r["tokens"] for r in res) / seconds, "res": res}
        seconds, res = run_clients(url, [body] * n, n)
        many = {"seconds": seconds, "tps": sum(r["tokens"] for r in res) / seconds, "res": res}
        rounds.append({"sequential": one, "concurrent": many, "ratio": many["tps"] / one["tps"]})
    return rounds


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median ratio (the reported one), its range across rounds."""
    ordered = sorted(rounds, key=lambda r: r["ratio"])
    mid = ordered[len(ordered) // 2]
    return {**mid, "low": ordered[0]["ratio"], "high": ordered[-1]["ratio"]}


def in_process(run: Path, n: int, repeats: int) -> dict[str, float]:
    """The sampler alone, in this process's main thread (no HTTP, no events): `n` default
    requests one at a time, then as one batch of `n` rows; best of `repeats` each."""
    from sbdcli import pipeline as pl
    from sbdcli.serve.jobs import Limits, make_job
    from sbdcli.serve.schemas import CompletionRequest

    ref = pl.load_model_ref(str(run), "cpu")
    req = CompletionRequest.model_validate({"prompt": PROMPT, "seed": 0})
    job = make_job(req, ref, Limits(), "x")

    def generate(rows: int) -> None:
        prompts = [pl.Prompt(f"r{i}", job.prompts[0].tokens) for i in range(rows)]
        pl.generate_batch(ref, prompts, job.length, job.draft_cfg, 0, job.plan)

    generate(1)  # warm up
    one = min(timed(lambda: [generate(1) for _ in range(n)])[0] for _ in range(repeats))
    batch = min(timed(lambda: generate(n))[0] for _ in range(repeats))
    return {"one": one, "batch": batch, "ratio": one / batch}


def measure_window(run: Path, window: float, args: argparse.Namespace, full: bool) -> dict:
    """One server at batch window `window` ms: throughput rounds, latencies and, when
    `full`, the HTTP round trip, the load test and the server's memory."""
    server = Server(run, "--max-batch", "16", "--max-queue", "256", "--batch-window",
                    f"{window:g}")  # fmt: skip
    m: dict[str, Any] = {"window": window}
    try:
        url = server.url
        body = {"prompt": PROMPT}
        streamed(url, body)  # warm up
        m["throughput"] = median_round(throughput(url, args.requests, args.repeats))
        latency = {
            1: m["throughput"]["sequential"]["res"],
            16: m["throughput"]["concurrent"]["res"],
        }
        m["draft_call"] = draft_call_seconds(latency[1])
        m["first_1"] = quantiles(latency[1])["first"][0]
        if full:
            rtt = [timed(lambda: httpx.get(f"{url}/health", timeout=30))[0] for _ in range(20)]
            m["http"] = statistics.median(rtt)
            latency[4] = run_clients(url, [body] * args.requests, 4)[1]
            m["latency"] = {c: quantiles(latency[c]) for c in (1, 4, 16)}
            m["workloads"] = {
                name: median_round(throughput(url, args.requests, args.repeats, b))
                for name, b in WORKLOADS.items()
            }
            m["load"] = load_test(server, run, args.load, args.length)
    finally:
        server.stop()
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3, help="throughput rounds per window")
    ap.add_argument("--windows", default="10,20,0", help="batch windows (ms); the first is "
                    "measured in full (latencies, load test)")  # fmt: skip
    ap.add_argument("--load", type=int, default=200, help="requests of the load test")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (both processes)")
    ap.add_argument("--write", action="store_true", help="write docs/benchmarks.md section")
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    from bench._report import machine, write_section

    m: dict[str, Any] = {"threads": args.threads, "machine": machine()}
    m["load_before"] = os.getloadavg()[0]
    windows = [float(w) for w in args.windows.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(Path(tmp), args.length)
        m["windows"] = [measure_window(run, w, args, k == 0) for k, w in enumerate(windows)]
        m["in_process"] = in_process(run, args.requests, args.repeats)
    m["load_after"] = os.getloadavg()[0]
    text = report(args, m)
    print(text)
    if args.write:
        write_section("serve", "## Serving (`python -m bench.bench_serve --write`)\n\n" + text)


if __name__ == "__main__":
    main()

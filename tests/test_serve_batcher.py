"""The batcher samples compatible requests as one batch, and each seeded request's records
are exactly those `sbd generate` writes for it alone, whatever shares its batch; a full
queue refuses; a cancelled request leaves the batch before the next stage."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra (pip install 'sbdcli[serve]')")

from fake_model import one_thread  # noqa: F401 (autouse fixture)
from sbdcli import pipeline as pl
from sbdcli.serve.batcher import Batcher, Busy, Ticket
from sbdcli.serve.jobs import Limits, make_job
from sbdcli.serve.schemas import CompletionRequest
from serve_helpers import comparable, generate, make_run


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve")
    make_run(root)
    return root


@pytest.fixture
def ref(workdir, monkeypatch) -> pl.ModelRef:
    monkeypatch.chdir(workdir)
    monkeypatch.delenv("SBD_MODEL", raising=False)
    return pl.load_model_ref("runs/latest")


class Sink:
    """Collects a ticket's events; `done` once every final (or an error) arrived."""

    def __init__(self, n: int) -> None:
        self.events: list[dict] = []
        self.n, self.done = n, threading.Event()

    def __call__(self, event: dict) -> None:
        self.events.append(event)
        finals = [e for e in self.events if e["type"] == "final"]
        if event["type"] == "error" or len(finals) == self.n:
            self.done.set()

    def records(self) -> list[dict]:
        finals = sorted((e for e in self.events if e["type"] == "final"), key=lambda e: e["index"])
        return [e["record"] for e in finals]


def ticket(ref, body: dict, name: str = "cmpl-x") -> tuple[Ticket, Sink]:
    req = CompletionRequest.model_validate(body)
    sink = Sink(req.n)
    return Ticket(name, make_job(req, ref, Limits(), name), sink), sink


SETTINGS = [
    ({}, []),
    (
        {"sbd": {"stages": "4,8,full", "gammas": [0.25, 0.5], "strategy": "random"}, "top_p": 1.0},
        ["--stages", "4,8,full", "--gammas", "0.25,0.5", "--strategy", "random", "--top-p", "1"],
    ),
    (
        {"temperature": 0.8, "sbd": {"threshold": 0.3, "strategy": "posthoc"}},
        ["--temperature", "0.8", "--threshold", "0.3", "--strategy", "posthoc"],
    ),
]


@pytest.mark.parametrize(("extra", "argv"), SETTINGS, ids=["defaults", "three-stages", "threshold"])
def test_a_shared_batch_gives_each_request_its_generate_records(workdir, ref, extra, argv):
    bodies = [  # three seeds in one batch: each row is drawn with its own request's seed
        {"prompt": "w1 w2", "seed": 7, "n": 2, **extra},
        {"prompt": "w5", "seed": 8, **extra},
        {"prompt": "w3 w3 w4", "seed": 9, "sbd": {**extra.get("sbd", {}), "id": "mine"}},
    ]
    bodies[2] = {**extra, **bodies[2]}
    stats: list = []
    batcher = Batcher(ref, max_batch=8, max_queue=8, on_batch=stats.append)
    pairs = [ticket(ref, b) for b in bodies]
    for t, _ in pairs:
        batcher.submit(t)  # all queued before the worker starts: one batch
    batcher.start()
    for _, sink in pairs:
        assert sink.done.wait(60)
    batcher.stop()
    batcher.join(30)
    assert [(s.requests, s.rows) for s in stats] == [(3, 4)]
    alone = [
        generate(workdir, "w1 w2", 7, ["-n", "2", *argv]),
        generate(workdir, "w5", 8, argv),
        generate(workdir, "w3 w3 w4", 9, argv, rid="mine"),
    ]
    for (_, sink), expected in zip(pairs, alone, strict=True):
        got = sink.records()
        assert [comparable(r) for r in got] == [comparable(r) for r in expected]
        assert got[0]["stages"][0]["batch_size"] == 4  # how it ran: in a batch of 4 rows


def test_incompatible_requests_run_in_separate_batches(ref):
    stats: list = []
    batcher = Batcher(ref, max_batch=8, max_queue=8, on_batch=stats.append)
    pairs = [
        ticket(ref, {"seed": 1}),
        ticket(ref, {"seed": 1, "temperature": 0.5}),
        ticket(ref, {"seed": 1, "max_tokens": 5}),
        ticket(ref, {"seed": 2, "prompt": "w2"}),  # another seed and prompt: compatible
    ]
    for t, _ in pairs:
        batcher.submit(t)
    batcher.start()
    for _, sink in pairs:
        assert sink.done.wait(60)
    batcher.stop()
    batcher.join(30)
    # oldest first, each batch takes the compatible requests queued behind it
    assert [s.requests for s in stats] == [2, 1, 1]


def test_unseeded_requests_draw_their_own_seeds_and_keep_their_own_ids(ref):
    batcher = Batcher(ref, max_batch=8, max_queue=8)
    pairs = [ticket(ref, {}, "cmpl-a"), ticket(ref, {"n": 2}, "cmpl-b")]
    for t, _ in pairs:
        batcher.submit(t)
    batcher.start()
    for _, sink in pairs:
        assert sink.done.wait(60)
    batcher.stop()
    batcher.join(30)
    recs = [r for _, sink in pairs for r in sink.records()]
    assert [r["id"] for r in recs] == ["cmpl-a", "cmpl-b-0", "cmpl-b-1"]
    seeds = [{s["seed"] for s in r["stages"]} for r in recs]
    assert all(len(s) == 1 for s in seeds)  # one seed per record, in every stage entry
    assert seeds[1] == seeds[2] != seeds[0]  # one per request (collision odds 2**-31)
    assert recs[1]["tokens"] != recs[2]["tokens"]
    assert [s["batch_size"] for r in recs for s in r["stages"][:1]] == [3, 3, 3]


def test_a_full_queue_refuses(ref):
    batcher = Batcher(ref, max_batch=2, max_queue=3)
    batcher.submit(ticket(ref, {"n": 2})[0])
    batcher.submit(ticket(ref, {})[0])
    with pytest.raises(Busy):
        batcher.submit(ticket(ref, {})[0])
    assert batcher.depth == 2 and batcher.retry_after >= 1


def test_a_cancelled_request_leaves_the_batch_at_the_next_call(workdir, ref):
    gone, stay = ticket(ref, {"seed": 4, "prompt": "w1"}), ticket(ref, {"seed": 4})
    post = gone[0].post

    def leave_after_the_first_event(event: dict) -> None:
        post(event)
        gone[0].cancelled.set()  # its client went away after the first draft call

    gone[0].post = leave_after_the_first_event
    batcher = Batcher(ref, max_batch=8, max_queue=8)
    batcher.submit(gone[0])
    batcher.submit(stay[0])
    batcher.start()
    assert stay[1].done.wait(60)
    batcher.stop()
    batcher.join(30)
    assert [(e["type"], e["call"]) for e in gone[1].events] == [("draft", 1)]
    draft_calls = [e["call"] for e in stay[1].events if e["type"] == "draft"]
    assert draft_calls == list(range(1, 32))  # one token per call, every call streamed
    rec = stay[1].records()[0]
    assert rec["stages"][0]["batch_size"] == 2 and rec["stages"][2]["batch_size"] == 1
    expected = generate(workdir, "", 4, [])
    assert comparable(rec) == comparable(expected[0])


def test_stop_ends_queued_requests_with_an_error_event(ref):
    batcher = Batcher(ref)
    t, sink = ticket(ref, {})
    batcher.submit(t)
    batcher.stop()
    batcher.join(30)
    assert sink.events == [{"type": "error", "status": 503,
                            "message": "the server is shutting down"}]  # fmt: skip
    with pytest.raises(Busy):
        batcher.submit(ticket(ref, {})[0])


def test_requests_arriving_together_at_an_idle_worker_run_together(ref):
    """The idle worker waits `window` seconds from the first arrival before it starts."""
    stats: list = []
    batcher = Batcher(ref, max_batch=8, max_queue=8, on_batch=stats.append, window=1.0)
    batcher.start()
    pairs = [ticket(ref, {"seed": 3}), ticket(ref, {"seed": 3, "prompt": "w2"})]
    for t, _ in pairs:
        batcher.submit(t)
    for _, sink in pairs:
        assert sink.done.wait(60)
    batcher.stop()
    batcher.join(30)
    assert [(s.requests, s.rows) for s in stats] == [(2, 2)]


def test_the_worker_samples_with_its_own_thread_count(ref):
    """`threads` is set in the worker thread (its own OpenMP team); the caller's is kept."""
    import torch

    seen: list[int] = []
    before = torch.get_num_threads()
    batcher = Batcher(ref, threads=2)
    t, sink = ticket(ref, {"seed": 1, "max_tokens": 4})
    post = t.post
    t.post = lambda event: (seen.append(torch.get_num_threads()), post(event))[1]
    batcher.submit(t)
    batcher.start()
    assert sink.done.wait(60)
    batcher.stop()
    batcher.join(30)
    assert seen and set(seen) == {2}
    assert torch.get_num_threads() == before

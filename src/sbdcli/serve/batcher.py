"""The request queue and the one worker thread that samples batches of requests.

Rules (docs/serving.md, "Batching"):
- Requests wait in arrival order. When the worker is free and a request arrives, it waits
  `window` seconds from that request's arrival (default 10 ms) for others to arrive with
  it, unless a batch is full sooner. Then it takes the oldest request and
  every queued request with the same `Job.key` (same length and settings) behind it, in
  order, while the batch has at most `max_batch` rows; they run as one batch of rows
  through the stages of `sbd generate` (draft, then remask + revise per stage: the
  functions of `pipeline`, in the order `pipeline.generate_batch` calls them). A request
  that arrives while a batch runs waits for the next batch.
- A request whose rows would take the queue past `max_queue` rows is refused at once
  (`Busy`: the app answers 429 with Retry-After).
- A request is cancelled when its client goes away: its rows take no part in the
  engine's next network call (`FillEngine.cancel`) and leave the batch before the next
  stage; the others continue, their records unchanged (they do not depend on the batch).
- Each request's rows are seeded by its own seed (an unseeded request's is drawn for it
  when its batch starts) and named by its own ids, so requests with different seeds share
  a batch and each one's records are those `sbd generate` writes for it alone (the draft
  entry's `n_records` is the request's n; `batch_size` and `seconds` say how the batch
  ran).
- Edit requests (`EditJob`) batch with edits of the same plan and run through
  `pipeline.edit.edit_batch`, the function `sbd edit` runs: a `remask` event (the positions
  to revise), `revise` events per network call, then `final`.
Events go to each request through its `post` callback, from the worker thread.

Not here: HTTP and the event framing (app.py), request validation (jobs.py).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

import sbdcli.serve.events as ev
from sbdcli import pipeline as pl
from sbdcli.artifacts.records import Record
from sbdcli.config import RedrawConfig
from sbdcli.pipeline.edit import edit_batch
from sbdcli.serve.jobs import EditJob, Job

log = logging.getLogger("sbdcli.serve")

Post = Callable[[dict[str, Any]], None]
"""Receives one event of a request (called from the worker thread)."""


class Busy(Exception):
    """The queue is full: try again later."""


class Stopping(Busy):
    """The server is shutting down: no new request is taken."""


@dataclass
class Ticket:
    """A request in the queue or in a batch."""

    name: str
    job: Job | EditJob
    post: Post
    arrived: float = field(default_factory=time.monotonic)
    started: float | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    finished: bool = False

    @property
    def rows(self) -> int:
        return self.job.rows


@dataclass
class BatchStats:
    """What the metrics hear about one finished batch."""

    rows: int
    requests: int
    tokens: int
    seconds: float


class Batcher:
    """One worker thread sampling batches of compatible requests with one model."""

    def __init__(
        self,
        ref: pl.ModelRef,
        max_batch: int = 16,
        max_queue: int = 64,
        on_batch: Callable[[BatchStats], None] | None = None,
        window: float = 0.01,
        threads: int | None = None,
    ) -> None:
        self.ref, self.max_batch, self.max_queue = ref, max_batch, max_queue
        self.window, self.threads = window, threads
        self.on_batch = on_batch
        self._queue: deque[Ticket] = deque()
        self._running: list[Ticket] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="sbd-batcher", daemon=True)
        self.batch_seconds = 1.0  # a running estimate, for Retry-After

    # ----------------------------------------------------------------- client side
    def start(self) -> None:
        self._thread.start()

    def submit(self, ticket: Ticket) -> None:
        """Queue a request, or raise `Busy` when its rows do not fit the queue."""
        with self._cond:
            if self._stopping:
                raise Stopping("the server is shutting down")
            if ticket.rows > self.max_batch:
                raise ValueError("a request larger than a batch")  # the app checks n first
            if self.queued_rows + ticket.rows > self.max_queue:
                raise Busy(f"the queue is full ({self.max_queue} rows)")
            self._queue.append(ticket)
            self._cond.notify()

    def cancel(self, ticket: Ticket) -> None:
        """The client went away: drop its rows from the queue or, at the next stage, the batch."""
        ticket.cancelled.set()
        with self._cond:
            if ticket in self._queue:
                self._queue.remove(ticket)

    @property
    def queued_rows(self) -> int:
        return sum(t.rows for t in self._queue)

    @property
    def depth(self) -> int:
        """Requests waiting (not yet in a batch)."""
        return len(self._queue)

    @property
    def retry_after(self) -> int:
        """Seconds a refused client should wait: about one batch."""
        return max(1, round(self.batch_seconds))

    def stop(self, reason: str = "the server is shutting down") -> None:
        """End every queued and running request with an error event; stop the worker."""
        with self._cond:
            self._stopping = True
            waiting, self._queue = list(self._queue), deque()
            running = list(self._running)
            self._cond.notify_all()
        for t in waiting + running:
            if not (t.finished or t.cancelled.is_set()):
                t.cancelled.set()
                t.post({"type": "error", "status": 503, "message": reason})

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ----------------------------------------------------------------- worker side
    def _take(self) -> list[Ticket] | None:
        """The next batch: the oldest request and the compatible ones queued behind it."""
        with self._cond:
            while not self._stopping and not self._gathered():
                pass
            if self._stopping:
                return None
            first = self._queue.popleft()
            batch, rows = [first], first.rows
            for t in list(self._queue):
                if t.job.key == first.job.key and rows + t.rows <= self.max_batch:
                    self._queue.remove(t)
                    batch.append(t)
                    rows += t.rows
            self._running = batch
            return batch

    def _gathered(self) -> bool:
        """Wait (holding the condition) for a request, then up to `window` seconds from its
        arrival for others (requests arriving together run together); whether the queue
        still holds a request (a cancelled one may have left it)."""
        while not self._queue and not self._stopping:
            self._cond.wait()
        deadline = self._queue[0].arrived + self.window if self._queue else 0.0
        while not self._stopping and self._queue and self.queued_rows < self.max_batch:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._cond.wait(left)
        return bool(self._queue)

    def _loop(self) -> None:
        if self.threads is not None:  # this thread's own OpenMP team (see `sbd serve`)
            torch.set_num_threads(self.threads)
        while (batch := self._take()) is not None:
            start, tokens = time.monotonic(), 0
            try:
                tokens = self._run(batch)
            except Exception as exc:  # a bug must not take the server down
                log.exception("a batch failed")
                for t in batch:
                    if not t.finished:
                        t.post(
                            {"type": "error", "status": 500, "message": f"sampling failed: {exc}"}
                        )
            seconds = time.monotonic() - start
            self.batch_seconds = 0.8 * self.batch_seconds + 0.2 * seconds
            with self._cond:
                self._running = []
            if self.on_batch is not None:
                stats = BatchStats(sum(t.rows for t in batch), len(batch), tokens, seconds)
                try:
                    self.on_batch(stats)
                except Exception:  # nor a metrics bug
                    log.exception("the batch metrics failed")

    def _run(self, batch: list[Ticket]) -> int:
        """Run a batch; the number of tokens it generated."""
        if isinstance(batch[0].job, EditJob):
            return self._edit(batch)
        return self._generate(batch)

    def _generate(self, batch: list[Ticket]) -> int:
        """Draft, then remask + revise per stage, posting every call's commits."""
        job, ref = batch[0].job, self.ref
        assert isinstance(job, Job)
        jobs = [_seeded(t.job) for t in batch]
        seeded = {id(t): j for t, j in zip(batch, jobs, strict=True)}
        now = time.monotonic()
        for t in batch:
            t.started = now
        prompts = [p for j in jobs for p in j.prompts]
        owners = [(t, i) for t in batch for i in range(t.rows)]
        mask = ref.model.config.mask_id
        seqs = [p.tokens + [mask] * (job.length - len(p.tokens)) for p in prompts]
        live = _Live(ref, owners, seqs, 0)
        seeds = [seeded[id(t)].seed or 0 for t, _ in owners]
        records = pl.draft_batch(ref, prompts, job.length, job.draft_cfg, seeds,
                                 stop_at_eos=job.stop_at_eos, redraw=RedrawConfig(),
                                 on_call=live.call, on_engine=live.engine)  # fmt: skip
        for (t, _), rec in zip(owners, records, strict=True):
            rec["stages"][0]["n_records"] = t.rows  # the request's records, as `generate -n`
        tokens = sum(len(r["tokens"]) - r["prompt_len"] for r in records)
        for k, stage in enumerate(jobs[0].plan, start=1):
            owners, records = _live(owners, records)
            if not records:
                return tokens
            plans = [seeded[id(t)].plan[k - 1] for t, _ in owners]
            remask_seeds = [p.remask.seed for p in plans]
            records = pl.remask_batch(records, stage.remask, ref, remask_seeds)
            for (t, i), rec in zip(owners, records, strict=True):
                t.post(ev.remask_event(rec, i, k))
            seqs = [_masked(rec, mask) for rec in records]
            live = _Live(ref, owners, seqs, k, [list(rec["tokens"]) for rec in records])
            records = pl.revise_batch(records, ref, stage.revise, [p.seed for p in plans],
                                      on_call=live.call, on_engine=live.engine)  # fmt: skip
        owners, records = _live(owners, records)
        for (t, i), rec in zip(owners, records, strict=True):
            t.finished = i == t.rows - 1
            t.post(ev.final_event(ref, rec, i, seeded[id(t)].stop))
        return tokens

    def _edit(self, batch: list[Ticket]) -> int:
        """`sbd edit` on the batch's texts: the positions to revise, then each revise call."""
        ref, mask = self.ref, self.ref.model.config.mask_id
        jobs = [t.job for t in batch if isinstance(t.job, EditJob)]
        now = time.monotonic()
        for t in batch:
            t.started = now
        owners = [(t, i) for t in batch for i in range(t.rows)]
        records = [rec for j in jobs for rec in j.records]
        watch: list[_Live] = []

        def masked(recs: list[Record]) -> None:
            for (t, i), rec in zip(owners, recs, strict=True):
                t.post(ev.remask_event(rec, i, 1))
            seqs = [_masked(rec, mask) for rec in recs]
            watch.append(_Live(ref, owners, seqs, 1, [list(rec["tokens"]) for rec in recs]))

        records = edit_batch(
            records,
            ref,
            jobs[0].plan,
            seeds=[j.seed for j in jobs for _ in j.records],
            on_call=lambda c: watch[0].call(c),
            on_masked=masked,
            on_engine=lambda e, r: watch[0].engine(e, r),
        )
        tokens = sum(s["n_masked"] for r in records for s in r["stages"][-1:])
        owners, records = _live(owners, records)
        for (t, i), rec in zip(owners, records, strict=True):
            t.finished = i == t.rows - 1
            t.post(ev.edit_final_event(rec, i))
        return tokens


def _seeded(job: Job | EditJob) -> Job:
    """The job with its seed: the request's, or one drawn for it now."""
    assert isinstance(job, Job)
    return job if job.seed is not None else job.with_seed(secrets.randbits(31))


class _Live:
    """Watches the running stage of a batch: posts each network call's commits to the
    requests they belong to, and cancels the rows of a request whose client went away
    (they take no part from the next call on)."""

    def __init__(
        self,
        ref: pl.ModelRef,
        owners: list[tuple[Ticket, int]],
        seqs: list[list[int]],
        stage: int,
        before: list[list[int]] | None = None,
    ) -> None:
        self.ref, self.owners, self.seqs, self.stage, self.before = ref, owners, seqs, stage, before
        self.kind = "draft" if before is None else "revise"
        self.running: Any = None
        self.rows: list[int] = []
        self.dropped: set[int] = set()

    def engine(self, engine: Any, rows: list[int]) -> None:
        """A stepping engine starts; its row r is input row rows[r]."""
        self.running, self.rows, self.dropped = engine, rows, set()
        self._cancel()

    def call(self, call: Any) -> None:
        """One network call (`CallEvent`): each row's commits to its request."""
        for r, pos, tok, conf in zip(
            call.rows, call.positions, call.tokens, call.confidences, strict=True
        ):
            j = self.rows[r] if self.running is not None else r  # windows: no engine
            ticket, index = self.owners[j]
            if ticket.cancelled.is_set():
                continue
            head = {"type": self.kind, "index": index, "stage": self.stage, "call": call.call,
                    "block": [call.lo, call.hi]}  # fmt: skip
            before = None if self.before is None else self.before[j]
            start = ticket.job.prompt_len
            ticket.post(
                ev.call_event(self.ref, self.seqs[j], start, (pos, tok, conf), head, before)
            )
        self._cancel()

    def _cancel(self) -> None:
        if self.running is None:
            return
        for r, j in enumerate(self.rows):
            if r not in self.dropped and self.owners[j][0].cancelled.is_set():
                self.running.cancel(r)
                self.dropped.add(r)


def _masked(rec: Record, mask: int) -> list[int]:
    """A record's tokens with its remasked positions as [MASK] (what its revise starts from)."""
    seq = list(rec["tokens"])
    for p in rec["masked"]:
        seq[p] = mask
    return seq


def _live(
    owners: list[tuple[Ticket, int]], records: list[Record]
) -> tuple[list[tuple[Ticket, int]], list[Record]]:
    """The rows whose request is still wanted."""
    keep = [j for j, (t, _) in enumerate(owners) if not t.cancelled.is_set()]
    return [owners[j] for j in keep], [records[j] for j in keep]

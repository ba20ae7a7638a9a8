"""The request queue and the one worker thread that samples batches of requests.

Rules (docs/serving.md, "Batching"):
- Requests wait in arrival order. When the worker is free it takes the oldest request and
  every queued request with the same `Job.key` (same length and settings) behind it, in
  order, while the batch has at most `max_batch` rows; they run as one batch of rows
  through the stages of `sbd generate` (draft, then remask + revise per stage: the
  functions of `pipeline`, in the order `pipeline.generate_batch` calls them). A request
  that arrives while a batch runs waits for the next batch.
- A request whose rows would take the queue past `max_queue` rows is refused at once
  (`Busy`: the app answers 429 with Retry-After).
- A request is cancelled when its client goes away: its rows leave the batch before the
  next stage (the others continue; their records do not depend on the batch).
- Each request's rows are seeded by its own seed and named by its own ids, so its records
  are those `sbd generate` writes for it alone (the draft entry's `n_records` is the
  request's n; `batch_size` and `seconds` say how the batch ran).
Events go to each request through its `post` callback, from the worker thread.

Not here: HTTP and the event framing (app.py), request validation (jobs.py).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sbdcli import pipeline as pl
from sbdcli.artifacts.records import Record
from sbdcli.config import RedrawConfig
from sbdcli.serve import events as ev
from sbdcli.serve.jobs import Job

Post = Callable[[dict[str, Any]], None]
"""Receives one event of a request (called from the worker thread)."""


class Busy(Exception):
    """The queue is full: try again later."""


@dataclass
class Ticket:
    """A request in the queue or in a batch."""

    name: str
    job: Job
    post: Post
    arrived: float = field(default_factory=time.monotonic)
    started: float | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    nfe: int = 0

    @property
    def rows(self) -> int:
        return len(self.job.prompts)


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
    ) -> None:
        self.ref, self.max_batch, self.max_queue = ref, max_batch, max_queue
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
                raise Busy("the server is shutting down")
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
            t.cancelled.set()
            t.post({"type": "error", "status": 503, "message": reason})

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ----------------------------------------------------------------- worker side
    def _take(self) -> list[Ticket] | None:
        """The next batch: the oldest request and the compatible ones queued behind it."""
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
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

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            start = time.monotonic()
            try:
                self._run(batch)
            except Exception as exc:  # a bug must not take the server down
                for t in batch:
                    t.post({"type": "error", "status": 500, "message": f"sampling failed: {exc}"})
            seconds = time.monotonic() - start
            self.batch_seconds = 0.8 * self.batch_seconds + 0.2 * seconds
            with self._cond:
                self._running = []
            if self.on_batch is not None:
                tokens = sum(t.rows * (t.job.length - t.job.prompt_len) for t in batch)
                self.on_batch(BatchStats(sum(t.rows for t in batch), len(batch), tokens, seconds))

    def _run(self, batch: list[Ticket]) -> None:
        """Draft, then remask + revise per stage; events after every stage."""
        job = batch[0].job
        seed = job.seed if job.seed is not None else secrets.randbits(31)
        jobs = [t.job if t.job.seed is not None else t.job.with_seed(seed) for t in batch]
        now = time.monotonic()
        for t in batch:
            t.started = now
        prompts = [p for j in jobs for p in j.prompts]
        records = pl.draft_batch(
            self.ref,
            prompts,
            job.length,
            job.draft_cfg,
            seed,
            stop_at_eos=job.stop_at_eos,
            redraw=RedrawConfig(),
        )
        owners = [(t, i) for t in batch for i in range(t.rows)]
        for (t, i), rec in zip(owners, records, strict=True):
            rec["stages"][0]["n_records"] = t.rows
            t.post(ev.draft_event(self.ref, rec, i))
        for k, stage in enumerate(jobs[0].plan, start=1):
            owners, records = _live(owners, records)
            if not records:
                return
            records = pl.remask_batch(records, stage.remask, self.ref)
            for (t, i), rec in zip(owners, records, strict=True):
                t.post(ev.remask_event(rec, i, k))
            records = pl.revise_batch(records, self.ref, stage.revise, stage.seed)
            for (t, i), rec in zip(owners, records, strict=True):
                t.post(ev.revise_event(self.ref, rec, i, k))
        for (t, i), rec in zip(owners, records, strict=True):
            if not t.cancelled.is_set():
                t.post(ev.final_event(self.ref, rec, i, t.job.stop))


def _live(
    owners: list[tuple[Ticket, int]], records: list[Record]
) -> tuple[list[tuple[Ticket, int]], list[Record]]:
    """The rows whose request is still wanted."""
    keep = [j for j, (t, _) in enumerate(owners) if not t.cancelled.is_set()]
    return [owners[j] for j in keep], [records[j] for j in keep]

"""`sbd serve`: the sampler behind an OpenAI-compatible HTTP API that streams revisions.

- schemas.py: the request body (OpenAI's fields + an `sbd` object) and the error object;
- jobs.py: a request as the sampler sees it (the settings `sbd generate` would build);
- batcher.py: the queue and the worker thread that samples compatible requests together;
- events.py: the typed events (draft, remask, revise, final) built from records;
- metrics.py: Prometheus metrics; app.py: the FastAPI routes; run.py: uvicorn and signals;
- playground.html: the page at `/` (self-contained: no external fetch).

A client of `pipeline/`; only this package (and cli/serve.py, which starts it) imports the
server stack (the optional extra `sbdcli[serve]`). docs/serving.md describes the API.
"""

from __future__ import annotations

from sbdcli.serve.app import Settings, create_app
from sbdcli.serve.jobs import Limits
from sbdcli.serve.run import bind
from sbdcli.serve.run import serve as run

__all__ = ["Limits", "Settings", "bind", "create_app", "run"]

"""`sbd serve`: the model behind an OpenAI-compatible HTTP API, with a playground.

Thin command: it checks the options, loads the model (a missing or broken one is an error
before the port opens), binds the port and hands over to `sbdcli.serve`. The server stack
(FastAPI, uvicorn) is the optional extra `sbdcli[serve]`.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from sbdcli.cli._app import app, console, term
from sbdcli.cli.options import DeviceOpt, ModelOpt
from sbdcli.errors import UserError


def _check(name: str, value: int, low: int) -> None:
    if value < low:
        raise UserError(f"{name} must be >= {low}, got {value}")


def _one_sampling_team() -> int:
    """torch's thread count, kept for the sampling worker; this (the HTTP) thread runs its
    few tensor operations on one thread from now on.

    With OpenMP, every thread that runs a parallel operation gets its own team of threads.
    Once this thread has had a team of N, the worker thread's own team of N ran each network
    call about 2x slower on two cores (measured: 0.49 s vs 0.21 s per request, torch 2.13,
    docs/benchmarks.md "Serving"); with one thread here the worker runs at full speed.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    return threads


@app.command()
def serve(
    model: ModelOpt = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to bind (0: a free one).")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            help="Require the header 'Authorization: Bearer KEY' on every route but /health.",
            show_default="$SBD_API_KEY; unset: no key",
        ),
    ] = None,
    max_batch: Annotated[
        int, typer.Option("--max-batch", help="Rows (samples) sampled together at most.")
    ] = 16,
    max_queue: Annotated[
        int, typer.Option("--max-queue", help="Rows waiting at most; beyond, 429.")
    ] = 64,
    max_n: Annotated[int, typer.Option("--max-n", help="Largest n (samples) of one request.")] = 8,
    batch_window: Annotated[
        float,
        typer.Option(
            "--batch-window",
            help="Milliseconds an idle server waits, from a request's arrival, for others to "
            "batch with it.",
        ),
    ] = 10.0,
    max_body: Annotated[
        int, typer.Option("--max-body", help="Largest request body in bytes; beyond, 413.")
    ] = 1 << 20,
    device: DeviceOpt = "auto",
) -> None:
    """Serve the model: POST /v1/completions (OpenAI-compatible, streams the draft and its
    revisions), GET /v1/models, /health, /metrics, and a playground at /.

    Example: sbd serve -m runs/latest --port 8000
    """
    try:
        from sbdcli.serve import Limits, Settings, bind, create_app, run
    except ImportError as exc:
        raise UserError(
            f"sbd serve needs the serve extra (pip install 'sbdcli[serve]'): {exc}"
        ) from None
    from sbdcli import pipeline as pl

    _check("--port", port, 0)
    _check("--max-batch", max_batch, 1)
    _check("--max-queue", max_queue, max_batch)
    _check("--max-n", max_n, 1)
    _check("--max-body", max_body, 1024)
    if not 0 <= batch_window <= 10_000:
        raise UserError(f"--batch-window must lie in [0, 10000] ms, got {batch_window}")
    if port > 65535:
        raise UserError(f"--port must be <= 65535, got {port}")
    key = api_key or os.environ.get("SBD_API_KEY") or None
    threads = _one_sampling_team()
    ref = pl.load_model_ref(pl.default_model_path(model), device)
    limits = Limits(max_n=max_n)
    settings = Settings(key, max_body, max_batch, max_queue, limits, batch_window / 1000,
                        threads)  # fmt: skip
    application = create_app(ref, settings)
    sock = bind(host, port)

    def ready(url: str) -> None:
        console.print(f"sbd serve: {term(ref.id)} at {url} (playground: {url}/)", highlight=False,
                      soft_wrap=True)  # fmt: skip

    run(application, sock, ready)

"""The ASGI application of `sbd serve` (FastAPI): routes, limits, auth, streams, logs.

Routes: `GET /` (the playground), `GET /health`, `GET /v1/models`, `POST /v1/completions`
(OpenAI's schema plus an `sbd` object; `stream` answers server-sent events), `POST
/v1/sbd/edit` (`sbd edit` on one text; `stream` answers its revisions as events),
`GET /metrics` (Prometheus text). Every error is an OpenAI-style error object
(schemas.ApiError): 400 for a malformed body or a bad value (naming the field), 401
without the API key, 404 for an unknown route, 413 over the body limit, 429 with
Retry-After when the queue is full. The model is fixed when the app is made: no request
names a path. One line per request goes to the `sbdcli.serve` logger (id, status, tokens,
nfe, seconds).

Not here: validation of settings (jobs.py), batching (batcher.py), starting uvicorn (run.py).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import ValidationError
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from sbdcli.artifacts.files import JsonDepthError, loads_json
from sbdcli.pipeline import ModelRef
from sbdcli.serve.batcher import Batcher, Busy, Stopping, Ticket
from sbdcli.serve.jobs import EditJob, Job, Limits, make_edit_job, make_job
from sbdcli.serve.metrics import Metrics
from sbdcli.serve.schemas import ApiError, CompletionRequest, EditRequest

log = logging.getLogger("sbdcli.serve")

OPEN_PATHS = ("/health",)
"""Routes that answer without the API key."""


@dataclass(frozen=True)
class Settings:
    """How the server runs (every field is a `sbd serve` option)."""

    api_key: str | None = None
    max_body: int = 1 << 20
    """Largest request body in bytes."""
    max_batch: int = 16
    """Rows (samples) per batch."""
    max_queue: int = 64
    """Rows waiting for a batch; beyond, 429."""
    limits: Limits = field(default_factory=Limits)
    batch_window: float = 0.01
    """Seconds an idle worker waits, from a request's arrival, for others to batch with it."""
    threads: int | None = None
    """torch threads of the sampling worker (None: leave torch's setting as it is)."""


class _Auth:
    """ASGI middleware: `Authorization: Bearer KEY` on every route but /health."""

    def __init__(self, app: ASGIApp, key: str | None) -> None:
        self.app, self.key = app, key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.key is None or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"authorization", b"").decode("latin-1")
        if hmac.compare_digest(given.encode(), f"Bearer {self.key}".encode()):
            await self.app(scope, receive, send)
            return
        err = ApiError(401, "missing or wrong API key (Authorization: Bearer KEY)",
                       kind="authentication_error", code="invalid_api_key")  # fmt: skip
        await _json(err.status, err.body())(scope, receive, send)


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(body, status_code=status, headers=headers)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 beyond `limit` bytes (declared or streamed)."""
    too_big = ApiError(413, f"request body over {limit} bytes", code="request_too_large")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(body: bytes, schema: type[Any] = CompletionRequest) -> Any:
    """The request (a `schema`), or a 400 naming the first field at fault (JSON nested
    deeper than sbd reads is a 400 too, never a RecursionError)."""
    try:
        obj = loads_json(body)
    except JsonDepthError as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}", param="body") from None
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the body is not valid JSON", param="body") from None
    if not isinstance(obj, dict):
        raise ApiError(400, "the body must be a JSON object", param="body")
    try:
        return schema.model_validate(obj)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = _param(err["loc"], err["type"] == "extra_forbidden")
        message = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        raise ApiError(400, f"{param}: {message}", param=param) from None


def _param(loc: tuple[Any, ...], unknown: bool) -> str:
    """pydantic's error location as the field's name (union branch tags dropped; an
    unknown field keeps its own name)."""
    names = [str(p) for p in loc if isinstance(p, str) and p in _FIELDS]
    if unknown and loc:
        names = [*names[: len(loc) - 1], str(loc[-1])]
    return ".".join(names) or "body"


_FIELDS = (
    set(CompletionRequest.model_fields)
    | set(EditRequest.model_fields)
    | {
        f
        for f in CompletionRequest.model_fields["sbd"].annotation.model_fields  # type: ignore[union-attr]
    }
)


@dataclass
class _Call:
    """One completion request in flight: its ticket, its event queue and its timing."""

    ticket: Ticket
    queue: asyncio.Queue[dict[str, Any]]
    request: CompletionRequest | EditRequest
    start: float
    first: float | None = None
    status: int = 200
    tokens: int = 0
    nfe: int = 0


class Server:
    """The routes' state: the model, the batcher, the metrics and the settings."""

    def __init__(self, ref: ModelRef, settings: Settings) -> None:
        self.ref, self.settings = ref, settings
        self.metrics = Metrics(lambda: self.batcher.depth)
        self.batcher = Batcher(ref, settings.max_batch, settings.max_queue, self.metrics.batch,
                               settings.batch_window, settings.threads)  # fmt: skip
        self.created = int(time.time())

    @property
    def model_id(self) -> str:
        return self.ref.id

    def models(self) -> dict[str, Any]:
        card = {"id": self.model_id, "object": "model", "created": self.created,
                "owned_by": "sbd", "max_model_len": self.ref.model.config.seq_len}  # fmt: skip
        return {"object": "list", "data": [card]}

    def submit(self, req: CompletionRequest | EditRequest) -> _Call:
        """Validate and queue a request (ApiError on a bad one, 429 on a full queue)."""
        if req.model not in (None, self.model_id):
            raise ApiError(404, f"model {req.model!r} is not served here (GET /v1/models)",
                           param="model", code="model_not_found")  # fmt: skip
        job: Job | EditJob
        if isinstance(req, EditRequest):
            name = f"edit-{secrets.token_hex(12)}"
            job = make_edit_job(req, self.ref)
        else:
            name = f"cmpl-{secrets.token_hex(12)}"
            limits = Limits(min(self.settings.limits.max_n, self.settings.max_batch),
                            self.settings.limits.max_length)  # fmt: skip
            job = make_job(req, self.ref, limits, name)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        ticket = Ticket(name, job, lambda e: loop.call_soon_threadsafe(queue.put_nowait, e))
        try:
            self.batcher.submit(ticket)
        except Stopping as exc:
            raise ApiError(503, str(exc), kind="server_error", code="shutting_down") from None
        except Busy as exc:
            raise ApiError(
                429,
                f"server busy: {exc}",
                kind="rate_limit_error",
                code="queue_full",
                headers={"Retry-After": str(self.batcher.retry_after)},
            ) from None
        return _Call(ticket, queue, req, time.monotonic())

    async def next_event(self, call: _Call) -> dict[str, Any]:
        event = await call.queue.get()
        now = time.monotonic()
        if call.first is None:
            call.first = now
            self.metrics.latency.labels("first").observe(now - call.start)
        if event["type"] == "final":
            rec = event["record"]
            if isinstance(call.ticket.job, EditJob):
                call.tokens += rec["stages"][-1]["n_masked"]
            else:
                call.tokens += len(rec["tokens"]) - rec["prompt_len"]
            call.nfe += rec["nfe"]
        return event

    def finish(self, call: _Call, status: int) -> None:
        """Count and log a request once it is answered."""
        call.status = status
        seconds = time.monotonic() - call.start
        if status == 200:
            self.metrics.latency.labels("final").observe(seconds)
        self.metrics.requests.labels(str(status)).inc()
        log.info("%s status=%d tokens=%d nfe=%d seconds=%.3f", call.ticket.name, status,
                 call.tokens, call.nfe, seconds)  # fmt: skip

    def refused(self, status: int) -> None:
        self.metrics.requests.labels(str(status)).inc()
        log.info("- status=%d tokens=0 nfe=0 seconds=0.000", status)


def _completion(server: Server, call: _Call, finals: list[dict[str, Any]]) -> dict[str, Any]:
    """The non-streaming answer: OpenAI's completion object plus `sbd`."""
    finals = sorted(finals, key=lambda e: e["index"])
    records = [e["record"] for e in finals]
    prompt = records[0]["prompt_len"] if records else 0
    return {
        "id": call.ticket.name,
        "object": "text_completion",
        "created": int(time.time()),
        "model": server.model_id,
        "choices": [
            {
                "index": e["index"],
                "text": e["text"],
                "finish_reason": e["finish_reason"],
                "logprobs": None,
            }
            for e in finals
        ],
        "usage": _usage(prompt, call.tokens),
        "sbd": {
            "seed": records[0]["stages"][0]["seed"] if records else None,
            "nfe": call.nfe,
            "records": records,
        },
    }


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}  # fmt: skip


async def _collect(server: Server, call: _Call, request: Request) -> dict[str, Any]:
    """Wait for every choice's final event (the client may leave meanwhile)."""
    finals: list[dict[str, Any]] = []
    while len(finals) < call.ticket.rows:
        try:
            event = await asyncio.wait_for(server.next_event(call), timeout=0.5)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                server.batcher.cancel(call.ticket)
                raise ApiError(499, "client closed the request") from None
            continue
        if event["type"] == "error":
            raise ApiError(event["status"], event["message"], kind="server_error")
        if event["type"] == "final":
            finals.append(event)
    if isinstance(call.request, EditRequest):
        return _edited(server, call, finals[0])
    return _completion(server, call, finals)


def _edited(server: Server, call: _Call, final: dict[str, Any]) -> dict[str, Any]:
    """The non-streaming answer of an edit: the edited text and its record."""
    rec = final["record"]
    return {"id": call.ticket.name, "object": "sbd.edit", "created": int(time.time()),
            "model": server.model_id, "text": final["text"], "record": rec,
            "usage": {"revised_tokens": call.tokens, "nfe": rec["nfe"]}}  # fmt: skip


def _chunk(server: Server, call: _Call, choices: list[dict[str, Any]]) -> str:
    return json.dumps({"id": call.ticket.name, "object": "text_completion",
                       "created": int(time.time()), "model": server.model_id,
                       "choices": choices})  # fmt: skip


async def _stream(server: Server, call: _Call) -> AsyncIterator[ServerSentEvent]:
    """Server-sent events: OpenAI chunks (the final text of each choice), the typed sbd
    events when asked (`sbd.events`), usage when asked, then [DONE]."""
    req, done, status = call.request, 0, 200
    assert isinstance(req, CompletionRequest)
    try:
        while done < req.n:
            event = await server.next_event(call)
            kind = event["type"]
            if kind == "error":
                status = event["status"]
                err = ApiError(status, event["message"], kind="server_error")
                yield ServerSentEvent(data=json.dumps(err.body()), event="error")
                return
            if req.sbd.events:
                yield ServerSentEvent(data=json.dumps(event), event=f"sbd.{kind}")
            if kind == "final":
                done += 1
                choice = {"index": event["index"], "text": event["text"],
                          "finish_reason": event["finish_reason"], "logprobs": None}  # fmt: skip
                yield ServerSentEvent(data=_chunk(server, call, [choice]))
        if req.stream_options is not None and req.stream_options.include_usage:
            prompt = call.ticket.job.prompt_len
            body = json.loads(_chunk(server, call, []))
            body["usage"] = _usage(prompt, call.tokens)
            yield ServerSentEvent(data=json.dumps(body))
        yield ServerSentEvent(data="[DONE]")
    finally:
        if done < req.n:
            server.batcher.cancel(call.ticket)
            status = 499 if status == 200 else status
        server.finish(call, status)


async def _edit_stream(server: Server, call: _Call) -> AsyncIterator[ServerSentEvent]:
    """Server-sent events of an edit: sbd.remask, sbd.revise per call, sbd.final, [DONE]."""
    done, status = False, 200
    try:
        while not done:
            event = await server.next_event(call)
            if event["type"] == "error":
                status = event["status"]
                err = ApiError(status, event["message"], kind="server_error")
                yield ServerSentEvent(data=json.dumps(err.body()), event="error")
                return
            done = event["type"] == "final"
            yield ServerSentEvent(data=json.dumps(event), event=f"sbd.{event['type']}")
        yield ServerSentEvent(data="[DONE]")
    finally:
        if not done:
            server.batcher.cancel(call.ticket)
            status = 499 if status == 200 else status
        server.finish(call, status)


def _playground() -> str:
    return resources.files("sbdcli.serve").joinpath("playground.html").read_text("utf-8")


def create_app(ref: ModelRef, settings: Settings | None = None) -> FastAPI:
    """The application serving `ref` (loaded once, before the port opens)."""
    settings = settings or Settings()
    server = Server(ref, settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        server.batcher.start()
        yield
        server.batcher.stop()
        await asyncio.to_thread(server.batcher.join, 10.0)

    app = FastAPI(title="sbd serve", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)  # fmt: skip
    app.state.server = server
    app.add_middleware(_Auth, key=settings.api_key)
    _routes(app, server)
    _handlers(app, server)
    return app


def _routes(app: FastAPI, server: Server) -> None:
    page = _playground()

    @app.get("/", response_class=HTMLResponse)
    async def playground() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": server.model_id, "queue": server.batcher.depth}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return server.models()

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(server.metrics.render(), media_type=server.metrics.content_type)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await _answer(server, request, CompletionRequest)

    @app.post("/v1/sbd/edit")
    async def edit(request: Request) -> Any:
        return await _answer(server, request, EditRequest)


async def _answer(server: Server, request: Request, schema: type[Any]) -> Any:
    """Parse, queue and answer one completion or edit request (a stream when asked)."""
    try:
        req = _parse(await _read_body(request, server.settings.max_body), schema)
        call = server.submit(req)
    except ApiError as exc:
        server.refused(exc.status)
        raise
    if req.stream:
        events = _edit_stream if schema is EditRequest else _stream
        return EventSourceResponse(events(server, call), ping=15, shutdown_grace_period=5)
    try:
        body = await _collect(server, call, request)
    except ApiError as exc:
        server.finish(call, exc.status)
        raise
    server.finish(call, 200)
    return JSONResponse(body)


def _handlers(app: FastAPI, server: Server) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> Response:
        return _json(exc.status, exc.body(), exc.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 404:
            msg = f"no route {request.method} {request.url.path}"
        else:
            msg = str(exc.detail)
        err = ApiError(exc.status_code, msg, code="not_found" if exc.status_code == 404 else None)
        return _json(err.status, err.body())

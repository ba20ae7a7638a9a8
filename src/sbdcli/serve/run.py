"""Running the app under uvicorn until SIGINT or SIGTERM.

`serve` binds the port only after the model is loaded (a missing or broken model fails
first, in the caller). On SIGINT/SIGTERM it first ends every queued and running request
with an error event (so no stream hangs), then lets uvicorn close the connections and run
the app's shutdown; the process then exits 0 (a signal is how a server is meant to stop,
so uvicorn's re-raising of it is left out).

Not here: the app (app.py) or the command line (cli/serve.py).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import uvicorn

from sbdcli.errors import UserError


class _Server(uvicorn.Server):
    """uvicorn's server, draining the app's requests before it stops."""

    def __init__(self, config: uvicorn.Config, drain: Callable[[], None]) -> None:
        super().__init__(config)
        self.drain = drain

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.drain()
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            try:
                yield
            finally:
                self._captured_signals.clear()  # stopped as asked: exit 0


def bind(host: str, port: int) -> socket.socket:
    """The listening socket (a taken port or a bad host is a UserError)."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    return sock


def serve(app: Any, sock: socket.socket, on_ready: Callable[[str], None]) -> None:
    """Serve `app` on the bound socket until a signal; `on_ready(url)` once listening."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("sbd serve: %(message)s"))
    logger = logging.getLogger("sbdcli.serve")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=15)  # fmt: skip
    server = _Server(config, app.state.server.batcher.stop)
    host, port = sock.getsockname()[:2]
    on_ready(f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}")
    server.run(sockets=[sock])

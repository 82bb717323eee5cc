"""Running the app under uvicorn: the listening socket, connection timeouts, ``running()``.

``clipdb serve`` and :func:`running` build the server the same way (:func:`server_config`),
so the timeouts the tests see are the ones the CLI serves with.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from clipdb.errors import ClipdbError
from clipdb.serve import DEFAULT_HOST
from clipdb.serve.limits import HEADER_TIMEOUT_S, KEEP_ALIVE_S, SHUTDOWN_GRACE_S

if TYPE_CHECKING:
    import asyncio

    import uvicorn


class _HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol, plus a deadline for the request headers.

    uvicorn only times out idle keep-alive connections, and any byte received cancels that:
    a client that connects and sends nothing, or one header byte a second, holds its
    connection forever. Here each request's headers must be complete ``header_timeout_s``
    after the connection opened or the previous response ended, or the connection is closed.
    """

    header_timeout_s = HEADER_TIMEOUT_S
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm_header_timer()

    def on_response_complete(self) -> None:
        self._arm_header_timer()
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _headers_late(self) -> None:
        self._header_timer = None
        # IDLE: no complete request line and headers yet (a body has its own deadline).
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def server_config(app: Any, host: str = DEFAULT_HOST, port: int = 0) -> uvicorn.Config:
    """The uvicorn config both ``clipdb serve`` and :func:`running` use."""
    import uvicorn

    header_timeout = float(getattr(app.state, "header_timeout_s", HEADER_TIMEOUT_S))
    protocol = type(
        "HeaderDeadlineProtocol", (_HeaderDeadlineProtocol,), {"header_timeout_s": header_timeout}
    )
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,
        timeout_keep_alive=KEEP_ALIVE_S,
        # SIGTERM waits this long for running requests, then cancels them and exits.
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
        log_level="warning",
    )


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port); ClipdbError in one line when that is impossible."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as err:
        raise ClipdbError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        # Not SO_REUSEPORT: a second server on the same port must fail, not share it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as err:
        sock.close()
        reason = (err.strerror or str(err)).lower()
        raise ClipdbError(f"cannot listen on {host}:{port}: {reason}") from None
    return sock


@contextmanager
def running(app: Any, host: str = DEFAULT_HOST, port: int = 0) -> Iterator[str]:
    """Serve ``app`` from a background thread (tests, notebooks); yields its base URL."""
    import uvicorn

    server = uvicorn.Server(server_config(app, host, port))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise ClipdbError(f"the web server did not start on {host}:{port}")
        time.sleep(0.02)
    bound_port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=SHUTDOWN_GRACE_S + 5)

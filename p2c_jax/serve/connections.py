"""uvicorn for ``p2c-serve``: its timeouts and limits set explicitly, and three guards against
slow or greedy clients that uvicorn lacks.

uvicorn times out only idle keep-alive connections, so a client that sends its request line and
headers a byte at a time (or nothing at all) holds a connection for as long as it likes; one
that keeps trickling a body the app has already answered keeps it too. ``GuardedH11Protocol``
(uvicorn's h11 protocol) closes a connection whose request head has not arrived within
``header_timeout``, closes it after a response sent before its body was read, and answers 429 on
a connection opened while its client address already holds ``max_per_client``. The deadline for
the body itself is the app's (``Limits.body_timeout``, answered 408).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from functools import partial
from typing import Any

from preprocessing.extras import needs

with needs("serve", "p2c-serve (p2c_jax.serve.connections)"):
    import h11
    import uvicorn
    from starlette.responses import JSONResponse
    from starlette.types import ASGIApp
    from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("p2c_jax.serve")


@dataclass
class ConnectionLimits:
    """What the server allows a connection (the reasons for the defaults: docs/serving.md)."""

    header_timeout: float = 10.0  # seconds for a request's line and headers
    keep_alive: float = 5.0  # seconds an idle connection is kept (uvicorn's timeout_keep_alive)
    max_connections: int = 64  # uvicorn's limit_concurrency: over it a request gets 503
    max_per_client: int = 16  # open connections per client address: over it 429


def too_many_connections(host: str, cap: int) -> ASGIApp:
    return JSONResponse(
        {"reason": f"too many connections from {host} (at most {cap})"},
        429,
        headers={"Retry-After": "1", "Connection": "close"},
    )


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request head, no lingering after an early
    answer, and a cap on the connections of one client address."""

    def __init__(self, *args: Any, limits: ConnectionLimits, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        host = self.client[0] if self.client else None
        same = sum(
            1 for c in self.connections if getattr(c, "client", None) and c.client[0] == host
        )
        if host is not None and same > self.limits.max_per_client:
            log.info("429 %d connections from one address", same)
            self.app = too_many_connections(host, self.limits.max_per_client)
        self.expect_head()

    def expect_head(self) -> None:
        """Close the connection unless a request's line and headers arrive in time."""
        if self.head_deadline is not None:
            self.head_deadline.cancel()
        self.head_deadline = self.loop.call_later(self.limits.header_timeout, self.head_late)

    def head_late(self) -> None:
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            log.info("closed: no request head within %g s", self.limits.header_timeout)
            self.transport.close()

    def on_response_complete(self) -> None:
        if self.conn.their_state is h11.SEND_BODY:  # answered before its body arrived
            self.transport.close()
        super().on_response_complete()
        if not self.transport.is_closing():
            self.expect_head()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
        super().connection_lost(exc)


def uvicorn_config(
    app: ASGIApp, host: str, port: int, limits: ConnectionLimits, **kwargs: Any
) -> uvicorn.Config:
    """uvicorn's configuration with ``limits`` and the guarded protocol; ``kwargs`` go to
    ``uvicorn.Config`` (``log_level``)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=partial(GuardedH11Protocol, limits=limits),
        timeout_keep_alive=limits.keep_alive,
        limit_concurrency=limits.max_connections,
        **kwargs,
    )

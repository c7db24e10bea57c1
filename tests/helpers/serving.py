"""A real uvicorn server for the serve tests (p2c-serve's configuration: its guarded protocol
and limits, on 127.0.0.1 and a free port, in a thread) and raw clients: slow ones, ones from
another loopback address."""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time

import uvicorn

from p2c_jax.serve.connections import ConnectionLimits, uvicorn_config

HOST = "127.0.0.1"


class Uvicorn:
    """``with Uvicorn(app) as server:`` serves ``app`` at ``server.port`` until the block ends."""

    def __init__(self, app, limits: ConnectionLimits | None = None):
        config = uvicorn_config(app, HOST, 0, limits or ConnectionLimits(), log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.port = 0

    def __enter__(self) -> Uvicorn:
        self.thread.start()
        deadline = time.monotonic() + 180  # start-up may compile the generator
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def connect(port: int, source: str = HOST, timeout: float = 30) -> socket.socket:
    """A TCP connection to the server from ``source`` (any 127.x.y.z address is loopback)."""
    return socket.create_connection((HOST, port), timeout, source_address=(source, 0))


def request(
    port: int, method: str, path: str, body: bytes = b"", headers=None, source: str = HOST
) -> tuple[int, dict[str, str], bytes, float]:
    """Status, headers (lower-case names), body and seconds of one request on a new connection."""
    conn = http.client.HTTPConnection(HOST, port, timeout=60, source_address=(source, 0))
    t = time.perf_counter()
    try:
        conn.request(method, path, body, headers or {})
        r = conn.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data, time.perf_counter() - t
    finally:
        conn.close()


def closed_within(sock: socket.socket, seconds: float) -> bytes | None:
    """What the server sent before it closed ``sock``, or None if it is still open after
    ``seconds``."""
    sock.settimeout(0.1)
    received, deadline = b"", time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return received
        if not data:
            return received
        received += data
    return None


class Drip:
    """Sends to each socket one byte per ``interval`` seconds, in a thread, until the block ends
    or the server closes it: a slow client (several, from one thread)."""

    def __init__(self, socks: list[socket.socket], data: bytes, interval: float = 1.0):
        self.socks, self.data, self.interval = socks, data, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        for i in range(len(self.data)):
            for s in self.socks:
                with contextlib.suppress(OSError):  # the server closed it
                    s.send(self.data[i : i + 1])
            if self.stop.wait(self.interval):
                return

    def __enter__(self) -> Drip:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(10)

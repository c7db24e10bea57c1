"""p2c-serve against slow and greedy clients, on a real uvicorn server with raw sockets: slow
uploads take no place of others and get 408; request heads sent a byte at a time (or not at
all) are dropped; one address's connections are capped (429). The device is a stand-in that
takes a fixed time per batch (nothing is compiled): these tests are about the server."""

from __future__ import annotations

import contextlib
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from flax import nnx
from helpers.faces import stub_preprocessor, synthetic_photo
from helpers.serving import Drip, Uvicorn, closed_within, connect, request
from PIL import Image
from urllib3 import encode_multipart_formdata

from p2c_jax.inference import CompiledNet
from p2c_jax.nn.models import NetSpec, build
from p2c_jax.serve.app import Limits, create_app
from p2c_jax.serve.batcher import Buckets
from p2c_jax.serve.connections import ConnectionLimits

DEVICE_SECONDS = 0.05  # the stand-in device's time per batch


def stand_in_device(x: np.ndarray) -> np.ndarray:
    time.sleep(DEVICE_SECONDS)
    return x  # images in the generator's range


@pytest.fixture(scope="module")
def engine() -> Buckets:
    """A random ngf 8 generator's batch sizes 1 and 2, never compiled (the device stands in)."""
    spec = NetSpec("generator", 8, img_size=256)
    return Buckets(CompiledNet(spec, nnx.state(build(spec))), max_batch=2)


@pytest.fixture
def serve(engine):
    """``serve(limits, connections)``: a running server; stopped after the test."""
    with contextlib.ExitStack() as servers:

        def start(limits: Limits, connections: ConnectionLimits) -> Uvicorn:
            app = create_app(engine, stub_preprocessor, limits, warmup=False)
            app.state.server.batcher.run = stand_in_device
            return servers.enter_context(Uvicorn(app, connections))

        yield start


def health(port: int) -> dict:
    return json.loads(request(port, "GET", "/healthz")[2])


def wait_for(condition, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def photo_form(seed: int) -> tuple[bytes, dict[str, str]]:
    buf = io.BytesIO()
    Image.fromarray(synthetic_photo(280, 260, seed)).save(buf, "PNG")
    body, ctype = encode_multipart_formdata({"file": ("p.png", buf.getvalue(), "image/png")})
    return body, {"Content-Type": ctype}


def post_together(port: int, forms) -> list[tuple[int, float]]:
    def one(form):
        status, _, _, seconds = request(port, "POST", "/v1/cartoonize", *form)
        return status, seconds

    with ThreadPoolExecutor(len(forms)) as pool:
        return list(pool.map(one, forms))


SLOW_BODY = b"--slowslowslow\r\n" * 100


def slow_upload_head(port: int) -> bytes:
    return (
        f"POST /v1/cartoonize HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Content-Type: multipart/form-data; boundary=slowslowslow\r\n"
        "Content-Length: 100000\r\n\r\n"
    ).encode()


def test_slow_uploads_take_no_place_of_others(serve):
    """32 clients that send their headers, then the body at 1 byte/s, hold no --max_pending
    place: 8 normal requests meanwhile are all answered 200 about as fast as alone. Past
    --body_timeout slow clients get 408 and their connection is closed."""
    limits = Limits(max_pending=32, body_timeout=60)
    server = serve(limits, ConnectionLimits(max_per_client=64))
    forms = [photo_form(60 + i) for i in range(8)]
    alone = post_together(server.port, forms)  # the usual time of 8 at once, no slow clients
    assert [s for s, _ in alone] == [200] * 8
    usual = max(t for _, t in alone)
    slow = [connect(server.port) for _ in range(32)]
    for s in slow:
        s.sendall(slow_upload_head(server.port))
    with Drip(slow, SLOW_BODY):
        wait_for(lambda: health(server.port)["receiving"] == 32)
        together = post_together(server.port, forms)
        assert [s for s, _ in together] == [200] * 8
        assert max(t for _, t in together) < 3 * usual + 3, (together, usual)
        state = health(server.port)
        assert (state["receiving"], state["in_progress"]) == (32, 0)  # still arriving
    for s in slow:
        s.close()
    wait_for(lambda: health(server.port)["receiving"] == 0)

    limits.body_timeout = 1.0
    slow = [connect(server.port) for _ in range(4)]
    t0 = time.monotonic()
    for s in slow:
        s.sendall(slow_upload_head(server.port))
    with Drip(slow, SLOW_BODY):
        answers = [closed_within(s, 10) for s in slow]
    assert 1.0 < time.monotonic() - t0 < 5
    for a in answers:
        assert a is not None and a.startswith(b"HTTP/1.1 408 "), a
        head, body = a.split(b"\r\n\r\n", 1)
        assert b"connection: close" in head.lower()
        assert json.loads(body) == {"reason": "request body not received within 1 s"}
    assert health(server.port)["receiving"] == 0
    for s in slow:
        s.close()


def test_slow_request_heads_are_dropped(serve):
    """Connections whose request line and headers do not arrive within --header_timeout are
    closed (a byte a second, nothing at all, or the next request on a kept-alive connection),
    while others are answered at once."""
    server = serve(Limits(), ConnectionLimits(header_timeout=1, keep_alive=5))
    head = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode()
    silent = [connect(server.port) for _ in range(4)]
    dripping = [connect(server.port) for _ in range(4)]
    kept = connect(server.port)  # one full request, then the next one slowly
    kept.sendall(head)
    assert kept.recv(65536).startswith(b"HTTP/1.1 200 ")
    t0 = time.monotonic()
    with Drip([*dripping, kept], head * 10):
        assert request(server.port, "GET", "/healthz")[0] == 200
        for s in [*silent, *dripping, kept]:
            assert closed_within(s, 5) == b""
    assert time.monotonic() - t0 < 5
    for s in [*silent, *dripping, kept]:
        s.close()


def test_connections_per_client_address(serve):
    """Over --max_per_client open connections from one address: 429 (JSON reason, the
    connection closed); other addresses are not affected; a place freed is usable again."""
    server = serve(Limits(), ConnectionLimits(max_per_client=2))
    held = [connect(server.port) for _ in range(2)]
    wait_for(lambda: request(server.port, "GET", "/healthz", source="127.0.0.3")[0] == 200)
    status, headers, body, _ = request(server.port, "POST", "/v1/cartoonize", *photo_form(1))
    assert status == 429 and headers["connection"] == "close"
    assert json.loads(body) == {"reason": "too many connections from 127.0.0.1 (at most 2)"}
    assert request(server.port, "GET", "/healthz")[0] == 429
    status, _, _, _ = request(server.port, "POST", "/v1/cartoonize", *photo_form(1), "127.0.0.2")
    assert status == 200
    held.pop().close()
    wait_for(lambda: request(server.port, "GET", "/healthz")[0] == 200)
    for s in held:
        s.close()


def test_connection_limits_reach_uvicorn(serve):
    """--max_connections is uvicorn's limit_concurrency (its 503 while that many are open) and
    --keep_alive its idle timeout."""
    server = serve(Limits(), ConnectionLimits(max_connections=3, keep_alive=0.5))
    kept = connect(server.port)
    kept.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode())
    assert kept.recv(65536).startswith(b"HTTP/1.1 200 ")
    t0 = time.monotonic()
    assert closed_within(kept, 5) == b""
    assert 0.4 < time.monotonic() - t0 < 2
    held = [connect(server.port, source) for source in ("127.0.0.2", "127.0.0.3")]
    wait_for(lambda: request(server.port, "GET", "/healthz")[0] == 503)
    held.pop().close()
    wait_for(lambda: request(server.port, "GET", "/healthz")[0] == 200)
    held[0].close()

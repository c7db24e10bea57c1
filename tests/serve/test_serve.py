"""p2c-serve through Starlette's test client: the PNGs of infer.py for the same input; every
error status; concurrent requests batched onto the device; 503 with Retry-After when full, the
page answering meanwhile; nothing from uploads on disk or in the logs."""

from __future__ import annotations

import io
import logging
import struct
import tempfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from helpers import ci_required
from helpers.faces import (
    astronaut_canvas,
    default_preprocessor,
    stub_preprocessor,
    synthetic_photo,
)
from PIL import Image
from starlette.testclient import TestClient
from urllib3 import encode_multipart_formdata

from p2c_jax import whole_photo
from p2c_jax.cartoonize import Preparer, run
from p2c_jax.cli.infer import main as infer_main
from p2c_jax.cli.serve import main as serve_main
from p2c_jax.inference import BatchedGenerator, CompiledNet, load_generator
from p2c_jax.serve.app import Limits, create_app
from p2c_jax.serve.batcher import Buckets

needs_dlib = ci_required.needs_dlib()


@pytest.fixture(scope="module")
def compiled(weights) -> CompiledNet:
    return load_generator(weights)


@pytest.fixture(scope="module")
def engine(compiled) -> Buckets:
    return Buckets(compiled, max_batch=2)  # batch sizes 1 and 2


@pytest.fixture(scope="module")
def client(engine):
    app = create_app(engine, stub_preprocessor, Limits())
    with TestClient(app) as c:  # compiles both batch sizes at start-up
        yield c


@pytest.fixture
def server(client):
    """The app's state, its limits and batcher restored after the test."""
    s = client.app.state.server
    limits, run_, wait = vars(s.limits).copy(), s.batcher.run, s.batcher.max_wait_s
    yield s
    vars(s.limits).update(limits)
    s.batcher.run, s.batcher.max_wait_s = run_, wait


def encoded(image: np.ndarray, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, fmt, **kw)
    return buf.getvalue()


def post(client, data: bytes, name: str = "photo.png", **options):
    form = {k: str(v).lower() for k, v in options.items()}
    return client.post("/v1/cartoonize", files={"file": (name, data, "image/png")}, data=form)


# ------------------------------------------------- the same PNGs as infer.py


def test_same_png_as_infer(client, compiled, tmp_path):
    """One face (batch size 1, as infer.py runs on CPU): byte for byte the PNG of infer.py's
    runner, as a face crop and as the whole photo, plain and side by side."""
    src = tmp_path / "in" / "a.png"
    src.parent.mkdir()
    Image.fromarray(synthetic_photo(300, 340, 4)).save(src)
    gen = BatchedGenerator(compiled, batch_size=1)
    items = [(src, "a.png")]
    for side in (False, True):
        out = tmp_path / f"crop{side}"
        run(items, out, gen, Preparer(stub_preprocessor), side_by_side=side, progress=False)
        r = post(client, src.read_bytes(), side_by_side=side)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert r.content == (out / "a.png").read_bytes()
        out = tmp_path / f"whole{side}"
        prepare = whole_photo.PhotoPreparer(stub_preprocessor, gen.size)
        whole_photo.run(items, out, gen, prepare, side_by_side=side, progress=False)
        r = post(client, src.read_bytes(), whole_photo=True, side_by_side=side)
        assert r.status_code == 200
        assert (r.headers["x-faces-found"], r.headers["x-faces-used"]) == ("1", "1")
        assert r.content == (out / "a.png").read_bytes()
    # the options may also come in the query string
    r = client.post(
        "/v1/cartoonize?whole_photo=true",
        files={"file": ("a.png", src.read_bytes(), "image/png")},
    )
    assert r.content == (tmp_path / "wholeFalse" / "a.png").read_bytes()


@needs_dlib
def test_same_png_as_infer_cli_default_backends(engine, weights, tmp_path):
    """dlib + GrabCut: the server's PNG equals the file infer.py writes, for scikit-image's
    astronaut as a face crop and for a photo of two astronauts as a whole photo (two faces:
    one batch of 2 on the server, so infer.py runs with --batch_size 2)."""
    from skimage import data

    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(data.astronaut()).save(src / "astronaut.jpg", quality=95)
    Image.fromarray(astronaut_canvas()).save(src / "two.jpg", quality=95)
    common = ["--weights", str(weights), "--workers", "1", "--no_progress"]
    out = tmp_path / "crop"
    assert infer_main([str(src / "astronaut.jpg"), "-o", str(out), *common]) == 0
    whole = tmp_path / "whole"
    args = ["--whole_photo", "--batch_size", "2"]
    assert infer_main([str(src / "two.jpg"), "-o", str(whole), *common, *args]) == 0
    app = create_app(engine, default_preprocessor, warmup=False)
    with TestClient(app) as c:
        r = post(c, (src / "astronaut.jpg").read_bytes(), "astronaut.jpg")
        assert r.status_code == 200
        assert r.content == (out / "astronaut.png").read_bytes()
        r = post(c, (src / "two.jpg").read_bytes(), "two.jpg", whole_photo=True)
        assert r.status_code == 200 and r.headers["x-faces-used"] == "2"
        assert r.content == (whole / "two.png").read_bytes()
        r = post(c, encoded(data.coffee()), whole_photo=True)
        assert (r.status_code, r.json()) == (422, {"reason": "no face found"})


# ------------------------------------------------- errors


def png_with_header_size(width: int, height: int) -> bytes:
    """A small valid PNG whose header claims width x height pixels."""
    data = bytearray(encoded(np.zeros((8, 8, 3), np.uint8)))
    ihdr = bytes(data[12:16]) + struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr))
    return bytes(data)


def test_errors(client, server):
    photo = synthetic_photo(300, 300, 1)

    def status(r) -> tuple[int, str]:
        assert r.headers["content-type"] == "application/json"
        return r.status_code, r.json()["reason"]

    # 415: not an image, an image type we do not decode, not multipart/form-data
    assert status(post(client, b"just some text", "notes.txt")) == (415, "not an image")
    ico = encoded(photo[:64, :64], "ICO")
    assert status(post(client, ico, "a.ico"))[0] == 415
    assert "unsupported image type ICO" in status(post(client, ico))[1]
    r = client.post("/v1/cartoonize", content=encoded(photo), headers={"content-type": "image/png"})
    assert status(r)[0] == 415
    assert status(post(client, encoded(photo)[:400]))[0] == 415  # truncated: corrupt
    # 413: pixels over the limit (from the header alone), a decompression bomb, bytes over
    assert status(post(client, png_with_header_size(12_000, 12_000))) == (
        413,
        "image too large (12000x12000 pixels; at most 50000000)",
    )
    assert status(post(client, png_with_header_size(60_000, 60_000))) == (413, "image too large")
    server.limits.max_pixels = 300 * 299
    assert status(post(client, encoded(photo)))[0] == 413
    server.limits.max_pixels = 300 * 300
    assert post(client, encoded(photo)).status_code == 200
    big = encoded(np.random.default_rng(0).integers(0, 256, (300, 300, 3), np.uint8))
    server.limits.max_upload_bytes = len(big) - 1
    assert status(post(client, big)) == (413, f"upload over {(len(big) - 1) / 2**20:g} MB")
    server.limits.max_upload_bytes = len(big)
    assert post(client, big).status_code == 200
    # 422: no face; faces all under min_face; too small to hold a face
    dark = encoded(np.full((300, 300, 3), 5, np.uint8))
    assert status(post(client, dark)) == (422, "no face found")
    assert status(post(client, dark, whole_photo=True)) == (422, "no face found")
    server.limits.min_face = 500
    assert status(post(client, encoded(photo), whole_photo=True)) == (
        422,
        "no face found (1 smaller than 500 px)",
    )
    assert status(post(client, encoded(photo[:20, :20]))) == (422, "image too small (20x20)")
    # 400: no file field, an option that is not a boolean
    body, ctype = encode_multipart_formdata({"whole_photo": "true"})
    r = client.post("/v1/cartoonize", content=body, headers={"content-type": ctype})
    assert status(r) == (400, "no image: send it as the multipart field 'file'")
    assert status(post(client, encoded(photo), whole_photo="maybe"))[0] == 400
    assert client.get("/v1/cartoonize").status_code == 405
    # the file part without a filename is the file all the same
    r = client.post("/v1/cartoonize", files={"file": (None, encoded(photo), "image/png")})
    assert r.status_code == 200


def test_image_in_another_field(client):
    """An image sent in a field other than 'file' is named as such, not as a long option."""
    photo = encoded(synthetic_photo(300, 300, 2))
    assert len(photo) > 1024  # over an option's length
    for name, part in (
        ("photo", ("a.png", photo, "image/png")),  # a file, large
        ("image", ("a.png", photo[:100], "image/png")),  # a file, short
        ("picture", photo),  # no file name, large
    ):
        body, ctype = encode_multipart_formdata({name: part})
        r = client.post("/v1/cartoonize", content=body, headers={"content-type": ctype})
        reason = f"no image: send it as the multipart field 'file', not {name!r}"
        assert (r.status_code, r.json()) == (400, {"reason": reason})
    r = post(client, photo, whole_photo="t" * 1025)
    assert (r.status_code, r.json()) == (400, {"reason": "whole_photo: value over 1024 bytes"})


# ------------------------------------------------- batching, overload, responsiveness


def test_concurrent_requests_are_batched(client, server):
    photos = [encoded(synthetic_photo(280, 260, 30 + i)) for i in range(8)]
    alone = [post(client, p) for p in photos]  # one at a time: one device call each
    assert all(r.status_code == 200 for r in alone)
    server.batcher.max_wait_s = 1.0  # the first face waits for the others
    before = client.get("/healthz").json()
    start = threading.Barrier(8)

    def request(p: bytes):
        start.wait()
        return post(client, p)

    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(request, photos))
    after = client.get("/healthz").json()
    assert [r.status_code for r in together] == [200] * 8
    calls = after["device_calls"] - before["device_calls"]
    assert after["device_images"] - before["device_images"] == 8
    assert calls < 8, calls  # batch size 2: 4 calls when every face found a partner
    for a, b in zip(alone, together):
        a_img, b_img = (np.asarray(Image.open(io.BytesIO(r.content))) for r in (a, b))
        assert np.abs(a_img.astype(int) - b_img).max() <= 1  # batch of 2 vs 1: float rounding


class Gate:
    """The generator, held until ``open`` is set; counts its calls."""

    def __init__(self, run):
        self.run, self.open, self.calls = run, threading.Event(), 0

    def __call__(self, x):
        self.calls += 1
        assert self.open.wait(60)
        return self.run(x)


def test_overloaded_503_while_the_page_answers(client, server):
    gate = Gate(server.batcher.run)
    server.batcher.run = gate
    server.limits.max_pending = 2
    photo = encoded(synthetic_photo(280, 260, 50))
    with ThreadPoolExecutor(2) as pool:
        held = [pool.submit(post, client, photo) for _ in range(2)]
        deadline = time.monotonic() + 30
        while client.get("/healthz").json()["in_progress"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        # the device is busy (or the queue full): the page and health still answer at once
        t = time.perf_counter()
        assert client.get("/").status_code == 200
        assert client.get("/static/app.js").status_code == 200
        assert time.perf_counter() - t < 5
        r = post(client, photo)
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
        assert r.json()["reason"].startswith("overloaded")
        assert not any(f.done() for f in held)
        gate.open.set()
        assert [f.result(timeout=60).status_code for f in held] == [200, 200]
    assert gate.calls >= 1
    assert post(client, photo).status_code == 200


# ------------------------------------------------- privacy, page, command


def test_nothing_on_disk_nor_in_the_logs(client, monkeypatch, caplog):
    """A 3 MB upload (over Starlette's 1 MB spooling threshold) makes no temporary file; the
    log lines name no file and carry no bytes."""

    def no_disk(*a, **k):
        raise AssertionError("a temporary file was made")

    for name in ("TemporaryFile", "NamedTemporaryFile", "SpooledTemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, no_disk)
    noise = np.random.default_rng(1).integers(0, 256, (1000, 1000, 3), np.uint8)
    noise[...] = np.maximum(noise, 40)  # bright enough for the stand-in face finder
    data = encoded(noise)
    assert len(data) > 2**21
    with caplog.at_level(logging.DEBUG):
        r = post(client, data, "private-holiday-photo.png", whole_photo=True)
    assert r.status_code == 200
    assert Image.open(io.BytesIO(r.content)).size == (1000, 1000)
    for rec in caplog.records:
        msg = rec.getMessage()
        assert "private-holiday" not in msg and len(msg) < 300, msg


def test_page_has_no_outside_assets(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'type="file"' in page.text and "v1/cartoonize" in client.get("/static/app.js").text
    for path in ("/", "/static/app.js", "/static/style.css"):
        text = client.get(path).text
        assert "http://" not in text and "https://" not in text and "//cdn" not in text
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["batch_sizes"] == [1, 2]


def test_serve_command_errors(tmp_path, capsys):
    assert serve_main(["--weights", str(tmp_path / "nope.pt")]) == 2
    assert "error: unusable weights" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        serve_main(["--weights", "w.pt", "--precision", "float8"])
    assert e.value.code == 2

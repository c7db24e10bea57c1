"""The ASGI app of ``p2c-serve``: the page at ``/``, ``POST /v1/cartoonize``, ``GET /healthz``.

A request's image is read into memory (never to disk), decoded and its faces prepared in a
thread pool, its faces computed by the ``Batcher`` together with other requests' faces, and the
PNG made in the thread pool again; the event loop only moves bytes. The outputs are those of
``infer.py``: the largest face's cartoon on white (``side_by_side``: after the face the
generator saw), or with ``whole_photo`` the whole photo with every face pasted back
(``side_by_side``: after the photo).

Errors are JSON ``{"reason": ...}``: 400 a malformed request, 408 a body not received within
``body_timeout``, 413 an upload over the byte limit or an image over the pixel limit, 415 not an
image (or not multipart/form-data), 422 no face (or an image too small to hold one), 503 with
``Retry-After`` when ``max_pending`` requests are already in progress (counted once their body
has arrived, so slow uploads do not take the places of others). Logs name the status, face
counts and time, never image data or names.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from preprocessing.extras import needs

with needs("serve", "p2c-serve (p2c_jax.serve.app)"):
    from python_multipart.multipart import MultipartParser, parse_options_header
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

from p2c_jax.serve.batcher import Batcher, Buckets, StoppedError
from p2c_jax.whole_photo import MAX_FACES, MIN_FACE, find_faces, render
from preprocessing.generator_io import postprocess, prepare_face
from preprocessing.io import ImageError, encode_png, load_rgb
from preprocessing.pipeline import NoFaceError, Preprocessor

STATIC = Path(__file__).resolve().parent / "static"
FORM_SLACK = 64 * 1024  # bytes of a request beyond the image: boundaries, headers, options
MAX_FIELD = 1024  # bytes of an option's value
OPTIONS = ("whole_photo", "side_by_side")
NO_FILE = "no image: send it as the multipart field 'file'"
FORMATS = {"JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF"}  # what PIL decodes on its own
log = logging.getLogger("p2c_jax.serve")


@dataclass
class Limits:
    """What a request may ask of the server."""

    max_upload_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000  # decoded width x height: stops decompression bombs
    max_pending: int = 32  # requests in progress at once (body received); more are answered 503
    body_timeout: float = 60.0  # seconds to receive a request's body; later: 408
    max_faces: int = MAX_FACES  # with whole_photo
    min_face: float = MIN_FACE  # with whole_photo


class ApiError(Exception):
    """An error answered as JSON ``{"reason": ...}`` with ``status``."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None):
        super().__init__(reason)
        self.status, self.reason, self.headers = status, reason, headers or {}

    def response(self) -> JSONResponse:
        return JSONResponse({"reason": self.reason}, self.status, headers=self.headers)


def parse_bool(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on", "t", "y"):
        return True
    if v in ("", "0", "false", "no", "off", "f", "n"):
        return False
    raise ApiError(400, f"{name}: expected true or false, got {value[:20]!r}")


async def read_form(
    request: Request, max_file: int, timeout: float
) -> tuple[dict[str, str], bytes]:
    """The text fields and the bytes of the ``file`` field of a multipart/form-data request,
    all in memory; 413 as soon as the file passes ``max_file`` bytes, 408 when the body has
    not arrived within ``timeout`` seconds, 400 without a ``file`` field."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data":
        raise ApiError(415, "expected multipart/form-data with the image in the field 'file'")
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "multipart/form-data without a boundary")
    max_body = max_file + FORM_SLACK
    with contextlib.suppress(ValueError):
        if int(request.headers.get("content-length", "0")) > max_body:
            raise ApiError(413, f"upload over {max_file / 2**20:g} MB")

    parts: dict[str, bytearray] = {}
    part: dict[str, Any] = {}
    header = [b"", b""]
    misplaced: list[str] = []  # fields other than 'file' that came with a file name
    too_large = ApiError(413, f"upload over {max_file / 2**20:g} MB")

    def on_part_begin() -> None:
        part.clear()
        part.update(headers={}, data=bytearray())

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header[0] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header[1] += data[start:end]

    def on_header_end() -> None:
        part["headers"][header[0].lower()] = header[1]
        header[0], header[1] = b"", b""

    def on_headers_finished() -> None:
        _, options = parse_options_header(part["headers"].get(b"content-disposition", b""))
        part["name"] = name = options.get(b"name", b"").decode("utf-8", "replace")
        part["limit"] = max_file if name == "file" else MAX_FIELD
        if b"filename" in options and name != "file":
            misplaced.append(name)

    def on_part_data(data: bytes, start: int, end: int) -> None:
        part["data"] += data[start:end]
        if len(part["data"]) > part["limit"]:
            name = part["name"]
            if name == "file":
                raise too_large
            if name in OPTIONS:
                raise ApiError(400, f"{name}: value over {MAX_FIELD} bytes")
            raise ApiError(400, f"{NO_FILE}, not {name!r}")  # an image in another field

    def on_part_end() -> None:
        parts[part["name"]] = part["data"]

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    total = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                total += len(chunk)
                if total > max_body:
                    raise too_large
                parser.write(chunk)
        parser.finalize()
    except TimeoutError:
        reason = f"request body not received within {timeout:g} s"
        raise ApiError(408, reason, {"Connection": "close"}) from None
    except ApiError:
        raise
    except Exception as exc:  # noqa: BLE001 - python-multipart's parse errors
        raise ApiError(400, f"malformed multipart/form-data ({type(exc).__name__})") from None
    data = parts.pop("file", None)
    if data is None:
        raise ApiError(400, f"{NO_FILE}, not {misplaced[0]!r}" if misplaced else NO_FILE)
    fields = {k: v.decode("utf-8", "replace") for k, v in parts.items()}
    return fields, bytes(data)


def decode(data: bytes, max_pixels: int) -> np.ndarray:
    """RGB uint8, EXIF orientation applied, as ``infer.py`` reads a file; its size is checked
    from the header before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(BytesIO(data)) as im:
                width, height, kind = *im.size, im.format
    except Image.UnidentifiedImageError:
        raise ApiError(415, "not an image") from None
    except Image.DecompressionBombError:
        raise ApiError(413, "image too large") from None
    except Exception as exc:  # noqa: BLE001 - a header PIL cannot read
        raise ApiError(415, f"corrupt image ({type(exc).__name__})") from None
    if kind not in FORMATS:
        raise ApiError(415, f"unsupported image type {kind} (use JPEG, PNG, WebP, BMP, GIF, TIFF)")
    if width * height > max_pixels:
        raise ApiError(413, f"image too large ({width}x{height} pixels; at most {max_pixels})")
    try:
        return load_rgb(BytesIO(data))
    except ImageError as exc:
        reason = str(exc)
        if reason == "image too large":
            raise ApiError(413, reason) from None
        if reason.startswith("image too small"):
            raise ApiError(422, reason) from None
        raise ApiError(415, reason) from None


class Server:
    """What the routes share: the preprocessing threads, the batcher, the limits, counters."""

    def __init__(
        self,
        engine: Buckets,
        make_preprocessor: Callable[[], Preprocessor],
        limits: Limits,
        *,
        workers: int = 2,
        max_wait_s: float = 0.01,
        warmup: bool = True,
    ):
        self.engine, self.limits, self.warmup = engine, limits, warmup
        self.batcher = Batcher(engine, engine.max_batch, max_wait_s)
        self.pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="p2c-prep")
        self._make = make_preprocessor
        self._local = threading.local()
        self._lock = threading.Lock()
        self._spare: Preprocessor | None = None
        self._ready = False
        self.receiving = 0  # requests whose body is arriving
        self.pending = 0  # requests in progress after their body arrived (max_pending)
        self.served = 0
        self._recent = 1.0  # seconds a request took lately, its upload aside: Retry-After

    def setup(self) -> None:
        """Build the first preprocessor (an unusable backend fails here) and compile the
        generator; done once, before the server listens."""
        if self._ready:
            return
        self._spare = self._make()
        if self.warmup:
            t = time.perf_counter()
            self.engine.warmup()
            log.info(
                "generator compiled for batches of %s in %.1f s",
                ", ".join(map(str, self.engine.sizes)),
                time.perf_counter() - t,
            )
        self._ready = True

    def stop(self) -> None:
        self.batcher.stop()
        self.pool.shutdown(wait=True, cancel_futures=True)

    def preprocessor(self) -> Preprocessor:
        """This thread's Preprocessor (the backends are not shared between threads)."""
        if not hasattr(self._local, "pre"):
            with self._lock:
                spare, self._spare = self._spare, None
            self._local.pre = spare if spare is not None else self._make()
        return self._local.pre

    def prepare(self, data: bytes, whole_photo: bool):
        """Decode and find the faces (thread pool): a whole_photo.Photo or one Prepared."""
        image = decode(data, self.limits.max_pixels)
        pre = self.preprocessor()
        size = self.engine.size
        try:
            if whole_photo:
                return find_faces(
                    pre,
                    image,
                    size=size,
                    max_faces=self.limits.max_faces,
                    min_face=self.limits.min_face,
                )
            return prepare_face(*pre.crop_and_mask(image, pre.align(image)[0]), size)
        except NoFaceError as exc:
            raise ApiError(422, str(exc)) from None

    @staticmethod
    def encode(prepared, ys: np.ndarray, whole_photo: bool, side_by_side: bool) -> bytes:
        """The output PNG, as ``infer.py`` writes it (thread pool)."""
        if whole_photo:
            return encode_png(render(prepared, ys, side_by_side))
        cartoon = postprocess(ys[0], prepared.mask)
        image = np.concatenate([prepared.photo, cartoon], axis=1) if side_by_side else cartoon
        return encode_png(image)

    def overloaded(self) -> ApiError:
        retry = max(1, math.ceil(self._recent))
        return ApiError(
            503, "overloaded: too many requests in progress", {"Retry-After": str(retry)}
        )

    async def receive(self, request: Request) -> tuple[bytes, bool, bool]:
        """The image and the options whole_photo, side_by_side of a request."""
        self.receiving += 1
        try:
            limits = self.limits
            fields, data = await read_form(request, limits.max_upload_bytes, limits.body_timeout)
        finally:
            self.receiving -= 1
        options = {**request.query_params, **fields}
        whole = parse_bool("whole_photo", options.get("whole_photo", ""))
        side = parse_bool("side_by_side", options.get("side_by_side", ""))
        return data, whole, side

    async def answer(self, prepared, whole: bool, side: bool) -> tuple[Response, str]:
        """The PNG response and the faces used / found (for the log)."""
        loop = asyncio.get_running_loop()
        x = prepared.x if whole else prepared.x[None]
        ys = await self.batcher(x)
        png = await loop.run_in_executor(self.pool, self.encode, prepared, ys, whole, side)
        found, used = (prepared.found, len(prepared.faces)) if whole else (1, 1)
        headers = {"X-Faces-Found": str(found), "X-Faces-Used": str(used)}
        return Response(png, 200, headers, media_type="image/png"), f"{used}/{found} faces"

    async def cartoonize(self, request: Request) -> Response:
        t = time.perf_counter()
        faces = "-"
        try:
            data, whole, side = await self.receive(request)
            if self.pending >= self.limits.max_pending:
                raise self.overloaded()
            self.pending += 1
            received = time.perf_counter()  # Retry-After: the time after the upload
            try:
                loop = asyncio.get_running_loop()
                prepared = await loop.run_in_executor(self.pool, self.prepare, data, whole)
                del data
                response, faces = await self.answer(prepared, whole, side)
            finally:
                self.pending -= 1
        except ApiError as exc:
            response = exc.response()
        except StoppedError as exc:
            response = ApiError(503, str(exc), {"Retry-After": "5"}).response()
        except Exception as exc:
            log.exception("internal error")
            response = ApiError(500, f"internal error ({type(exc).__name__})").response()
        seconds = time.perf_counter() - t
        if response.status_code == 200:
            self.served += 1
            self._recent = 0.8 * self._recent + 0.2 * (time.perf_counter() - received)
        log.info("%d %s %.3f s", response.status_code, faces, seconds)
        return response

    async def healthz(self, request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "status": "ok",
                "image_size": self.engine.size,
                "batch_sizes": self.engine.sizes,
                "receiving": self.receiving,
                "in_progress": self.pending,
                "served": self.served,
                "device_calls": self.batcher.calls,
                "device_images": self.batcher.images,
            }
        )


def create_app(
    engine: Buckets,
    make_preprocessor: Callable[[], Preprocessor],
    limits: Limits | None = None,
    *,
    workers: int = 2,
    max_wait_s: float = 0.01,
    warmup: bool = True,
) -> Starlette:
    """The app: ``engine`` the compiled generator (compiled again at start-up unless
    ``warmup`` is False), ``make_preprocessor`` one face finder per worker thread (it must
    keep every face: ``all_faces=True``)."""
    server = Server(
        engine,
        make_preprocessor,
        limits or Limits(),
        workers=workers,
        max_wait_s=max_wait_s,
        warmup=warmup,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        server.setup()
        server.batcher.start()
        try:
            yield
        finally:
            server.stop()

    async def index(request: Request) -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/healthz", server.healthz),
            Route("/v1/cartoonize", server.cartoonize, methods=["POST"]),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        lifespan=lifespan,
    )
    app.state.server = server
    return app

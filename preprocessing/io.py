"""Robust image decoding to RGB uint8, atomic writes and input discovery."""

from __future__ import annotations

import contextlib
import glob
import os
import uuid
import warnings
from collections.abc import Iterable
from io import BytesIO
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

MIN_SIDE = 32  # smaller photos cannot hold a face the landmark models can find


class ImageError(Exception):
    """A file that cannot be used as a photo; the message is the reason for the report."""


def _opaque_on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The original's `load_test_data` rule: pixels not fully opaque become white."""
    opaque = (alpha == 255)[:, :, None]
    return np.where(opaque, rgb, np.uint8(255)).astype(np.uint8)


def _to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.repeat((np.asarray(im, np.uint16) >> 8).astype(np.uint8)[:, :, None], 3, axis=2)
    if im.mode == "I":
        arr = np.asarray(im, np.int64)
        scale = 8 if arr.max(initial=0) > 255 else 0
        return np.repeat(np.clip(arr >> scale, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
    if im.mode == "F":
        return np.repeat(np.clip(np.asarray(im), 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA"))
        return _opaque_on_white(rgba[:, :, :3], rgba[:, :, 3])
    return np.ascontiguousarray(np.asarray(im.convert("RGB")))


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode a photo as an RGB uint8 array, EXIF orientation applied.

    Grayscale, 16-bit, palette, CMYK and alpha images are converted; an alpha
    channel is put on white. Raises ImageError with a short reason otherwise.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                im = ImageOps.exif_transpose(im)
                rgb = _to_rgb(im)
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except IsADirectoryError:
        raise ImageError("is a directory") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except Image.UnidentifiedImageError:
        raise ImageError("not an image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError("image too large") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"corrupt image ({exc})") from None
    h, w = rgb.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise ImageError(f"image too small ({w}x{h})")
    return rgb


def load_rgb_bytes(data: bytes) -> np.ndarray:
    """Decode encoded image bytes (PNG, JPEG, ...) to RGB uint8."""
    with Image.open(BytesIO(data)) as im:
        return _to_rgb(im)


def encode_png(rgb: np.ndarray) -> bytes:
    """Lossless PNG bytes of an RGB uint8 array."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def is_url(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a ``scheme://`` URL (``gs://``) rather than a local path."""
    return "://" in os.fspath(path)


def write_atomic(path: str | os.PathLike, data: bytes, *, fsync: bool = False) -> None:
    """Write bytes so that the path holds either nothing (or its old content) or the whole file.

    A ``gs://`` path (an ``etils.epath.Path`` or a string) is one object upload, which GCS makes
    visible only once complete; a local one a temporary file beside it (the parent created),
    renamed into place, removed on failure. The file gets the mode ``open(path, "w")`` would give
    it, 0o666 less the umask (the kernel applies it; ``mkstemp``'s 0o600 would not follow it).
    ``fsync``: flushed to disk before the rename.
    """
    if is_url(path):
        from etils import epath

        epath.Path(path).write_bytes(data)
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    fd = os.open(tmp, flags, 0o666)  # O_EXCL: never another's file; not ours to remove if so
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def discover(inputs: Iterable[str]) -> list[tuple[Path, str]]:
    """Expand files, folders (recursively) and globs into (path, relative name) pairs.

    A folder's files are named relative to it; a file or glob match by its base name.
    Every file is kept, images or not (hidden files aside), so that each gets a result.
    """
    found: dict[str, Path] = {}
    for spec in inputs:
        p = Path(spec)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and not f.name.startswith("."):
                    found.setdefault(f.relative_to(p).as_posix(), f)
        elif p.exists():
            found.setdefault(p.name, p)
        else:
            matches = sorted(glob.glob(spec, recursive=True))
            for m in matches:
                if Path(m).is_file():
                    found.setdefault(Path(m).name, Path(m))
            if not matches:
                found.setdefault(p.name or spec, p)
    return [(path, rel) for rel, path in sorted(found.items())]

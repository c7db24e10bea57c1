"""Robust image decoding to RGB uint8 and PNG encoding (file-system helpers: ``files``)."""

from __future__ import annotations

import os
import warnings
from io import BytesIO
from typing import BinaryIO

import cv2
import numpy as np
from PIL import Image, ImageOps

from .files import is_url

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


def _readable(path: str | os.PathLike | BinaryIO):
    """What ``Image.open`` reads: a local path or an open file as they are, the bytes of a
    ``gs://`` object."""
    if hasattr(path, "read") or not is_url(path):
        return path
    from etils import epath

    return BytesIO(epath.Path(path).read_bytes())


def load_rgb(path: str | os.PathLike | BinaryIO) -> np.ndarray:
    """Decode a photo (a local path, ``gs://``, or an open binary file) as an RGB uint8 array, EXIF orientation applied.

    Grayscale, 16-bit, palette, CMYK and alpha images are converted; an alpha
    channel is put on white. Raises ImageError with a short reason otherwise.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(_readable(path)) as im:
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

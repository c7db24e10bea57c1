"""Photo preprocessing for p2c-jax: the original photo2cartoon face alignment,
crop and white background, with offline backends, a report and TFRecord output.

The public API is loaded on first use, so ``preprocessing.files`` (atomic writes, which the
training and inference core use) imports without OpenCV or Pillow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_API = {
    "align": "preprocessing.geometry",
    "aligned_crop": "preprocessing.geometry",
    "composite_on_white": "preprocessing.geometry",
    "crop": "preprocessing.geometry",
    "crop_box": "preprocessing.geometry",
    "eye_angle": "preprocessing.geometry",
    "largest_face": "preprocessing.geometry",
    "rotation_for": "preprocessing.geometry",
    "ImageError": "preprocessing.io",
    "load_rgb": "preprocessing.io",
    "Preprocessor": "preprocessing.pipeline",
    "run": "preprocessing.pipeline",
}

__all__ = [
    "ImageError",
    "Preprocessor",
    "align",
    "aligned_crop",
    "composite_on_white",
    "crop",
    "crop_box",
    "eye_angle",
    "largest_face",
    "load_rgb",
    "rotation_for",
    "run",
]

if TYPE_CHECKING:
    from preprocessing.geometry import (
        align,
        aligned_crop,
        composite_on_white,
        crop,
        crop_box,
        eye_angle,
        largest_face,
        rotation_for,
    )
    from preprocessing.io import ImageError, load_rgb
    from preprocessing.pipeline import Preprocessor, run


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'preprocessing' has no attribute {name!r}")
    return getattr(importlib.import_module(_API[name]), name)

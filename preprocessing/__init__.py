"""Photo preprocessing for p2c-jax: the original photo2cartoon face alignment,
crop and white background, with offline backends, a report and TFRecord output."""

from .geometry import (
    align,
    aligned_crop,
    composite_on_white,
    crop,
    crop_box,
    eye_angle,
    largest_face,
    rotation_for,
)
from .io import ImageError, load_rgb
from .pipeline import Preprocessor, run

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

"""What the original ``test.py`` does around the generator, per photo: the face crop and its
mask made into the generator's input, and its output put back on white. NumPy and OpenCV only
(no JAX), so that the PyTorch comparison paths share it too."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .pipeline import Preprocessor


@dataclass
class Prepared:
    """One image ready for the generator."""

    photo: np.ndarray  # [S, S, 3] uint8: the face the generator sees (for --side_by_side)
    x: np.ndarray  # [S, S, 3] float32 in [-1, 1]
    mask: np.ndarray | None  # [S, S, 1] float64 in [0, 1]; None: all face (--no_preprocess)


def prepare_aligned(image: np.ndarray, size: int = 256) -> Prepared:
    """An already aligned face: resized to ``size`` with INTER_AREA, no mask."""
    face = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return Prepared(face, (face / 127.5 - 1).astype(np.float32), None)


def prepare_face(crop: np.ndarray, mask: np.ndarray, size: int = 256) -> Prepared:
    """The original's step from the RGBA face (crop + uint8 mask) to the generator input."""
    rgba = cv2.resize(np.dstack((crop, mask)), (size, size), interpolation=cv2.INTER_AREA)
    m = rgba[:, :, 3:] / 255.0
    on_white = rgba[:, :, :3] * m + (1 - m) * 255
    return Prepared(on_white.astype(np.uint8), (on_white / 127.5 - 1).astype(np.float32), m)


def face_and_mask(pre: Preprocessor, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The largest face's aligned crop (not whitened) and its uint8 segmentation mask."""
    return pre.crop_and_mask(image, pre.align(image)[0])


def postprocess(y: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Generator output [S, S, 3] in [-1, 1] -> uint8 cartoon on white, truncated as the
    original does."""
    cartoon = (y.astype(np.float32) + 1) * 127.5
    if mask is not None:
        cartoon = cartoon * mask + 255 * (1 - mask)
    # the original's astype(uint8) would wrap values outside [0, 255]; tanh never makes them
    return np.clip(cartoon, 0, 255).astype(np.uint8)

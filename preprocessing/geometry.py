"""The original photo2cartoon alignment geometry: largest face, eye-corner rotation,
expanded square crop on white, and the white-background composite.

All functions are pure numpy/OpenCV and follow `utils/face_detect.py` and
`utils/preprocess.py` of minivision-ai/photo2cartoon number for number
(integer truncation, floor divisions and inclusive crop bounds included).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

LEFT_EYE_OUTER = 36  # 68-point (iBUG 300-W) index of the outer corner of the image-left eye
RIGHT_EYE_OUTER = 45  # ... and of the image-right eye


@dataclass(frozen=True)
class Rotation:
    """The affine map from the photo to the enlarged, rotated canvas."""

    matrix: np.ndarray  # 2 x 3, float64
    radians: float
    size: tuple[int, int]  # (width, height) of the rotated canvas

    @property
    def degrees(self) -> float:
        return math.degrees(self.radians)

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Map (N, 2) photo coordinates to canvas coordinates."""
        pts = np.asarray(points, np.float64)
        return pts @ self.matrix[:, :2].T + self.matrix[:, 2]


def landmark_box_area(landmarks: np.ndarray) -> float:
    """Area of the axis-aligned box around a face's landmarks."""
    lo, hi = np.min(landmarks, axis=0), np.max(landmarks, axis=0)
    return float((hi[0] - lo[0]) * (hi[1] - lo[1]))


def largest_face(faces: Sequence[np.ndarray]) -> int:
    """Index of the face whose landmark box is largest (first one on ties)."""
    if not faces:
        raise ValueError("no faces")
    return int(np.argmax([landmark_box_area(f) for f in faces]))


def eye_angle(landmarks: np.ndarray) -> float:
    """Rotation (radians, counter-clockwise on screen) that levels the outer eye corners."""
    left, right = (
        np.asarray(landmarks[LEFT_EYE_OUTER], np.float64),
        np.asarray(landmarks[RIGHT_EYE_OUTER], np.float64),
    )
    dx, dy = left[0] - right[0], left[1] - right[1]
    if dx == 0:
        return math.copysign(math.pi / 2, dy) if dy else 0.0
    return math.atan(dy / dx)


def rotation_for(image_shape: tuple[int, ...], radians: float) -> Rotation:
    """Rotation about the image centre onto a canvas enlarged to hold the whole photo."""
    height, width = image_shape[:2]
    cos, sin = math.cos(radians), math.sin(radians)
    new_w = int(width * abs(cos) + height * abs(sin))
    new_h = int(width * abs(sin) + height * abs(cos))
    tx = new_w // 2 - width // 2
    ty = new_h // 2 - height // 2
    matrix = np.array(
        [
            [cos, sin, (1 - cos) * width / 2.0 - sin * height / 2.0 + tx],
            [-sin, cos, sin * width / 2.0 + (1 - cos) * height / 2.0 + ty],
        ]
    )
    return Rotation(matrix=matrix, radians=radians, size=(new_w, new_h))


def rotate(image: np.ndarray, rotation: Rotation) -> np.ndarray:
    """Warp the photo onto the rotated canvas; pixels from outside the photo are white."""
    return cv2.warpAffine(image, rotation.matrix, rotation.size, borderValue=(255, 255, 255))


def crop_box(landmarks: np.ndarray, height_scale: float = 1.0) -> tuple[int, int, int, int]:
    """The original's square crop (left, top, right, bottom), bounds inclusive.

    The landmark box is expanded by 0.8 x height up, 0.3 x height down and
    0.3 x width on each side, then the shorter side is widened about its centre.
    `height_scale` first scales the landmark box's height about its top edge,
    for backends whose chin sits lower than face-alignment's (1.0: the original).
    """
    x0, y0 = (float(v) for v in np.min(landmarks, axis=0))
    x1, y1 = (float(v) for v in np.max(landmarks, axis=0))
    if height_scale != 1.0:
        y1 = y0 + height_scale * (y1 - y0)
    h, w = y1 - y0, x1 - x0
    top, bottom = int(y0 - 0.8 * h), int(y1 + 0.3 * h)
    left, right = int(x0 - 0.3 * w), int(x1 + 0.3 * w)
    if bottom - top > right - left:
        left -= ((bottom - top) - (right - left)) // 2
        right = left + (bottom - top)
    else:
        top -= ((right - left) - (bottom - top)) // 2
        bottom = top + (right - left)
    return left, top, right, bottom


def crop(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Cut the inclusive box out of the image; where it leaves the image it is white."""
    left, top, right, bottom = box
    out = np.full((bottom - top + 1, right - left + 1, 3), 255, np.uint8)
    h, w = image.shape[:2]
    sx0, sy0 = max(left, 0), max(top, 0)
    sx1, sy1 = min(right, w - 1), min(bottom, h - 1)
    if sx0 <= sx1 and sy0 <= sy1:
        out[sy0 - top : sy1 - top + 1, sx0 - left : sx1 - left + 1] = image[
            sy0 : sy1 + 1, sx0 : sx1 + 1, :3
        ]
    return out


def composite_on_white(face: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """face * m + 255 * (1 - m) with m = mask / 255, truncated to uint8 like the original."""
    m = mask.astype(np.float64)[:, :, None] / 255.0
    return (face * m + (1 - m) * 255).astype(np.uint8)


@dataclass(frozen=True)
class Alignment:
    """Where one face lands: the rotation and the crop box on the rotated canvas."""

    rotation: Rotation
    box: tuple[int, int, int, int]
    landmarks: np.ndarray  # in the photo's pixels
    canvas_landmarks: np.ndarray  # on the rotated canvas


def align(
    image_shape: tuple[int, ...], landmarks: np.ndarray, height_scale: float = 1.0
) -> Alignment:
    """Rotation and crop box for one face's 68 landmarks."""
    rotation = rotation_for(image_shape, eye_angle(landmarks))
    canvas = rotation.apply(landmarks)
    return Alignment(
        rotation, crop_box(canvas, height_scale), np.asarray(landmarks, np.float64), canvas
    )


def aligned_crop(image: np.ndarray, alignment: Alignment) -> np.ndarray:
    """The rotated photo cut to the alignment's box."""
    return crop(rotate(image, alignment.rotation), alignment.box)

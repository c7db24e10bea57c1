"""A small offline demo dataset of real images: photos (A) and their cartoon-style versions (B).

Domain A: square crops (with flips and a light colour jitter) of scikit-image's bundled
photographs, half of them around the astronaut's face. Domain B: independently drawn
crops of the same photographs turned into cartoons with OpenCV (edge-preserving
smoothing, a small palette and dark outlines). Nothing is downloaded; the result is
a deterministic function of the arguments.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from preprocessing.splits import SPLITS

_SEED = 20200405


def _photos() -> list[np.ndarray]:
    """RGB uint8 photographs bundled with scikit-image; the astronaut's face comes first."""
    from skimage import data

    astronaut = data.astronaut()
    photos = [astronaut[10:300, 110:380], astronaut, data.chelsea(), data.coffee(), data.rocket()]
    photos.append(np.repeat(data.camera()[:, :, None], 3, axis=2))
    return [np.ascontiguousarray(p) for p in photos]


def _random_view(photos: list[np.ndarray], rng: np.random.Generator, size: int) -> np.ndarray:
    """A random square crop (half the time of the face), maybe flipped, resized to size."""
    photo = photos[0] if rng.random() < 0.5 else photos[rng.integers(1, len(photos))]
    h, w = photo.shape[:2]
    side = int(min(h, w) * rng.uniform(0.6, 1.0))
    top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    view = photo[top : top + side, left : left + side]
    if rng.random() < 0.5:
        view = view[:, ::-1]
    return cv2.resize(np.ascontiguousarray(view), (size, size), interpolation=cv2.INTER_AREA)


def _jitter(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast and saturation scaled by up to +-15%."""
    x = rgb.astype(np.float32)
    x = x * rng.uniform(0.85, 1.15)
    x = (x - x.mean()) * rng.uniform(0.85, 1.15) + x.mean()
    gray = x.mean(axis=2, keepdims=True)
    x = gray + (x - gray) * rng.uniform(0.85, 1.15)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def cartoonize(rgb: np.ndarray, colors: int = 8) -> np.ndarray:
    """A classic cartoon filter: repeated bilateral smoothing, a median-cut palette of
    `colors` colours, and dark outlines from an adaptive threshold of the blurred grey image."""
    smooth = rgb
    for _ in range(4):
        smooth = cv2.bilateralFilter(smooth, d=7, sigmaColor=40, sigmaSpace=5)
    flat = np.asarray(
        Image.fromarray(smooth).quantize(colors, method=Image.Quantize.MEDIANCUT).convert("RGB")
    )
    gray = cv2.medianBlur(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), 5)
    edges = cv2.adaptiveThreshold(gray, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, 9, 4)
    return np.where(edges[:, :, None] > 0, flat, flat // 4).astype(np.uint8)


def _write(folder: Path, images: list[np.ndarray]) -> None:
    folder.mkdir(parents=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{i:04d}.png")


def build_demo(root: str | Path, n_train: int = 48, n_test: int = 8, size: int = 96) -> Path:
    """Build the demo dataset at `root` (trainA/trainB/testA/testB, PNG, size x size) and return it.

    Idempotent: an existing `root` is left as it is. The dataset is written to a
    temporary sibling folder and renamed into place, so concurrent builders are safe.
    """
    root = Path(root)
    if root.is_dir():
        return root
    photos = _photos()
    rng = np.random.default_rng(_SEED)
    counts = {"trainA": n_train, "trainB": n_train, "testA": n_test, "testB": n_test}
    root.parent.mkdir(parents=True, exist_ok=True)
    # a folder mode 0o777 less the umask, as os.mkdir gives (mkdtemp's 0o700 would stay on root)
    tmp = root.parent / f".{root.name}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        for split in SPLITS:
            views = [_random_view(photos, rng, size) for _ in range(counts[split])]
            if split.endswith("A"):
                _write(tmp / split, [_jitter(v, rng) for v in views])
            else:
                _write(tmp / split, [cartoonize(v) for v in views])
        try:
            os.rename(tmp, root)
        except OSError:
            if not root.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root

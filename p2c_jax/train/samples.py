"""The original's sample grids (`A2B_%07d.png`, `B2A_%07d.png` every print_freq steps).

One column per sample, seven rows: the real image, then for the identity (A2A), the
translation (A2B) and the cycle (A2B2A) the CAM heatmap of the generator followed by
its output. Heatmaps are drawn like the original's `cam()`: shifted to min 0, divided
by the max, truncated to uint8, resized bilinearly to the image size and coloured with
OpenCV's JET map. Images are denormalised from [-1, 1] with (x + 1) / 2. Arrays here are
RGB; `save_grid` writes BGR through OpenCV, rounding x * 255 like `cv2.imwrite` does.
"""

from __future__ import annotations

import os

import cv2
import numpy as np
from etils import epath

from p2c_jax import paths


def sample_path(
    result_dir: str | os.PathLike, dataset: str, direction: str, step: int
) -> epath.Path:
    """`<result_dir>/<dataset>/img/<direction>_<step:07d>.png`, direction 'A2B' or 'B2A'."""
    return paths.as_path(result_dir) / dataset / "img" / f"{direction}_{step:07d}.png"


def heatmap(heat: np.ndarray, size: int) -> np.ndarray:
    """The original's `cam()` as RGB float in [0, 1], [size, size, 3], of an [h, w] or [h, w, 1] map."""
    x = np.asarray(heat, np.float32)  # the original's float32 arithmetic, for the same truncation
    x = x.reshape(x.shape[:2])
    x = x - x.min()
    peak = x.max()
    u8 = (255 * (x / peak)).astype(np.uint8) if peak > 0 else np.zeros(x.shape, np.uint8)
    u8 = cv2.resize(u8, (size, size))
    return cv2.applyColorMap(u8, cv2.COLORMAP_JET)[:, :, ::-1] / 255.0


def denorm(x: np.ndarray) -> np.ndarray:
    """[-1, 1] -> [0, 1] (float32, as the original computes it on the tensor)."""
    return np.asarray(x, np.float32) * np.float32(0.5) + np.float32(0.5)


def sample_column(
    real: np.ndarray,
    fake_heat_aa: np.ndarray,
    fake_aa: np.ndarray,
    heat_ab: np.ndarray,
    fake_ab: np.ndarray,
    heat_aba: np.ndarray,
    fake_aba: np.ndarray,
) -> np.ndarray:
    """One sample's column, RGB float [7 * S, S, 3] in [0, 1] (up to generator overshoot).

    Images are [S, S, 3] in [-1, 1]; heatmaps [h, w, 1] (or [h, w]) at any resolution.
    For the B2A grid pass real B, B2B, B2A and B2A2B in the same slots.
    """
    size = np.shape(real)[0]
    images = [real, fake_aa, fake_ab, fake_aba]
    for img in images:
        if np.shape(img) != (size, size, 3):
            raise ValueError(f"sample images must be [{size}, {size}, 3], got {np.shape(img)}")
    heats = [fake_heat_aa, heat_ab, heat_aba]
    rows = [denorm(real)]
    for heat, img in zip(heats, images[1:]):
        rows += [heatmap(heat, size), denorm(img)]
    return np.concatenate(rows, axis=0)


def sample_grid(columns: list[np.ndarray]) -> np.ndarray:
    """Columns side by side as uint8 RGB [7 * S, n * S, 3], rounded and clipped like cv2.imwrite."""
    grid = np.concatenate(columns, axis=1)
    return np.clip(np.rint(grid * 255.0), 0, 255).astype(np.uint8)


def save_grid(path: str | os.PathLike, grid: np.ndarray) -> None:
    """Write a uint8 RGB grid as a PNG file, local or ``gs://`` (parent folders are created)."""
    ok, png = cv2.imencode(".png", np.ascontiguousarray(grid[:, :, ::-1]))
    if not ok:
        raise OSError(f"could not encode {path}")
    paths.write_bytes_atomic(path, png.tobytes())

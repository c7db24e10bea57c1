"""A face's cartoon put back into the whole photo: the inverse of the alignment's rotation and
crop, and a feathered mask blend. NumPy and OpenCV only.

The cartoon (S x S) was made from the crop box of the rotated canvas resized to S with
INTER_AREA, so a cartoon pixel centre ``u`` sits at crop coordinate ``(u + 0.5) * n / S - 0.5``
(``n``: the box's side). ``photo_to_cartoon`` composes that with the rotation; the cartoon and
its blend weight are warped into the photo through it (bilinear), only over the box's bounding
rectangle in the photo. The weight is the segmentation mask, slightly blurred, times a ramp
that falls to 0 at the crop's edges, so neither the segmentation's nor the crop's border shows.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from .geometry import Alignment

EDGE_RAMP = 0.06  # the weight rises from 0 at the crop's edge to 1 over this fraction of it
MASK_BLUR = 0.006  # Gaussian sigma of the mask's softening, as a fraction of the crop's side


def photo_to_cartoon(alignment: Alignment, size: int) -> np.ndarray:
    """The 2 x 3 affine map from photo pixel coordinates to the face's ``size`` cartoon."""
    left, top, right, _ = alignment.box
    s = size / (right - left + 1)
    m = alignment.rotation.matrix
    shift = m[:, 2] - (left, top)
    return np.hstack([s * m[:, :2], (s * (shift + 0.5) - 0.5)[:, None]])


def weight(mask: np.ndarray | None, size: int) -> np.ndarray:
    """The blend weight [S, S] float32 in [0, 1] of a cartoon with segmentation ``mask``
    ([S, S] or [S, S, 1], 0..1; None: the whole square)."""
    m = np.ones((size, size), np.float32) if mask is None else np.asarray(mask, np.float32)
    m = m.reshape(size, size)
    if MASK_BLUR > 0 and mask is not None:
        m = cv2.GaussianBlur(m, (0, 0), MASK_BLUR * size)
    # distance (in pixels) of each pixel centre from the nearest edge of the square
    d = np.minimum(np.arange(size), np.arange(size)[::-1]).astype(np.float32) + 0.5
    ramp = np.clip(d / max(1.0, EDGE_RAMP * size), 0, 1)
    return np.clip(m * np.minimum(ramp[:, None], ramp[None, :]), 0, 1)


def footprint(alignment: Alignment, size: int, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """The photo rectangle (x0, y0, x1, y1), end exclusive and clipped, that the cartoon covers."""
    a = np.vstack([photo_to_cartoon(alignment, size), [0, 0, 1]])
    inv = np.linalg.inv(a)
    corners = np.array([[-0.5, -0.5, 1], [size - 0.5, -0.5, 1], [-0.5, size - 0.5, 1]])
    corners = np.vstack([corners, [size - 0.5, size - 0.5, 1]]) @ inv.T
    h, w = shape[:2]
    x0, y0 = np.floor(corners[:, :2].min(axis=0)).astype(int)
    x1, y1 = np.ceil(corners[:, :2].max(axis=0)).astype(int) + 1
    return max(0, x0), max(0, y0), min(w, x1), min(h, y1)


def warp_back(
    image: np.ndarray, alignment: Alignment, size: int, shape: tuple[int, ...], *, linear=True
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """``image`` (S x S x C, the cartoon or its weight) warped into the photo's footprint of
    the face: (pixels over the footprint rectangle, the rectangle)."""
    x0, y0, x1, y1 = rect = footprint(alignment, size, shape)
    if x1 <= x0 or y1 <= y0:
        return np.zeros((0, 0, *image.shape[2:]), image.dtype), rect
    a = photo_to_cartoon(alignment, size)
    a[:, 2] += a[:, :2] @ (x0, y0)
    flags = (cv2.INTER_LINEAR if linear else cv2.INTER_NEAREST) | cv2.WARP_INVERSE_MAP
    border = cv2.BORDER_REPLICATE if image.dtype == np.uint8 else cv2.BORDER_CONSTANT
    out = cv2.warpAffine(image, a, (x1 - x0, y1 - y0), flags=flags, borderMode=border)
    return out.reshape(y1 - y0, x1 - x0, *image.shape[2:]), rect


def paste(photo: np.ndarray, cartoon: np.ndarray, mask: np.ndarray | None, alignment: Alignment):
    """Blend one face's cartoon (S x S x 3 uint8) into ``photo`` (H x W x 3 uint8) in place.

    Where the weight is 0 the photo's pixels are kept exactly.
    """
    size = cartoon.shape[0]
    w = weight(mask, size)
    alpha, (x0, y0, x1, y1) = warp_back(w, alignment, size, photo.shape)
    if alpha.size == 0:
        return photo
    face, _ = warp_back(np.ascontiguousarray(cartoon), alignment, size, photo.shape)
    region = photo[y0:y1, x0:x1]
    a = alpha[:, :, None]
    blended = region + (face.astype(np.float32) - region) * a
    region[...] = np.where(a > 0, np.clip(np.rint(blended), 0, 255), region).astype(np.uint8)
    return photo


def paste_all(
    photo: np.ndarray,
    cartoons: Sequence[np.ndarray],
    masks: Sequence[np.ndarray | None],
    alignments: Sequence[Alignment],
) -> np.ndarray:
    """A copy of ``photo`` with every face's cartoon pasted back, in the order given (the last
    one ends on top where faces overlap)."""
    out = np.array(photo, np.uint8, copy=True)
    for cartoon, mask, alignment in zip(cartoons, masks, alignments, strict=True):
        paste(out, cartoon, mask, alignment)
    return out

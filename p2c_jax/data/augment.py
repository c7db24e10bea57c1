"""The random draws and the transforms of training examples, one pure function of (seed, domain,
epoch or step, index) each, shared by every reader (`input_pipeline`, `grain_input`), so that the
data of a step is the same whatever reads it and however many processes do."""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple, TypeVar

import numpy as np
from PIL import Image

RESIZE_MARGIN = 30  # train images are resized to img_size + 30, then randomly cropped
ORDER, AUGMENT, STREAM = 0, 1, 2  # tags of the kinds of random draws
ArrayT = TypeVar("ArrayT")  # a NumPy or a JAX array


class Augment(NamedTuple):
    """The random draws of one training example: flip first, then the crop's top-left corner."""

    flip: bool
    top: int
    left: int


def decode_image(data: bytes) -> Image.Image:
    """The image of a record, decoded as `preprocessing` reads the PNGs it stores."""
    from preprocessing.io import load_rgb_bytes

    return Image.fromarray(load_rgb_bytes(data))


# ---------------------------------------------------------------------------- random draws


def philox(*key: int) -> np.random.Generator:
    return np.random.Generator(np.random.Philox(np.random.SeedSequence(list(key))))


def domain_key(domain: str) -> int:
    return int.from_bytes(domain.encode(), "little")


@lru_cache(maxsize=8)
def epoch_permutation(seed: int, domain: str, epoch: int, n: int) -> np.ndarray:
    """The order of the `n` files of `domain` in pass `epoch` over them."""
    perm = philox(seed, domain_key(domain), ORDER, epoch).permutation(n)
    perm.flags.writeable = False
    return perm


def batch_file_indices(seed: int, domain: str, step: int, global_batch: int, n: int) -> np.ndarray:
    """File indices of the global batch of `step`: consecutive positions of the epoch permutations."""
    pos = step * global_batch + np.arange(global_batch)
    epochs, offsets = np.divmod(pos, n)
    return np.array(
        [epoch_permutation(seed, domain, int(e), n)[o] for e, o in zip(epochs, offsets)]
    )


def augment_params(seed: int, domain: str, step: int, index: int) -> Augment:
    """The flip and crop of example `index` of the global batch of `step`."""
    rng = philox(seed, domain_key(domain), AUGMENT, step, index)
    flip = bool(rng.random() < 0.5)
    top, left = (int(v) for v in rng.integers(0, RESIZE_MARGIN + 1, size=2))
    return Augment(flip, top, left)


# ---------------------------------------------------------------------------- transforms


def to_unit_range(rgb: ArrayT) -> ArrayT:
    """uint8-valued RGB (a NumPy or JAX array, also traced) -> float32 in [-1, 1], as ToTensor
    then Normalize(0.5, 0.5) compute it."""
    return (rgb.astype(np.float32) / np.float32(255) - np.float32(0.5)) / np.float32(0.5)


def transform(img: Image.Image, img_size: int, aug: Augment | None) -> np.ndarray:
    """The original's train transform with the draws `aug`, or its test transform if None."""
    if aug is None:
        return to_unit_range(np.asarray(img.resize((img_size, img_size), Image.BILINEAR)))
    if aug.flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    big = img_size + RESIZE_MARGIN
    rgb = np.asarray(img.resize((big, big), Image.BILINEAR))
    return to_unit_range(rgb[aug.top : aug.top + img_size, aug.left : aug.left + img_size])

"""What every export format shares: the request and its checks, the generator as one JAX
function of the image, the probe images and the equality check against our JAX generator."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from flax import nnx

    from p2c_jax.nn.models import NetSpec

FORMATS = ("onnx", "stablehlo", "tflite", "savedmodel")
PRECISIONS = ("float32", "bfloat16")
# precisions each format is exported in; the others are refused before anything is loaded
SUPPORTED_PRECISIONS = {
    "onnx": ("float32",),
    "stablehlo": ("float32", "bfloat16"),
    "tflite": ("float32",),
    "savedmodel": ("float32",),
}
# formats whose file takes any batch size; the others are compiled for one (--batch N)
DYNAMIC_BATCH = ("onnx", "stablehlo", "savedmodel")
# tolerance (max abs, outputs in [-1, 1]) of the check against our JAX generator in the same
# precision. bfloat16 keeps 8 significant bits: any float32 difference in the order of
# operations (XLA folds the exported constants differently) can flip a rounding of an operand,
# a step of 2^-8 relative that later layers carry on, so its bound is some such steps.
MAX_ABS = {"float32": 1e-4, "bfloat16": 3e-2}


class ExportError(ValueError):
    """A request that cannot be exported (bad combination, unusable destination) or an
    exported file that does not equal our generator; nothing is left at the destination."""


class NotEqualError(ExportError):
    """The exported file, run in its runtime, is not within the tolerance of our generator."""


@dataclasses.dataclass(frozen=True)
class Request:
    """One export: format, destination, batch (None: any batch), precision, image size."""

    fmt: str
    dst: Path
    batch: int | None = None
    precision: str = "float32"
    img_size: int | None = None  # None: export_state's spec as it is
    force: bool = False  # replace an existing dst


def validate(req: Request) -> None:
    """Refuse a format / precision / batch combination or a destination before any work."""
    if req.fmt not in FORMATS:
        raise ExportError(f"unknown format {req.fmt!r}: expected one of {', '.join(FORMATS)}")
    if req.precision not in PRECISIONS:
        raise ExportError(
            f"unknown precision {req.precision!r}: expected one of {', '.join(PRECISIONS)}"
        )
    if req.precision not in SUPPORTED_PRECISIONS[req.fmt]:
        raise ExportError(
            f"--format {req.fmt} supports --precision "
            f"{' or '.join(SUPPORTED_PRECISIONS[req.fmt])}, not {req.precision}"
        )
    if req.batch is None and req.fmt not in DYNAMIC_BATCH:
        raise ExportError(
            f"--format {req.fmt} needs a fixed --batch N: its converter rejects the generator "
            "with a dynamic batch dimension (docs/export.md)"
        )
    if req.batch is not None and req.batch < 1:
        raise ExportError(f"--batch must be at least 1, got {req.batch}")
    if req.img_size is not None:
        from p2c_jax.inference import check_img_size

        try:
            check_img_size(req.img_size)
        except ValueError as e:
            raise ExportError(f"--img_size must be {e}") from None
    if req.dst.exists() and not req.force:
        raise ExportError(f"{req.dst}: already exists (--force replaces it)")
    if not req.dst.absolute().parent.is_dir():
        raise ExportError(f"{req.dst}: its folder does not exist")


def image_fn(spec: NetSpec, state: nnx.State, precision: str = "float32") -> Callable:
    """``x [N,S,S,3] float32 in [-1,1] -> image [N,S,S,3] float32``: the generator's image
    with ``state`` as constants, in ``precision`` (``nn.numerics``: bfloat16 products,
    float32 statistics), with XLA's plain convolutions: the portable form every converter
    reads (the XLA:CPU forms are tuned for that backend only)."""
    import jax.numpy as jnp
    from flax import nnx

    from p2c_jax.nn.models import graphdef
    from p2c_jax.nn.numerics import Numerics

    net = graphdef(spec, Numerics(precision))

    def image(x):
        return nnx.merge(net, state)(x)[0].astype(jnp.float32)

    return image


def probe_images(n: int, size: int) -> np.ndarray:
    """``n`` deterministic faces [n,S,S,3] float32 in [-1,1]: the astronaut's face bundled with
    scikit-image, flipped, shifted and lit differently; every fourth one smooth noise."""
    import cv2
    from skimage import data

    face = data.astronaut()[10:300, 110:400]
    rng = np.random.default_rng(16)
    out = []
    for i in range(n):
        if i % 4 == 3:
            noise = rng.uniform(0, 255, (size // 8, size // 8, 3)).astype(np.float32)
            img = cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC)
        else:
            dx = 8 * (i // 4)
            img = face[:, dx : dx + 280][:, :: -1 if i % 2 else 1].astype(np.float32)
            img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA) * (1 - 0.1 * (i % 3))
        out.append(np.clip(img, 0, 255) / 127.5 - 1)
    return np.stack(out).astype(np.float32)


def reference(
    spec: NetSpec, state: nnx.State, x: np.ndarray, precision: str = "float32"
) -> np.ndarray:
    """Our JAX generator's image of NHWC ``x`` (``inference.forward``): float32 as ``p2c-infer``
    runs it here (this backend's plan); bfloat16 under the plain-convolution plan, the one
    exported, since bfloat16 rounds differently in each plan's convolution forms."""
    from p2c_jax.inference import forward

    plan = "accelerator" if precision == "bfloat16" else "auto"
    return np.asarray(forward(spec, precision, plan=plan)(state, x)[0])


@dataclasses.dataclass
class Check:
    """The exported file run by its runtime against our JAX generator on the probe images."""

    batches: tuple[int, ...]
    max_abs: float
    mean_abs: float
    precision: str

    @property
    def ok(self) -> bool:
        return self.max_abs <= MAX_ABS[self.precision]

    def line(self) -> str:
        return (
            f"batch {'+'.join(map(str, self.batches))}: max |diff| {self.max_abs:.2e}, "
            f"mean {self.mean_abs:.2e} vs our {self.precision} generator "
            f"({'within' if self.ok else 'NOT within'} {MAX_ABS[self.precision]:g})"
        )


def check(
    run: Callable[[np.ndarray], np.ndarray],
    spec: NetSpec,
    state: nnx.State,
    batches: tuple[int, ...],
    precision: str,
) -> Check:
    """``run`` (NHWC in, NHWC image out) against ``reference`` on probe batches of each size
    (prefixes of one probe batch; our generator maps images independently, so its output on
    the largest batch is the reference for all)."""
    x = probe_images(max(batches), spec.img_size)
    want = reference(spec, state, x, precision)
    diffs = [np.abs(run(x[:n]) - want[:n]) for n in batches]
    flat = np.concatenate([d.ravel() for d in diffs])
    return Check(tuple(batches), float(flat.max()), float(flat.mean()), precision)


@contextlib.contextmanager
def staged(dst: Path, force: bool) -> Iterator[Path]:
    """A temporary path beside ``dst`` to write to; moved onto ``dst`` only when the block
    succeeds, removed otherwise, so a failed export leaves nothing at ``dst``."""
    dst = dst.absolute()
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        yield tmpdir / dst.name
        if dst.exists() and force:
            shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
        os.replace(tmpdir / dst.name, dst)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)

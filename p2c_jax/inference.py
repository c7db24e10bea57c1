"""The nets as compiled functions: load weights, run the generator on batches on every device.

``forward(spec)`` is the one jitted inference pass of a net architecture; ``load_generator``,
``infer.py``, the training sample grids and evaluation all call it.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from p2c_jax.nn.models import FACENET, NetSpec, abstract
from p2c_jax.nn.models import graphdef as nn_graphdef
from p2c_jax.nn.numerics import Numerics
from p2c_jax.parallel import (
    abstract_replicated,
    batch_sharding,
    make_mesh,
    replicated,
    uses_cpu_forms,
)
from p2c_jax.weights.checkpoint import CheckpointError
from p2c_jax.weights.convert import load_any

FACE_SIZE = 256  # the original test.py's face size, its released ONNX file's input


def forward(
    spec: NetSpec,
    precision: str = "float32",
    devices: Sequence[jax.Device] | None = None,
    plan: str = "auto",
):
    """The jitted inference pass ``(state, x) -> outputs`` of nets of ``spec`` for ``devices``
    (default: this process's), in ``precision``. Where the devices take the XLA:CPU forms
    (``parallel.uses_cpu_forms``; ``plan`` can force them on or off) the net runs one image at a
    time, which XLA:CPU runs faster than a batch."""
    cpu = uses_cpu_forms(devices or jax.local_devices(), plan)
    return _forward(spec, Numerics(precision, conv_forms=cpu), cpu)


@functools.cache
def _forward(spec: NetSpec, numerics: Numerics, map_images: bool):
    """One program per arguments, so calls never hash a net's graph."""
    graphdef = nn_graphdef(spec, numerics)

    def apply(state: nnx.State, x: jax.Array):
        net = nnx.merge(graphdef, state)
        if not map_images:
            return net(x)
        return jax.lax.map(lambda xi: jax.tree.map(lambda a: a[0], net(xi[None])), x)

    return jax.jit(apply)


class CompiledNet:
    """A net in inference mode as a function of its input (``forward(spec)`` on its state)."""

    def __init__(self, spec: NetSpec, state: nnx.State, precision_name: str = "float32"):
        self.spec, self.precision = spec, precision_name
        self.state = jax.device_put(state)
        self._forward = forward(spec, precision_name)

    def __call__(self, x: jax.Array):
        return self._forward(self.state, x)


def check_img_size(size: int) -> int:
    """``size`` if a light generator can run at it, a positive multiple of 16; else ValueError."""
    if size < 16 or size % 16:
        raise ValueError(f"a positive multiple of 16, got {size}")
    return size


def output_spec(spec: NetSpec, img_size: int | None = None, where: str = "") -> NetSpec:
    """The generator ``spec`` at the size inference runs it: ``img_size``, else ``FACE_SIZE``.

    One rule for every weights file, because an original ``.pt`` does not record the size a
    light generator was trained at: a light generator runs at any size; a full one only at
    its own (its FC layer fixes it), which is then the default. A light generator whose
    checkpoint says it was trained at another size gets a warning saying how to run it there.
    """
    if not spec.light:
        if img_size not in (None, spec.img_size):
            raise CheckpointError(
                f"{where}this generator is not light: its FC layer fixes img_size "
                f"{spec.img_size}, so it cannot run at img_size {img_size}"
            )
        return spec
    if img_size is not None:
        try:
            check_img_size(img_size)
        except ValueError as e:
            raise CheckpointError(f"img_size must be {e}") from None
    size = img_size or FACE_SIZE
    if img_size is None and spec.img_size != size:
        logging.getLogger(__name__).warning(
            f"{where}the generator was trained at {spec.img_size} x {spec.img_size} "
            f"and runs at {size} x {size}, the original's size (--img_size {spec.img_size} "
            "runs it at its own)"
        )
    return dataclasses.replace(spec, img_size=size)


def load_generator(
    path: str | Path, net: str = "genA2B", precision: str = "float32", img_size: int | None = None
) -> CompiledNet:
    """``gen(x [N,S,S,3] in [-1,1]) -> (image [N,S,S,3], cam_logit [N,2], heatmap [N,S/4,S/4,1])``
    from an original ``photo2cartoon_weights.pt``, our checkpoint or a training workdir;
    ``precision`` float32 or bfloat16 (``nn.numerics``). ``gen.spec.img_size`` is S, the size
    the generator runs at (``output_spec``: 256 unless ``img_size`` says otherwise)."""
    spec, state = load_any(path, [net])[net]
    if spec.kind != "generator":
        raise CheckpointError(f"{path}: {net} is a {spec.kind}, not a generator")
    return CompiledNet(output_spec(spec, img_size, f"{path}: {net}: "), state, precision)


def load_face_embedder(path: str | Path) -> CompiledNet:
    """``emb(x [N,112,112,3]) -> [N,512]`` (L2-normalised) from InsightFace's
    ``model_mobilefacenet.pth`` or our checkpoint holding it."""
    spec, state = load_any(path, [FACENET])[FACENET]
    return CompiledNet(spec, state)


def default_batch_size(devices: Sequence[jax.Device] | None = None) -> int:
    """8 per accelerator; 1 per CPU device (XLA:CPU runs the batch image by image anyway)."""
    devices = devices or jax.local_devices()
    return (1 if uses_cpu_forms(devices) else 8) * len(devices)


def batch_per_device(batch_size: int, devices: Sequence[jax.Device]) -> int:
    """The images each device gets of a ``batch_size`` batch, rounded up (short batches are
    padded)."""
    return math.ceil(max(1, batch_size) / len(devices))


def lower_generator(
    spec: NetSpec, precision: str, devices: Sequence[jax.Device], batch_size: int
) -> jax.stages.Lowered:
    """``BatchedGenerator``'s forward pass of a ``spec`` generator on ``devices``, lowered
    from shapes for its ``batch_size`` (state replicated, batch split): compiled ahead of
    time for devices that this host need not have."""
    mesh = make_mesh(devices)
    size = spec.img_size
    state = abstract_replicated(nnx.state(abstract(spec)), mesh)
    batch = batch_per_device(batch_size, devices) * len(devices)
    x = jax.ShapeDtypeStruct((batch, size, size, 3), np.float32, sharding=batch_sharding(mesh))
    return forward(spec, precision, devices).lower(state, x)


class BatchedGenerator:
    """The generator's image on fixed-size batches sharded over ``devices`` (default: all local).

    The batch size is rounded up to a multiple of the device count; shorter batches are padded,
    so the forward pass compiles once. Parameters are replicated on every device.
    """

    def __init__(self, gen: CompiledNet, batch_size: int, devices: Sequence | None = None):
        devices = list(devices or jax.local_devices())
        mesh = make_mesh(devices)
        self.batch_size = batch_per_device(batch_size, devices) * len(devices)
        self.spec, self.size = gen.spec, gen.spec.img_size
        self.state = jax.device_put(gen.state, replicated(mesh))
        self._data = batch_sharding(mesh)
        self._forward = forward(gen.spec, gen.precision, devices)

    def dispatch(self, x: np.ndarray) -> jax.Array:
        """Start the forward pass of ``x`` [n <= batch_size, S, S, 3]; returns without waiting."""
        pad = np.zeros((self.batch_size - len(x), *x.shape[1:]), np.float32)
        batch = jax.device_put(np.concatenate([x, pad]), self._data)
        return self._forward(self.state, batch)[0]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.dispatch(x))[: len(x)]

"""The nets as compiled functions: load weights, run the generator on batches on every device.

``forward(spec)`` is the one jitted inference pass of a net architecture; ``load_generator``,
``infer.py``, the training sample grids and evaluation all call it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from p2c_jax import backend
from p2c_jax.nn.models import FACENET, NetSpec, abstract
from p2c_jax.weights.checkpoint import CheckpointError
from p2c_jax.weights.convert import load_any


@functools.cache
def forward(spec: NetSpec, map_images: bool | None = None):
    """The jitted inference pass ``(state, x) -> outputs`` of nets of ``spec``.

    Cached per spec, so calls never hash a net's graph. ``map_images`` (default: the backend
    plan's) runs the net one image at a time, which XLA:CPU runs faster than a batch.
    """
    if map_images is None:
        map_images = backend.plan().map_images
    graphdef = nnx.graphdef(abstract(spec))

    def apply(state: nnx.State, x: jax.Array):
        net = nnx.merge(graphdef, state)
        if not map_images:
            return net(x)
        return jax.lax.map(lambda xi: jax.tree.map(lambda a: a[0], net(xi[None])), x)

    return jax.jit(apply)


class CompiledNet:
    """A net in inference mode as a function of its input (``forward(spec)`` on its state)."""

    def __init__(self, spec: NetSpec, state: nnx.State):
        self.spec = spec
        self.state = jax.device_put(state)
        self._forward = forward(spec)

    def __call__(self, x: jax.Array):
        return self._forward(self.state, x)


def load_generator(path: str | Path, net: str = "genA2B") -> CompiledNet:
    """``gen(x [N,H,W,3] in [-1,1]) -> (image [N,H,W,3], cam_logit [N,2], heatmap [N,H/4,W/4,1])``
    from an original ``photo2cartoon_weights.pt``, our checkpoint or a training workdir."""
    spec, state = load_any(path, [net])[net]
    if spec.kind != "generator":
        raise CheckpointError(f"{path}: {net} is a {spec.kind}, not a generator")
    return CompiledNet(spec, state)


def load_face_embedder(path: str | Path) -> CompiledNet:
    """``emb(x [N,112,112,3]) -> [N,512]`` (L2-normalised) from InsightFace's
    ``model_mobilefacenet.pth`` or our checkpoint holding it."""
    spec, state = load_any(path, [FACENET])[FACENET]
    return CompiledNet(spec, state)


def default_batch_size() -> int:
    """8 per accelerator; 1 per CPU device, where bigger batches measured slower per image."""
    return (1 if backend.plan().map_images else 8) * len(jax.local_devices())


class BatchedGenerator:
    """The generator's image on fixed-size batches sharded over ``devices`` (default: all local).

    The batch size is rounded up to a multiple of the device count; shorter batches are padded,
    so the forward pass compiles once. Parameters are replicated on every device.
    """

    def __init__(self, gen: CompiledNet, batch_size: int, devices: Sequence | None = None):
        devices = list(devices or jax.local_devices())
        mesh = Mesh(np.array(devices), ("data",))
        self.batch_size = math.ceil(max(1, batch_size) / len(devices)) * len(devices)
        self.spec, self.size = gen.spec, gen.spec.img_size
        self.state = jax.device_put(gen.state, NamedSharding(mesh, P()))
        self._data = NamedSharding(mesh, P("data"))
        self._forward = forward(gen.spec)

    def dispatch(self, x: np.ndarray) -> jax.Array:
        """Start the forward pass of ``x`` [n <= batch_size, S, S, 3]; returns without waiting."""
        pad = np.zeros((self.batch_size - len(x), *x.shape[1:]), np.float32)
        batch = jax.device_put(np.concatenate([x, pad]), self._data)
        return self._forward(self.state, batch)[0]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.dispatch(x))[: len(x)]

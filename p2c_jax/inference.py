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
from p2c_jax.nn import precision
from p2c_jax.nn.models import FACENET, NetSpec, abstract
from p2c_jax.weights.checkpoint import CheckpointError
from p2c_jax.weights.convert import load_any


def forward(spec: NetSpec, precision_name: str = "float32", plan_name: str | None = None):
    """The jitted inference pass ``(state, x) -> outputs`` of nets of ``spec``.

    Traced under the backend plan ``plan_name`` (default: the one in force) and the precision
    ``precision_name``; one per arguments, so calls never hash a net's graph. Under the CPU
    plan the net runs one image at a time, which XLA:CPU runs faster than a batch.
    """
    return _forward(spec, precision.check(precision_name), plan_name or backend.plan().name)


@functools.cache
def _forward(spec: NetSpec, precision_name: str, plan_name: str):
    plan = backend.PLANS[plan_name]
    graphdef = nnx.graphdef(abstract(spec))

    def apply(state: nnx.State, x: jax.Array):
        with backend.use_plan(plan.name), precision.use(precision_name):
            net = nnx.merge(graphdef, state)
            if not plan.map_images:
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


def load_generator(
    path: str | Path, net: str = "genA2B", precision: str = "float32"
) -> CompiledNet:
    """``gen(x [N,H,W,3] in [-1,1]) -> (image [N,H,W,3], cam_logit [N,2], heatmap [N,H/4,W/4,1])``
    from an original ``photo2cartoon_weights.pt``, our checkpoint or a training workdir;
    ``precision`` float32 or bfloat16 (``nn.precision``)."""
    spec, state = load_any(path, [net])[net]
    if spec.kind != "generator":
        raise CheckpointError(f"{path}: {net} is a {spec.kind}, not a generator")
    return CompiledNet(spec, state, precision)


def load_face_embedder(path: str | Path) -> CompiledNet:
    """``emb(x [N,112,112,3]) -> [N,512]`` (L2-normalised) from InsightFace's
    ``model_mobilefacenet.pth`` or our checkpoint holding it."""
    spec, state = load_any(path, [FACENET])[FACENET]
    return CompiledNet(spec, state)


def default_batch_size() -> int:
    """8 per accelerator; 1 per CPU device (the CPU plan maps the batch image by image anyway)."""
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
        self._forward = forward(gen.spec, gen.precision)

    def dispatch(self, x: np.ndarray) -> jax.Array:
        """Start the forward pass of ``x`` [n <= batch_size, S, S, 3]; returns without waiting."""
        pad = np.zeros((self.batch_size - len(x), *x.shape[1:]), np.float32)
        batch = jax.device_put(np.concatenate([x, pad]), self._data)
        return self._forward(self.state, batch)[0]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.dispatch(x))[: len(x)]

"""p2c-jax: photo2cartoon in JAX/Flax, faithful to the PyTorch original."""

from __future__ import annotations

import functools
from pathlib import Path

import jax
from flax import nnx

from p2c_jax.checkpoint import CheckpointError
from p2c_jax.convert import FACENET, load_any
from p2c_jax.models import NetSpec, abstract, build

__all__ = ["CheckpointError", "CompiledNet", "NetSpec", "build", "load_face_embedder",
           "load_generator"]


@functools.cache
def _forward(spec: NetSpec, per_sample: bool):
    """The jit-compiled inference pass of nets of ``spec``, ``(state, x) -> outputs``; one per
    spec, so that no call hashes the net's graph (2.5 ms a call for the generator)."""
    graphdef = nnx.graphdef(abstract(spec))

    def apply(state: nnx.State, x: jax.Array):
        net = nnx.merge(graphdef, state)
        if not per_sample:
            return net(x)
        # XLA:CPU runs these nets ~1.4x faster one image at a time than batched
        return jax.lax.map(lambda xi: jax.tree.map(lambda a: a[0], net(xi[None])), x)
    return jax.jit(apply)


class CompiledNet:
    """A net in inference mode as a function of its input, jit-compiled once per architecture
    and input shape (nets of one spec share the compiled forward pass)."""

    def __init__(self, spec: NetSpec, state: nnx.State):
        self.spec = spec
        self.state = jax.device_put(state)
        self._forward = _forward(spec, jax.default_backend() == "cpu")

    def __call__(self, x: jax.Array):
        return self._forward(self.state, x)


def load_generator(path: str | Path, net: str = "genA2B") -> CompiledNet:
    """``gen(x [N,H,W,3] in [-1,1]) -> (image [N,H,W,3], cam_logit [N,2], heatmap [N,H/4,W/4,1])``
    from an original ``photo2cartoon_weights.pt`` or our checkpoint directory."""
    spec, state = load_any(path, [net])[net]
    if spec.kind != "generator":
        raise CheckpointError(f"{path}: {net} is a {spec.kind}, not a generator")
    return CompiledNet(spec, state)


def load_face_embedder(path: str | Path) -> CompiledNet:
    """``emb(x [N,112,112,3]) -> [N,512]`` (L2-normalised) from InsightFace's
    ``model_mobilefacenet.pth`` or our checkpoint directory."""
    spec, state = load_any(path, [FACENET])[FACENET]
    return CompiledNet(spec, state)

"""p2c-jax: photo2cartoon in JAX/Flax, faithful to the PyTorch original.

The public API is loaded on first use, so ``import p2c_jax.pytorch`` (our PyTorch port) does
not import JAX, and ``import p2c_jax`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_API = {
    "CheckpointError": "p2c_jax.weights.checkpoint",
    "NetSpec": "p2c_jax.nn.models",
    "build": "p2c_jax.nn.models",
    "CompiledNet": "p2c_jax.inference",
    "load_generator": "p2c_jax.inference",
    "load_face_embedder": "p2c_jax.inference",
    "load_exported": "p2c_jax.export",
}

__all__ = [
    "CheckpointError",
    "CompiledNet",
    "NetSpec",
    "build",
    "load_exported",
    "load_face_embedder",
    "load_generator",
]

if TYPE_CHECKING:
    from p2c_jax.export import load_exported
    from p2c_jax.inference import CompiledNet, load_face_embedder, load_generator
    from p2c_jax.nn.models import NetSpec, build
    from p2c_jax.weights.checkpoint import CheckpointError


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'p2c_jax' has no attribute {name!r}")
    return getattr(importlib.import_module(_API[name]), name)

"""Numeric precision of the nets' products: ``float32`` (true float32) or ``bfloat16``.

- ``float32``: convolutions and matrix products at ``Precision.HIGHEST``; TPUs and recent GPUs
  otherwise run float32 products as bfloat16 / TF32 passes, and the parity with PyTorch
  (``--compare_torch``, the tests) relies on full float32.
- ``bfloat16``: their operands in bfloat16, accumulated and returned in float32, so the
  normalisation statistics, the rho / gamma / beta blends, logits, losses and the Face-ID
  cosine all stay float32; parameters and optimizer state are float32 too.

The policy is read while a function is traced (``use``), like ``backend.plan``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax
import jax.numpy as jnp

PRECISIONS = ("float32", "bfloat16")

_current: list[str] = []


def current() -> str:
    return _current[-1] if _current else "float32"


def check(name: str) -> str:
    """``name`` if it is a precision, else a ValueError listing them."""
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}: expected one of {', '.join(PRECISIONS)}")
    return name


@contextlib.contextmanager
def use(name: str) -> Iterator[None]:
    """Trace the nets in precision ``name`` inside the block."""
    _current.append(check(name))
    try:
        yield
    finally:
        _current.pop()


def _operands(*xs: jax.Array) -> tuple[dict, tuple[jax.Array, ...]]:
    """(keyword arguments of the product, its operands) under the current policy."""
    if current() == "bfloat16":
        kw = {"preferred_element_type": jnp.float32}
        return kw, tuple(x.astype(jnp.bfloat16) for x in xs)
    return {"precision": jax.lax.Precision.HIGHEST}, xs


def conv(
    x: jax.Array, kernel: jax.Array, stride: int = 1, padding: int = 0, groups: int = 1
) -> jax.Array:
    """NHWC x HWIO convolution with zero padding, in the current precision."""
    kw, (x, kernel) = _operands(x, kernel)
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        (stride, stride),
        [(padding, padding)] * 2,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
        **kw,
    )


def matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """``x @ w`` in the current precision."""
    kw, (x, w) = _operands(x, w)
    return jnp.matmul(x, w, **kw)

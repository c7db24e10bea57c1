"""How the nets compute their products: a static attribute of every layer that convolves or
multiplies, set when a net is built (``models.build``), as flax sets ``nnx.Conv``'s precision.

- ``precision``: ``float32`` (products at ``Precision.HIGHEST``: TPUs and recent GPUs otherwise
  run float32 products as bfloat16 / TF32 passes, and the parity with PyTorch relies on full
  float32) or ``bfloat16`` (operands in bfloat16, accumulated and returned in float32, so the
  normalisation statistics, the blends, logits, losses and the Face-ID cosine stay float32).
- ``conv_forms``: convolutions in the forms measured fastest on XLA:CPU
  (``nn.conv_forms``); XLA's plain convolution otherwise.
- ``matmul_kernel_grads``: each convolution's kernel gradient as a matrix product of input
  patches and the output's cotangent (``nn.conv_forms.conv_with_matmul_kernel_grad``): XLA:TPU
  compiles it about 2x faster than its kernel-gradient convolution, for more memory traffic
  (docs/tpu.md); ``--matmul_kernel_grads`` asks for it.

``Numerics`` is a frozen, hashable value: it is part of a net's graph definition, so nets of
different numerics are different programs, and nothing is read from global state at trace time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from p2c_jax.parallel import uses_cpu_forms

PRECISIONS = ("float32", "bfloat16")


def check_precision(name: str) -> str:
    """``name`` if it is a precision, else a ValueError listing them."""
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}: expected one of {', '.join(PRECISIONS)}")
    return name


@dataclasses.dataclass(frozen=True)
class Numerics:
    precision: str = "float32"
    conv_forms: bool = False
    matmul_kernel_grads: bool = False

    def __post_init__(self):
        check_precision(self.precision)

    @classmethod
    def for_devices(
        cls,
        devices: Sequence[jax.Device],
        precision: str = "float32",
        plan: str = "auto",
        matmul_kernel_grads: bool = False,
    ) -> Numerics:
        """The numerics of nets that run on ``devices`` (``parallel.uses_cpu_forms``), with
        ``matmul_kernel_grads`` where they take XLA's convolutions (the CPU forms have theirs)."""
        cpu = uses_cpu_forms(devices, plan)
        return cls(precision, conv_forms=cpu, matmul_kernel_grads=matmul_kernel_grads and not cpu)

    def _operands(self, *xs: jax.Array) -> tuple[dict, tuple[jax.Array, ...]]:
        """(keyword arguments of the product, its operands) in this precision."""
        if self.precision == "bfloat16":
            kw = {"preferred_element_type": jnp.float32}
            return kw, tuple(x.astype(jnp.bfloat16) for x in xs)
        return {"precision": jax.lax.Precision.HIGHEST}, xs

    def conv(
        self,
        x: jax.Array,
        kernel: jax.Array,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
    ) -> jax.Array:
        """NHWC x HWIO convolution with zero padding: XLA's plain form."""
        kw, (x, kernel) = self._operands(x, kernel)
        return jax.lax.conv_general_dilated(
            x,
            kernel,
            (stride, stride),
            [(padding, padding)] * 2,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=groups,
            **kw,
        )

    def matmul(self, x: jax.Array, w: jax.Array) -> jax.Array:
        """``x @ w`` in this precision."""
        kw, (x, w) = self._operands(x, w)
        return jnp.matmul(x, w, **kw)


FLOAT32 = Numerics()  # full float32 products, XLA's plain convolutions: the default

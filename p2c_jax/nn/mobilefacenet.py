"""MobileFaceNet (InsightFace's, as bundled with photo2cartoon) in inference mode, NHWC."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from p2c_jax.nn.layers import BatchNorm, Conv2d, Linear, PReLU, Sequential


class Linear_block(nnx.Module):  # noqa: N801 - the original's names, so paths match
    """conv -> BatchNorm."""

    def __init__(
        self,
        in_c: int,
        out_c: int,
        kernel: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        *,
        rngs: nnx.Rngs,
    ):
        self.conv = Conv2d(
            in_c,
            out_c,
            kernel,
            stride=stride,
            padding=padding,
            groups=groups,
            bias=False,
            rngs=rngs,
        )
        self.bn = BatchNorm(out_c)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.bn(self.conv(x))


class Conv_block(Linear_block):  # noqa: N801
    """conv -> BatchNorm -> PReLU."""

    def __init__(
        self,
        in_c: int,
        out_c: int,
        kernel: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        *,
        rngs: nnx.Rngs,
    ):
        super().__init__(in_c, out_c, kernel, stride, padding, groups, rngs=rngs)
        self.prelu = PReLU(out_c)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.prelu(super().__call__(x))


class Depth_Wise(nnx.Module):  # noqa: N801
    """1x1 expand to ``groups`` channels, depthwise 3x3, 1x1 project; optional residual."""

    def __init__(
        self,
        in_c: int,
        out_c: int,
        residual: bool = False,
        stride: int = 2,
        groups: int = 1,
        *,
        rngs: nnx.Rngs,
    ):
        self.conv = Conv_block(in_c, groups, rngs=rngs)
        self.conv_dw = Conv_block(groups, groups, 3, stride, 1, groups=groups, rngs=rngs)
        self.project = Linear_block(groups, out_c, rngs=rngs)
        self.residual = residual

    def __call__(self, x: jax.Array) -> jax.Array:
        out = self.project(self.conv_dw(self.conv(x)))
        return x + out if self.residual else out


class Residual(nnx.Module):
    """``num_block`` residual Depth_Wise blocks in ``model``."""

    def __init__(self, c: int, num_block: int, groups: int, *, rngs: nnx.Rngs):
        self.model = Sequential(
            [
                Depth_Wise(c, c, residual=True, stride=1, groups=groups, rngs=rngs)
                for _ in range(num_block)
            ]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.model(x)


class MobileFaceNet(nnx.Module):
    """``MobileFaceNet(embedding_size)``: ``[N,112,112,3] -> [N,embedding_size]``, L2-normalised."""

    def __init__(self, embedding_size: int = 512, *, rngs: nnx.Rngs):
        self.conv1 = Conv_block(3, 64, 3, 2, 1, rngs=rngs)
        self.conv2_dw = Conv_block(64, 64, 3, 1, 1, groups=64, rngs=rngs)
        self.conv_23 = Depth_Wise(64, 64, groups=128, rngs=rngs)
        self.conv_3 = Residual(64, 4, 128, rngs=rngs)
        self.conv_34 = Depth_Wise(64, 128, groups=256, rngs=rngs)
        self.conv_4 = Residual(128, 6, 256, rngs=rngs)
        self.conv_45 = Depth_Wise(128, 128, groups=512, rngs=rngs)
        self.conv_5 = Residual(128, 2, 256, rngs=rngs)
        self.conv_6_sep = Conv_block(128, 512, rngs=rngs)
        self.conv_6_dw = Linear_block(512, 512, 7, groups=512, rngs=rngs)
        self.linear = Linear(512, embedding_size, bias=False, rngs=rngs)
        self.bn = BatchNorm(embedding_size)

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in (
            self.conv1,
            self.conv2_dw,
            self.conv_23,
            self.conv_3,
            self.conv_34,
            self.conv_4,
            self.conv_45,
            self.conv_5,
            self.conv_6_sep,
            self.conv_6_dw,
        ):
            x = layer(x)
        out = self.bn(self.linear(x.reshape(x.shape[0], -1)))
        return out / jnp.linalg.norm(out, axis=-1, keepdims=True)

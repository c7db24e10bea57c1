"""U-GAT-IT's spectral-normalised PatchGAN discriminator with a CAM head."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from p2c_jax.nn.generator import cam_weighted
from p2c_jax.nn.layers import Conv2d, Sequential, SNConv2d, SNLinear, leaky_relu, reflection_pad


class Discriminator(nnx.Module):
    """``networks.Discriminator(input_nc=3, ndf, n_layers)``, NHWC.

    ``__call__(x, update_stats=False) -> (logit [N,h,w,1], cam_logit [N,2], heatmap [N,h,w,1])``.
    ``update_stats=True`` is torch's training mode: every spectral-normalised layer runs one
    power iteration and stores the new ``weight_u``/``weight_v``; otherwise they are used as
    stored (torch's eval mode).
    """

    def __init__(self, ndf: int = 64, n_layers: int = 5, input_nc: int = 3, *, rngs: nnx.Rngs):
        layers: list = [
            reflection_pad(1),
            SNConv2d(input_nc, ndf, 4, stride=2, rngs=rngs),
            leaky_relu,
        ]
        for i in range(1, n_layers - 2):
            mult = 2 ** (i - 1)
            layers += [
                reflection_pad(1),
                SNConv2d(ndf * mult, ndf * mult * 2, 4, stride=2, rngs=rngs),
                leaky_relu,
            ]
        mult = 2 ** (n_layers - 3)
        layers += [
            reflection_pad(1),
            SNConv2d(ndf * mult, ndf * mult * 2, 4, rngs=rngs),
            leaky_relu,
        ]
        c = ndf * 2 ** (n_layers - 2)
        self.gap_fc = SNLinear(c, 1, rngs=rngs)
        self.gmp_fc = SNLinear(c, 1, rngs=rngs)
        self.conv1x1 = Conv2d(2 * c, c, 1, rngs=rngs)
        self.conv = SNConv2d(c, 1, 4, bias=False, rngs=rngs)
        self.model = Sequential(layers)

    def __call__(
        self, x: jax.Array, update_stats: bool = False
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        for layer in self.model:
            x = layer(x, update_stats) if isinstance(layer, SNConv2d) else layer(x)
        cam_logit = jnp.concatenate(
            [
                self.gap_fc(x.mean(axis=(1, 2)), update_stats),
                self.gmp_fc(x.max(axis=(1, 2)), update_stats),
            ],
            axis=-1,
        )
        # As in the original, the CAM weighting uses the raw weight_orig, not the normalised one.
        x = leaky_relu(
            self.conv1x1(
                cam_weighted(x, self.gap_fc.weight_orig[...], self.gmp_fc.weight_orig[...])
            )
        )
        heatmap = x.sum(axis=-1, keepdims=True)
        return self.conv(reflection_pad(1)(x), update_stats), cam_logit, heatmap

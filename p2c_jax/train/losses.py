"""The original trainer's losses (torch's ``MSELoss``, ``L1Loss``, ``BCEWithLogitsLoss``, all
with mean reduction) and its discriminator / generator objectives."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def mse(x: jax.Array, target: float) -> jax.Array:
    """``MSELoss(x, full_like(x, target))``."""
    return jnp.mean(jnp.square(x - target))


def l1(x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean(jnp.abs(x - y))


def bce_with_logits(x: jax.Array, target: float) -> jax.Array:
    """``BCEWithLogitsLoss(x, full_like(x, target))``, torch's stable form."""
    return jnp.mean(jnp.maximum(x, 0.0) - x * target + jnp.log1p(jnp.exp(-jnp.abs(x))))


def lsgan_d(real: tuple[jax.Array, jax.Array], fake: tuple[jax.Array, jax.Array]) -> jax.Array:
    """One discriminator's least-squares loss on (logit, cam_logit) of real and fake:
    ``mse(real, 1) + mse(fake, 0)`` for the logits plus the same for the CAM logits."""
    return (mse(real[0], 1.0) + mse(fake[0], 0.0)) + (mse(real[1], 1.0) + mse(fake[1], 0.0))


def lsgan_g(fake: tuple[jax.Array, jax.Array]) -> jax.Array:
    """The generator's side against one discriminator: ``mse(logit, 1) + mse(cam_logit, 1)``."""
    return mse(fake[0], 1.0) + mse(fake[1], 1.0)

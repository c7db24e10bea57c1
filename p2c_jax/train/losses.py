"""Every loss term of the original trainer: torch's ``MSELoss``, ``L1Loss``,
``BCEWithLogitsLoss`` (all with mean reduction), the least-squares GAN objectives, Face-ID, and
the discriminators' and generators' losses as the step computes them. Losses are means over the
global batch: gradients of replicated parameters are those of the global mean."""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from p2c_jax.nn.face_id import cosine_similarity
from p2c_jax.nn.models import DISCRIMINATORS
from p2c_jax.train.config import Hparams

if TYPE_CHECKING:
    from p2c_jax.train.state import TrainModel


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


G_TERMS = ("adv", "cycle", "identity", "cam", "faceid")  # the G loss's terms, as metrics g_*


def weighted(hp: Hparams, terms: dict[str, jax.Array]) -> jax.Array:
    """Sum of G loss terms, each times its flag (``cycle`` times ``hp.cycle_weight`` ...)."""
    return sum(getattr(hp, f"{k}_weight") * v for k, v in terms.items())


def discriminator_loss(model: TrainModel, hp: Hparams, dis, spectral, real_A, real_B, fakes):
    """(Discriminator_loss, (terms, new spectral states)) with ``fakes`` = (A2B, B2A). Each
    discriminator scores the real image, then the fake, as in the original (disGA(real_A) ...
    disLB(fake_A2B)); each call runs one power iteration."""
    A2B, B2A = fakes
    outs, new_spectral = {}, {}
    for name in DISCRIMINATORS:
        images = [real_A, B2A] if name.endswith("A") else [real_B, A2B]
        outs[name], new_spectral[name] = model.discriminate(name, dis[name], spectral[name], images)
    loss_A = hp.adv_weight * (lsgan_d(*outs["disGA"]) + lsgan_d(*outs["disLA"]))
    loss_B = hp.adv_weight * (lsgan_d(*outs["disGB"]) + lsgan_d(*outs["disLB"]))
    return loss_A + loss_B, ({"d_loss_A": loss_A, "d_loss_B": loss_B}, new_spectral)


def face_id(model: TrainModel, hp: Hparams, face_state, real, fake) -> jax.Array:
    """mean(1 - cosine) of the Face-ID embeddings of ``real`` and ``fake``; 0 when off."""
    if not hp.faceid_weight or model.face is None:
        return jnp.zeros((), jnp.float32)
    emb = model.embed(face_state, jnp.concatenate([real, fake], axis=0))
    n = real.shape[0]
    return jnp.mean(1.0 - cosine_similarity(emb[:n], emb[n:]))


# The translations' side of the G loss. Each translated image ``fake`` (with its CAM logit) is
# judged by its domain's global and local discriminators (adversarial), its CAM logit is pushed
# to 1, and its Face-ID is compared with the real image's. The terms that follow a second
# generator call (the cycle L1, the identity L1 and CAM) are ``generator_call_loss``'s.
TRANSLATIONS = (("A2B", ("disGB", "disLB")), ("B2A", ("disGA", "disLA")))


def translation_loss(model: TrainModel, hp: Hparams, dis, spectral, face_state, reals, fakes):
    """(weighted sum, (terms, new spectral states of the four judges)) with ``reals`` = (A, B)
    and ``fakes`` = ((A2B, cam_A2B), (B2A, cam_B2A))."""
    terms, new_spectral = {"adv": 0.0, "cam": 0.0, "faceid": 0.0}, {}
    for real, (fake, cam), (_, judges) in zip(reals, fakes, TRANSLATIONS):
        for name in judges:
            (out,), new_spectral[name] = model.discriminate(name, dis[name], spectral[name], [fake])
            terms["adv"] = terms["adv"] + lsgan_g(out)
        terms["cam"] = terms["cam"] + bce_with_logits(cam, 1.0)
        terms["faceid"] = terms["faceid"] + face_id(model, hp, face_state, real, fake)
    return weighted(hp, terms), (terms, new_spectral)


def generator_call_loss(y, cam, target, l1_weight, cam_weight) -> tuple[jax.Array, tuple]:
    """The G loss of one later generator call: ``l1_weight * L1(y, target) + cam_weight *
    BCE(cam, 0)``; a cycle (the weights of the cycle loss and 0) or an identity call (of the
    identity and the CAM losses). Returns (loss, (L1, BCE))."""
    l1_value, bce_value = l1(y, target), bce_with_logits(cam, 0.0)
    return l1_weight * l1_value + cam_weight * bce_value, (l1_value, bce_value)

"""One training step of photo2cartoon, the original trainer's semantics, over every device.

``TrainStep`` is the step's one body: a function of (train state, frozen face-ID state, global
batch of A, of B) written as a sequence of stages, each a pure function of global arrays.
``train.partition`` runs the body as one compiled program (fused) or each stage as its own
(staged); XLA partitions either over the mesh: parameters replicated, the batch split on the
``data`` axis, gradients of the global batch mean summed across devices and hosts.

Semantics of the original ``UgatitSadalinHourglass.train`` step, in its order:

1. D update: both generators translate (A2B, B2A); the four discriminators score real and
   fake images in the original's call order (each call in training mode runs one power
   iteration of every spectral norm); least-squares losses of logits and CAM logits.
   Adam(0.5, 0.999) with torch's L2 weight decay 1e-4 added to the gradient.
2. G update against the updated discriminators (their calls run power iterations too):
   adv + cycle L1 + identity L1 + CAM BCE + Face-ID, each with its weight.
3. rho of adaLIN / LIN clipped to [0, rho_clipper], w_gamma / w_beta to [0, w_clipper].

The translations of step 1 equal those of step 2 (G has not changed in between), so they run
once, through ``jax.vjp``, and both updates use them. The G loss splits into the translations'
side (``losses.translation_loss``: discriminators, CAM, Face-ID) and four later generator
calls (each translation's cycle and each generator's identity call), whose losses depend on
their own output only (``losses.generator_call_loss``). Those four run as one ``lax.map``,
forward and backward inside each iteration, so at most one of them holds its activations at a
time, and the program holds the generator twice (translations and later calls), not six times.
Between forward and backward passes the generators keep only their convolutions' outputs and
recompute the rest; with ``remat`` nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from p2c_jax.nn.layers import CONV_OUTPUT
from p2c_jax.train import losses
from p2c_jax.train.config import Hparams
from p2c_jax.train.state import TrainModel, Tree, key_names, optimizer

# stage name -> the arguments it donates when it runs as a program of its own
STAGES = {
    "translate": (),
    "update_discriminators": (0, 1, 2),
    "translation_losses": (),
    "generator_calls": (),
    "translate_backward": (),
    "update_generators": (0, 1),
}


def learning_rate(hp: Hparams, step) -> jax.Array:
    """lr of step ``step`` (1-based), as the original's in-place decrement leaves it: constant
    for the first ``iteration // 2`` steps, then minus ``lr / (iteration // 2)`` per step."""
    half = hp.iteration // 2
    if not hp.decay_flag or half == 0:
        return jnp.asarray(hp.lr)
    return hp.lr - (hp.lr / half) * jnp.maximum(jnp.asarray(step) - half, 0)


def _clip(gen: Tree, hp: Hparams) -> Tree:
    def clip(kp, x):
        leaf = key_names(kp)[-1]
        if leaf == "rho":
            return jnp.clip(x, 0.0, hp.rho_clipper)
        if leaf in ("w_gamma", "w_beta"):
            return jnp.clip(x, 0.0, hp.w_clipper)
        return x

    return jax.tree_util.tree_map_with_path(clip, gen)


def _apply(tx, grads, opt_state, params, lr):
    updates, opt_state = tx.update(grads, opt_state, params)
    return jax.tree.map(lambda p, u: p - lr * u, params, updates), opt_state


def _stack(trees: list) -> Tree:
    return jax.tree.map(lambda *a: jnp.stack(a), *trees)


def _add(*trees: Tree) -> Tree:
    return jax.tree.map(lambda *a: sum(a), *trees)


class TrainStep:
    """The step's stages and its body. ``__call__(stage, ...)`` runs the body, taking each
    stage ``name`` (a key of ``STAGES``, a method of this class) as ``stage(name)``.

    Both generators share one spec (their calls run as one mapped function). With
    ``with_grads`` the metrics also hold the raw gradients of the global batch mean
    (``grads['dis']``, ``grads['gen']``), before weight decay and Adam.
    """

    def __init__(
        self, model: TrainModel, hp: Hparams, *, remat: bool = False, with_grads: bool = False
    ):
        if model.specs["genA2B"] != model.specs["genB2A"]:
            raise ValueError("the step runs both generators as one function: they need one spec")
        self.model, self.hp, self.with_grads = model, hp, with_grads
        policy = None if remat else jax.checkpoint_policies.save_only_these_names(CONV_OUTPUT)
        self._generator = jax.checkpoint(
            functools.partial(model.generator, "genA2B"), policy=policy
        )

    # --- the stages ---------------------------------------------------------------------------

    def translate(self, gen: Tree, real_A: jax.Array, real_B: jax.Array):
        """((A2B, cam_A2B), (B2A, cam_B2A)) and their pullback to both generators' params."""

        def both(gen_A2B, gen_B2A):
            params, x = _stack([gen_A2B, gen_B2A]), jnp.stack([real_A, real_B])
            ys, cams = jax.lax.map(lambda px: self._generator(*px), (params, x))
            return (ys[0], cams[0]), (ys[1], cams[1])

        return jax.vjp(both, gen["genA2B"], gen["genB2A"])

    def update_discriminators(self, dis, spectral, opt_d, step, real_A, real_B, fakes):
        """The D update on ``fakes`` = ((A2B, cam), (B2A, cam)): (dis, spectral, opt_d,
        metrics, raw gradients)."""
        images = (fakes[0][0], fakes[1][0])

        def objective(dis, spectral):
            return losses.discriminator_loss(
                self.model, self.hp, dis, spectral, real_A, real_B, images
            )

        (loss, (terms, spectral)), grads = jax.value_and_grad(objective, has_aux=True)(
            dis, spectral
        )
        lr = learning_rate(self.hp, step + 1)
        dis, opt_d = _apply(optimizer(self.hp), grads, opt_d, dis, lr)
        return dis, spectral, opt_d, {"d_loss": loss, **terms}, grads

    def translation_losses(self, dis, spectral, face_state, real_A, real_B, fakes):
        """``losses.translation_loss`` of ``fakes``: (its terms, its cotangents of ``fakes``,
        the judges' new spectral states)."""

        def objective(fakes):
            return losses.translation_loss(
                self.model, self.hp, dis, spectral, face_state, (real_A, real_B), fakes
            )

        (_, (terms, judged)), ct_fakes = jax.value_and_grad(objective, has_aux=True)(fakes)
        return terms, ct_fakes, judged

    def generator_calls(self, gen: Tree, real_A, real_B, fakes):
        """The four later generator calls (cycles of A2B and B2A, identity calls on A and B),
        forward and backward one after the other: (their terms, the gradients of each
        generator's params, the cotangents of A2B and B2A)."""
        hp, (A2B, _), (B2A, _) = self.hp, *fakes
        g_A2B, g_B2A = gen["genA2B"], gen["genB2A"]
        calls = {  # (params, input, target, L1 weight, CAM weight)
            "cycle_A": (g_B2A, A2B, real_A, hp.cycle_weight, 0.0),
            "cycle_B": (g_A2B, B2A, real_B, hp.cycle_weight, 0.0),
            "identity_A": (g_B2A, real_A, real_A, hp.identity_weight, hp.cam_weight),
            "identity_B": (g_A2B, real_B, real_B, hp.identity_weight, hp.cam_weight),
        }

        def one(call):
            params, x, target, l1_weight, cam_weight = call

            def objective(params, x):
                y, cam = self._generator(params, x)
                return losses.generator_call_loss(y, cam, target, l1_weight, cam_weight)

            (_, terms), grads = jax.value_and_grad(objective, (0, 1), has_aux=True)(params, x)
            return terms, grads

        stacked = tuple(_stack(list(c)) for c in zip(*calls.values()))
        (l1, bce), (grads, ct_x) = jax.lax.map(one, stacked)
        terms = {
            "cycle": l1[0] + l1[1],
            "identity": l1[2] + l1[3],
            "cam": bce[2] + bce[3],
        }

        def call(i: int) -> Tree:
            return jax.tree.map(lambda g: g[i], grads)

        grads = {"genB2A": _add(call(0), call(2)), "genA2B": _add(call(1), call(3))}
        return terms, grads, (ct_x[0], ct_x[1])

    def translate_backward(self, pullback, ct_fakes, ct_cycles):
        """Both generators' gradients through the translations, from the cotangents of the
        translation losses (``ct_fakes``) plus those of the cycles' inputs (``ct_cycles``)."""
        (ct_A2B, ct_cam_A2B), (ct_B2A, ct_cam_B2A) = ct_fakes
        g_A2B, g_B2A = pullback(
            ((ct_A2B + ct_cycles[0], ct_cam_A2B), (ct_B2A + ct_cycles[1], ct_cam_B2A))
        )
        return {"genA2B": g_A2B, "genB2A": g_B2A}

    def update_generators(self, gen, opt_g, step, grads: list, terms: list):
        """Masked Adam on the summed gradients and the clippers: (gen, opt_g, step, metrics,
        raw gradients); the G loss and its terms summed over ``terms``."""
        grads = _add(*grads)
        lr = learning_rate(self.hp, step + 1)
        tx = optax.masked(optimizer(self.hp), self.model.gen_mask)
        gen, opt_g = _apply(tx, grads, opt_g, gen, lr)
        parts = {k: sum(t[k] for t in terms if k in t) for k in losses.G_TERMS}
        metrics = {
            "g_loss": losses.weighted(self.hp, parts),
            **{f"g_{k}": v for k, v in parts.items()},
            "lr": lr,
        }
        return _clip(gen, self.hp), opt_g, step + 1, metrics, grads

    # --- the body -------------------------------------------------------------------------------

    def __call__(self, stage: Callable[[str], Callable], state: Tree, face_state, real_A, real_B):
        gen = state["gen"]
        fakes, pullback = stage("translate")(gen, real_A, real_B)
        dis, spectral, opt_d, d_metrics, d_grads = stage("update_discriminators")(
            state["dis"], state["spectral"], state["opt_d"], state["step"], real_A, real_B, fakes
        )
        t_terms, ct_fakes, judged = stage("translation_losses")(
            dis, spectral, face_state, real_A, real_B, fakes
        )
        c_terms, c_grads, ct_cycles = stage("generator_calls")(gen, real_A, real_B, fakes)
        t_grads = stage("translate_backward")(pullback, ct_fakes, ct_cycles)
        del pullback  # frees the translations' residuals before the update
        gen, opt_g, step, g_metrics, g_grads = stage("update_generators")(
            gen, state["opt_g"], state["step"], [t_grads, c_grads], [t_terms, c_terms]
        )
        new_state = {
            "step": step,
            "gen": gen,
            "dis": dis,
            "spectral": {**spectral, **judged},
            "opt_g": opt_g,
            "opt_d": opt_d,
        }
        metrics = {**d_metrics, **g_metrics}
        if self.with_grads:
            metrics["grads"] = {"dis": d_grads, "gen": g_grads}
        return new_state, metrics

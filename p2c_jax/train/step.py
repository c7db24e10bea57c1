"""One training step of photo2cartoon, the original trainer's semantics, over every device.

``TrainStep`` is the step's one body: a function of (train state, frozen face-ID state, global
batch of A, of B) written as a sequence of stages, each a pure function of global arrays.
``train.partition`` runs the body as one compiled program (fused) or each stage as its own
(staged), parameters replicated and the batch split on the mesh's ``data`` axis: staged, XLA
partitions each stage of global arrays; fused, the body runs per device (``per_device``) and
each update takes the mean over devices of its gradients and metrics once.

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
their own output only (``losses.generator_call_loss``): each call runs forward and backward
before the next, so at most one of them holds its activations at a time. The translations and
the later calls are call stages, run once per call as the partition chooses (``Runner``).
Between forward and backward passes the generators keep only their convolutions' outputs and
recompute the rest; with ``remat`` nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Protocol

import jax
import jax.numpy as jnp
import optax

from p2c_jax.nn.layers import CONV_OUTPUT
from p2c_jax.train import losses
from p2c_jax.train.config import Hparams
from p2c_jax.train.state import TrainModel, Tree, key_names, optimizer

# stage name -> the arguments it donates when it runs as a program of its own
STAGES = {
    "update_discriminators": (0, 1, 2),
    "translation_losses": (),
    "update_generators": (0, 1),
}
# the stage of one generator call, and the loss of one call's output (``Runner``)
CALL_STAGES = ("translate",)
CALL_LOSSES = ("call_loss",)


class Runner(Protocol):
    """How a partition runs the body's stages. ``stage(name)``: the stage as a function.
    ``each_vjp(name, items)``: the call stage once per item (a tuple of its arguments), a list
    of outputs, and their pullback (from the list of output cotangents to the list of each
    item's argument cotangents). ``each_grad(name, loss, items)``: per item (call arguments,
    loss arguments), the gradient of ``loss(call output, *loss arguments)``: a list of (the
    loss's terms, argument cotangents), one call's forward and backward before the next."""

    def stage(self, name: str) -> Callable: ...

    def each_vjp(self, name: str, items: list[tuple]) -> tuple[list, Callable[[list], list]]: ...

    def each_grad(self, name: str, loss: str, items: list[tuple[tuple, tuple]]) -> list: ...


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


def _summed(trees: list[Tree]) -> Tree:
    return jax.tree.map(lambda *a: sum(a), *trees)


class TrainStep:
    """The step's stages and its body. ``__call__(run, ...)`` runs the body, each stage through
    the partition's ``Runner``. Stages are methods of this class: those of ``STAGES`` take
    global arrays of the whole step, those of ``CALL_STAGES`` one generator call.

    Both generators share one spec (their calls run as one function). With ``with_grads`` the
    metrics also hold the raw gradients of the global batch mean (``grads['dis']``,
    ``grads['gen']``), before weight decay and Adam. Steps of equal model, hyper-parameters and
    options compute the same stages, so they compare equal: a static argument of ``jax.jit``.
    """

    def __init__(
        self,
        model: TrainModel,
        hp: Hparams,
        *,
        remat: bool = False,
        with_grads: bool = False,
        device_axis: str | None = None,
    ):
        if model.specs["genA2B"] != model.specs["genB2A"]:
            raise ValueError("the step runs both generators as one function: they need one spec")
        self.model, self.hp, self.with_grads = model, hp, with_grads
        self.remat, self.device_axis = remat, device_axis
        self._key = (model, hp, remat, with_grads, device_axis)
        policy = None if remat else jax.checkpoint_policies.save_only_these_names(CONV_OUTPUT)
        self._generator = jax.checkpoint(
            functools.partial(model.generator, "genA2B"), policy=policy
        )

    def per_device(self, axis: str) -> TrainStep:
        """This step as each device's share of it, inside ``shard_map`` over mesh axis ``axis``:
        every stage sees the device's slice of the batch, and each update takes the mean over
        devices of its gradients and metrics, once (the global batch mean's)."""
        return TrainStep(
            self.model, self.hp, remat=self.remat, with_grads=self.with_grads, device_axis=axis
        )

    def _over_devices(self, tree: Tree) -> Tree:
        """The mean over devices of per-device means (the global batch mean's), per device."""
        return tree if self.device_axis is None else jax.lax.pmean(tree, self.device_axis)

    def __eq__(self, other) -> bool:
        return isinstance(other, TrainStep) and self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    # --- the stages ---------------------------------------------------------------------------

    def translate(self, params: Tree, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """One translation: (image, CAM logits). Its vjp residuals are the convolutions'
        outputs (all of them recomputed with ``remat``)."""
        return self._generator(params, x)

    def update_discriminators(self, dis, spectral, opt_d, lr, real_A, real_B, fakes):
        """The D update at learning rate ``lr`` on ``fakes`` = ((A2B, cam), (B2A, cam)): (dis,
        spectral, opt_d, metrics, raw gradients or, without ``with_grads``, None: a program's
        output lives until the step ends, through the G update's peak)."""
        images = (fakes[0][0], fakes[1][0])

        def objective(dis, spectral):
            return losses.discriminator_loss(
                self.model, self.hp, dis, spectral, real_A, real_B, images
            )

        (loss, (terms, spectral)), grads = jax.value_and_grad(objective, has_aux=True)(
            dis, spectral
        )
        loss, terms, grads = self._over_devices((loss, terms, grads))
        dis, opt_d = _apply(optimizer(self.hp), grads, opt_d, dis, lr)
        return dis, spectral, opt_d, {"d_loss": loss, **terms}, self._if_asked(grads)

    def translation_losses(self, dis, spectral, face_state, real_A, real_B, fakes):
        """``losses.translation_loss`` of ``fakes``: (its terms, its cotangents of ``fakes``,
        the judges' new spectral states)."""

        def objective(fakes):
            return losses.translation_loss(
                self.model, self.hp, dis, spectral, face_state, (real_A, real_B), fakes
            )

        (_, (terms, judged)), ct_fakes = jax.value_and_grad(objective, has_aux=True)(fakes)
        return terms, ct_fakes, judged

    def call_loss(self, out: tuple[jax.Array, jax.Array], target, l1_weight, cam_weight):
        """``losses.generator_call_loss`` of a later generator call's output ``out`` (a cycle
        or an identity call): (loss, (L1, CAM BCE))."""
        return losses.generator_call_loss(*out, target, l1_weight, cam_weight)

    def update_generators(self, gen, opt_g, step, lr, grads: dict[str, list], terms: list[dict]):
        """Masked Adam at learning rate ``lr`` on each generator's summed ``grads`` and the
        clippers: (gen, opt_g, step + 1, metrics, raw gradients or None, as the D update's);
        each G loss term summed over ``terms``."""
        grads = {name: _summed(parts) for name, parts in grads.items()}
        parts = {k: sum(t[k] for t in terms if k in t) for k in losses.G_TERMS}
        grads, parts = self._over_devices((grads, parts))
        tx = optax.masked(optimizer(self.hp), self.model.gen_mask)
        gen, opt_g = _apply(tx, grads, opt_g, gen, lr)
        metrics = {
            "g_loss": losses.weighted(self.hp, parts),
            **{f"g_{k}": v for k, v in parts.items()},
            "lr": lr,
        }
        return _clip(gen, self.hp), opt_g, step + 1, metrics, self._if_asked(grads)

    def _if_asked(self, grads: Tree) -> Tree | None:
        return grads if self.with_grads else None

    # --- the body -------------------------------------------------------------------------------

    def __call__(self, run: Runner, state: Tree, face_state, real_A, real_B):
        gen, hp = state["gen"], self.hp
        # an input of the updates, not a constant of their programs: runs of other schedules
        # (--iteration, --lr) share them
        lr = learning_rate(hp, state["step"] + 1)
        g_A2B, g_B2A = gen["genA2B"], gen["genB2A"]
        fakes, pullback = run.each_vjp("translate", [(g_A2B, real_A), (g_B2A, real_B)])
        (A2B, _), (B2A, _) = fakes
        dis, spectral, opt_d, d_metrics, d_grads = run.stage("update_discriminators")(
            state["dis"], state["spectral"], state["opt_d"], lr, real_A, real_B, fakes
        )
        t_terms, ct_fakes, judged = run.stage("translation_losses")(
            dis, spectral, face_state, real_A, real_B, fakes
        )
        # per call: ((L1, CAM BCE), (gradient of its params, cotangent of its input))
        cycle_A, cycle_B, identity_A, identity_B = run.each_grad(
            "translate",
            "call_loss",
            [
                ((g_B2A, A2B), (real_A, hp.cycle_weight, 0.0)),
                ((g_A2B, B2A), (real_B, hp.cycle_weight, 0.0)),
                ((g_B2A, real_A), (real_A, hp.identity_weight, hp.cam_weight)),
                ((g_A2B, real_B), (real_B, hp.identity_weight, hp.cam_weight)),
            ],
        )
        ((l1_cycle_A, _), (grad_cycle_A, ct_cycle_A)) = cycle_A
        ((l1_cycle_B, _), (grad_cycle_B, ct_cycle_B)) = cycle_B
        ((l1_identity_A, cam_A), (grad_identity_A, _)) = identity_A
        ((l1_identity_B, cam_B), (grad_identity_B, _)) = identity_B
        (ct_A2B, ct_cam_A2B), (ct_B2A, ct_cam_B2A) = ct_fakes
        (back_A2B, _), (back_B2A, _) = pullback(
            [(ct_A2B + ct_cycle_A, ct_cam_A2B), (ct_B2A + ct_cycle_B, ct_cam_B2A)]
        )
        del pullback  # frees the translations' residuals before the update
        grads = {
            "genA2B": [back_A2B, grad_cycle_B, grad_identity_B],
            "genB2A": [back_B2A, grad_cycle_A, grad_identity_A],
        }
        terms = [
            t_terms,
            {"cycle": l1_cycle_A},
            {"cycle": l1_cycle_B},
            {"identity": l1_identity_A, "cam": cam_A},
            {"identity": l1_identity_B, "cam": cam_B},
        ]
        gen, opt_g, step, g_metrics, g_grads = run.stage("update_generators")(
            gen, state["opt_g"], state["step"], lr, grads, terms
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

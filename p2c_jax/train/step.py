"""One training step of photo2cartoon, the original trainer's semantics, over every device.

The state is a plain pytree (pure dicts of arrays, big_vision style)::

    {"step": int32 (completed steps),
     "gen": {genA2B, genB2A: params}, "dis": {disGA, disGB, disLA, disLB: params},
     "spectral": {disGA, ...: weight_u / weight_v}, "opt_g": ..., "opt_d": ...}

and the step (``make_step``) is a function of (state, frozen face-ID state, global batch of A,
of B) over the mesh axis ``data``: params replicated, the batch split over devices, gradients
summed across devices and hosts, the state donated. Under the accelerator plan it is one
program (``FusedStep``); under the CPU plan several, each a ``jax.shard_map`` (``SplitStep``).

Semantics of the original ``UgatitSadalinHourglass.train`` step, in its order:

1. D update: both generators translate (A2B, B2A); the four discriminators score real and
   fake images in the original's call order (each call in training mode runs one power
   iteration of every spectral norm); least-squares losses of logits and CAM logits.
   Adam(0.5, 0.999) with torch's L2 weight decay 1e-4 added to the gradient.
2. G update against the updated discriminators (their calls run power iterations too):
   adv + cycle L1 + identity L1 + CAM BCE + Face-ID, each with its weight. It is a sum of
   four independent parts (each translation with its cycle, each identity call), computed
   one after the other; each discriminator is called once, so their order is free.
3. rho of adaLIN / LIN clipped to [0, rho_clipper], w_gamma / w_beta to [0, w_clipper].

The generator outputs of step 1 equal those of step 2 (G has not changed in between), so the
generators run once, through ``jax.vjp``, and both updates use those outputs.
Parameters that receive no gradient in the original (the ``ConvBlock4`` of every ConvBlock whose
width does not change) are left to Adam's ``grad is None`` rule: not updated, not decayed.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from p2c_jax import backend
from p2c_jax.nn import precision
from p2c_jax.nn.generator import ConvBlock
from p2c_jax.nn.layers import CONV_OUTPUT, SpectralState
from p2c_jax.nn.models import DISCRIMINATORS, GENERATORS, NetSpec, abstract, build
from p2c_jax.train import losses
from p2c_jax.train.config import Hparams
from p2c_jax.nn.face_id import FaceID, cosine_similarity

AXIS = "data"
Tree = dict


def learning_rate(hp: Hparams, step) -> jax.Array:
    """lr of step ``step`` (1-based), as the original's in-place decrement leaves it: constant
    for the first ``iteration // 2`` steps, then minus ``lr / (iteration // 2)`` per step."""
    half = hp.iteration // 2
    if not hp.decay_flag or half == 0:
        return jnp.asarray(hp.lr)
    return hp.lr - (hp.lr / half) * jnp.maximum(jnp.asarray(step) - half, 0)


def optimizer(hp: Hparams) -> optax.GradientTransformation:
    """torch.optim.Adam(betas, weight_decay) without the learning rate (applied per step)."""
    return optax.chain(
        optax.add_decayed_weights(hp.weight_decay),
        optax.scale_by_adam(b1=hp.beta1, b2=hp.beta2, eps=hp.eps),
    )


# --- the nets as pure functions ---------------------------------------------------------------


def _trainable_mask(spec: NetSpec) -> Tree:
    """Params tree of bools: False where the original gets no gradient (Adam skips them)."""
    module = abstract(spec)
    unused = [
        (*path, "ConvBlock4")
        for path, node in nnx.iter_graph(module)
        if isinstance(node, ConvBlock) and node.ConvBlock4[-1].weight.shape[2] == node.dim_out
    ]
    params = nnx.to_pure_dict(nnx.state(module, nnx.Param))
    return jax.tree_util.tree_map_with_path(
        lambda kp, _: not any(_keys(kp)[: len(u)] == u for u in unused), params
    )


def _keys(keypath) -> tuple:
    return tuple(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in keypath)


class TrainModel:
    """Graph definitions of the six nets (+ the frozen face-ID net) and the pure functions of
    the step. ``specs`` maps each of ``models.TRAINING_NETS`` to its ``NetSpec``."""

    def __init__(self, specs: dict[str, NetSpec], face: FaceID | None = None):
        self.specs = dict(specs)
        self.graphdefs = {n: nnx.graphdef(abstract(s)) for n, s in self.specs.items()}
        self.face = face
        self.gen_mask = {n: _trainable_mask(self.specs[n]) for n in GENERATORS}

    # state <-> modules
    def split(self, name: str, state: nnx.State) -> tuple[Tree, Tree | None]:
        """(params, spectral state or None) pure dicts of a net's full ``nnx.State``."""
        module = nnx.merge(self.graphdefs[name], state)
        params = nnx.to_pure_dict(nnx.state(module, nnx.Param))
        spectral = nnx.to_pure_dict(nnx.state(module, SpectralState))
        return params, (spectral if spectral else None)

    def net_state(self, state: Tree, name: str) -> nnx.State:
        """A net's full ``nnx.State`` from the train state (for checkpoints and export)."""
        args = [state["gen" if name in GENERATORS else "dis"][name]]
        if name in DISCRIMINATORS:
            args.append(state["spectral"][name])
        return nnx.state(nnx.merge(self.graphdefs[name], *args))

    def generator(self, name: str, params: Tree, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(image, CAM logit) of generator ``name`` on ``x``."""
        return nnx.merge(self.graphdefs[name], params)(x)[:2]

    def _dis(self, name: str, params: Tree, spectral: Tree, inputs: list):
        """Training-mode calls of discriminator ``name`` on each of ``inputs`` in order (each
        runs one power iteration, chained from call to call).
        Returns ([(logit, cam_logit) per input], new spectral state)."""
        net = nnx.merge(self.graphdefs[name], params, spectral)
        outs = [net(x, True)[:2] for x in inputs]
        return outs, nnx.to_pure_dict(nnx.state(net, SpectralState))

    def d_loss(self, hp: Hparams, dis: Tree, spectral: Tree, real_A, real_B, fake_A2B, fake_B2A):
        """(Discriminator_loss, (terms, new spectral state)). Each discriminator scores the real
        image, then the fake, as in the original (disGA(real_A) ... disLB(fake_A2B))."""
        outs, new_spectral = {}, {}
        for name in DISCRIMINATORS:
            images = [real_A, fake_B2A] if name.endswith("A") else [real_B, fake_A2B]
            outs[name], new_spectral[name] = self._dis(name, dis[name], spectral[name], images)
        loss_A = hp.adv_weight * (losses.lsgan_d(*outs["disGA"]) + losses.lsgan_d(*outs["disLA"]))
        loss_B = hp.adv_weight * (losses.lsgan_d(*outs["disGB"]) + losses.lsgan_d(*outs["disLB"]))
        terms = {"d_loss_A": loss_A, "d_loss_B": loss_B}
        return loss_A + loss_B, (terms, new_spectral)

    # The G loss is a sum over four independent parts, one per chain of generator calls:
    # the translation of each domain (real -> fake -> cycle) and the identity call of each.

    def translation_loss(
        self,
        hp: Hparams,
        judges: tuple[str, str],
        dis: tuple,
        spectral: tuple,
        face_state,
        real,
        fake,
        cam,
        cycle,
    ):
        """The G loss part of one translation ``real -> fake -> cycle``: adversarial against
        ``judges`` (the fake's domain's global and local discriminators, whose params and
        spectral states ``dis`` and ``spectral`` hold in that order), CAM (the fake's CAM logit
        is 1), cycle L1 and Face-ID of real against fake.
        Returns (weighted sum, terms, new spectral states)."""
        adv, new_spectral = 0.0, []
        for name, params, state in zip(judges, dis, spectral):
            (out,), state = self._dis(name, params, state, [fake])
            adv, new_spectral = adv + losses.lsgan_g(out), [*new_spectral, state]
        terms = {
            "adv": adv,
            "cycle": losses.l1(cycle, real),
            "cam": losses.bce_with_logits(cam, 1.0),
            "faceid": self.face_id_loss(hp, face_state, real, fake),
        }
        return _weighted(hp, terms), terms, tuple(new_spectral)

    def identity_loss(self, hp: Hparams, real, same, cam):
        """The G loss part of an identity call ``real -> same`` (a generator on its own target
        domain): identity L1 and CAM (its CAM logit is 0). Returns (weighted sum, terms)."""
        terms = {"identity": losses.l1(same, real), "cam": losses.bce_with_logits(cam, 0.0)}
        return _weighted(hp, terms), terms

    def face_id_loss(self, hp: Hparams, face_state, real, fake) -> jax.Array:
        """mean(1 - cosine) of the Face-ID embeddings of ``real`` and ``fake``; 0 when off."""
        if not hp.faceid_weight or self.face is None:
            return jnp.zeros((), jnp.float32)
        emb = self.face.embed(face_state, jnp.concatenate([real, fake], axis=0))
        n = real.shape[0]
        return jnp.mean(1.0 - cosine_similarity(emb[:n], emb[n:]))

    def init_state(self, nets: dict[str, nnx.State], hp: Hparams) -> Tree:
        """The train state at step 0 from each net's full ``nnx.State``."""
        gen, dis, spectral = {}, {}, {}
        for name in GENERATORS:
            gen[name], _ = self.split(name, nets[name])
        for name in DISCRIMINATORS:
            dis[name], spectral[name] = self.split(name, nets[name])
        tx = optimizer(hp)
        return {
            "step": jnp.zeros((), jnp.int32),
            "gen": gen,
            "dis": dis,
            "spectral": spectral,
            "opt_g": optax.masked(tx, self.gen_mask).init(gen),
            "opt_d": tx.init(dis),
        }


def fresh_nets(specs: dict[str, NetSpec], seed: int) -> dict[str, nnx.State]:
    """Newly initialised nets (torch's default init), one independent key per net."""
    return {
        name: nnx.state(build(spec, nnx.Rngs(jax.random.fold_in(jax.random.key(seed), i))))
        for i, (name, spec) in enumerate(sorted(specs.items()))
    }


def _clip(gen: Tree, hp: Hparams) -> Tree:
    def clip(kp, x):
        leaf = _keys(kp)[-1]
        if leaf == "rho":
            return jnp.clip(x, 0.0, hp.rho_clipper)
        if leaf in ("w_gamma", "w_beta"):
            return jnp.clip(x, 0.0, hp.w_clipper)
        return x

    return jax.tree_util.tree_map_with_path(clip, gen)


def _weighted(hp: Hparams, terms: dict) -> jax.Array:
    """Sum of G loss terms, each times its flag (``cycle`` times ``hp.cycle_weight`` ...)."""
    return sum(getattr(hp, f"{k}_weight") * v for k, v in terms.items())


def _apply(tx, grads, opt_state, params, lr):
    updates, opt_state = tx.update(grads, opt_state, params)
    params = jax.tree.map(lambda p, u: p - lr * u, params, updates)
    return params, opt_state


# --- the step as programs, each mapped over the mesh --------------------------------------------
#
# Per-device values that must cross from one program to the next (the generators' vjp
# residuals, their partial parameter gradients) leave a program stacked on a new leading axis
# (out_specs P(AXIS)) and enter the next one unstacked.


def _stacked(tree):
    return jax.tree.map(lambda x: x[None], tree)


def _unstacked(tree):
    return jax.tree.map(lambda x: x[0], tree)


def _gen_forward(
    model: TrainModel, name: str, params: Tree, x: jax.Array, keep_only_convs: bool = True
):
    """Generator ``name`` on this device's ``x``: (image, CAM logit, stacked vjp).

    With ``keep_only_convs`` the vjp keeps the convolutions' outputs and recomputes the rest
    (normalisations, activations, pads, concatenations) from them in the backward pass: a
    sixth of the memory, for a few percent more time (docs/benchmarks.md).
    """

    def generator(p, x):
        return model.generator(name, p, x)

    if keep_only_convs:
        generator = jax.checkpoint(
            generator, policy=jax.checkpoint_policies.save_only_these_names(CONV_OUTPUT)
        )
    (y, cam), vjp = jax.vjp(generator, params, x)
    return y, cam, _stacked(vjp)


def _gen_backward(vjp, ct_y: jax.Array, ct_cam: jax.Array):
    """(this device's parameter gradient, stacked; the input's cotangent)."""
    grads, ct_x = _unstacked(vjp)((ct_y, ct_cam))
    return _stacked(grads), ct_x


def _gen_backward_remat(
    model: TrainModel, name: str, params: Tree, x: jax.Array, ct_y: jax.Array, ct_cam: jax.Array
):
    """``_gen_backward`` that runs the forward pass again instead of keeping its residuals."""
    vjp = _gen_forward(model, name, params, x, keep_only_convs=False)[2]
    return _gen_backward(vjp, ct_y, ct_cam)


def _d_update(
    model: TrainModel,
    hp: Hparams,
    with_grads: bool,
    dis: Tree,
    spectral: Tree,
    opt_d,
    step,
    real_A,
    real_B,
    fake_A2B,
    fake_B2A,
):
    """The D update. The loss is this device's mean over the device count: ``shard_map`` sums
    gradients w.r.t. the replicated params over devices, giving those of the global mean."""
    n_dev = jax.lax.axis_size(AXIS)

    def objective(dis, spectral):
        loss, aux = model.d_loss(hp, dis, spectral, real_A, real_B, fake_A2B, fake_B2A)
        return loss / n_dev, aux

    (loss, (terms, spectral)), grads = jax.value_and_grad(objective, has_aux=True)(dis, spectral)
    dis, opt_d = _apply(optimizer(hp), grads, opt_d, dis, learning_rate(hp, step + 1))
    metrics = jax.lax.psum({"d_loss": loss, **{k: v / n_dev for k, v in terms.items()}}, AXIS)
    return dis, spectral, opt_d, metrics, (grads if with_grads else None)


def _g_loss_part(loss_fn: Callable, outs: tuple):
    """One part of the G loss, ``loss_fn(*outs) -> (loss, terms, *aux)``, as this device's share
    of the global mean: (metrics summed over devices, cotangents of the generator outputs
    ``outs``, *aux)."""
    n_dev = jax.lax.axis_size(AXIS)

    def objective(outs):
        loss, terms, *aux = loss_fn(*outs)
        return loss / n_dev, (terms, aux)

    (loss, (terms, aux)), ct = jax.value_and_grad(objective, has_aux=True)(outs)
    metrics = jax.lax.psum({"loss": loss, **{k: v / n_dev for k, v in terms.items()}}, AXIS)
    return metrics, ct, *aux


def _translation_part(
    model: TrainModel,
    hp: Hparams,
    judges: tuple[str, str],
    dis: tuple,
    spectral: tuple,
    face_state,
    real,
    outs: tuple,
):
    """``TrainModel.translation_loss`` of ``outs`` = (fake, cam, cycle): (metrics, cotangents,
    new spectral states of ``judges``)."""
    return _g_loss_part(
        functools.partial(model.translation_loss, hp, judges, dis, spectral, face_state, real), outs
    )


def _identity_part(model: TrainModel, hp: Hparams, real, outs: tuple):
    """``TrainModel.identity_loss`` of ``outs`` = (same, cam): (metrics, cotangents)."""
    return _g_loss_part(functools.partial(model.identity_loss, hp, real), outs)


def _g_update(
    model: TrainModel,
    hp: Hparams,
    with_grads: bool,
    gen: Tree,
    opt_g,
    step,
    partial_grads: dict,
    parts: list[dict],
):
    """Sums each generator's stacked partial gradients over its calls and the devices, then
    masked Adam and the clippers; the G loss and its terms summed over the ``parts``."""
    grads = {
        name: jax.lax.psum(jax.tree.map(lambda *g: sum(g), *map(_unstacked, grads)), AXIS)
        for name, grads in partial_grads.items()
    }
    lr = learning_rate(hp, step + 1)
    gen, opt_g = _apply(optax.masked(optimizer(hp), model.gen_mask), grads, opt_g, gen, lr)
    metrics = {
        f"g_{k}": sum(part[k] for part in parts if k in part)
        for k in ("loss", "adv", "cycle", "identity", "cam", "faceid")
    }
    return _clip(gen, hp), opt_g, step + 1, {**metrics, "lr": lr}, (grads if with_grads else None)


def _traced_under(plan: backend.Plan, precision_name: str, fn: Callable) -> Callable:
    """``fn`` traced under ``plan`` and precision ``precision_name`` (both read at trace time)."""

    @functools.wraps(fn)
    def traced(*args, **kwargs):
        with backend.use_plan(plan.name), precision.use(precision_name):
            return fn(*args, **kwargs)

    return traced


def _find_malloc_trim() -> Callable | None:
    """glibc's ``malloc_trim``; None elsewhere."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError, TypeError):
        return None


_MALLOC_TRIM = _find_malloc_trim()


class SplitStep:
    """The step of the CPU plan, as several jitted programs (``make_step`` documents the call).

    The step runs as jitted programs, each a ``jax.shard_map`` over ``AXIS``: a generator's
    forward pass with its vjp and its backward pass (called for the six generator calls of the
    original), the D update, the two kinds of G loss part (a translation with its cycle, an
    identity call) with the cotangents of their generator outputs, and the G update. As one
    program XLA compiled the generator eight times (four calls, forward and backward) and took
    minutes on CPU; this way it compiles one forward and one backward. The state is donated
    program by program. Nets of equal spec share their programs.

    Order: the two translations (forward), the D update, then each of the four parts of the G
    loss from its forward passes to its backward passes, one part after the other, so that at
    most three generator calls keep their residuals at once. Between their forward and backward
    programs the generators keep only their convolutions' outputs (``_gen_forward``). With
    ``remat`` they keep nothing and run the forward pass again in the backward program.

    With ``trim_heap`` each step ends by giving the C heap's free pages back to the system
    (``malloc_trim``): on CPU the device buffers live there, and glibc keeps freed pages
    resident.
    """

    def __init__(
        self,
        model: TrainModel,
        hp: Hparams,
        mesh: Mesh,
        *,
        with_grads: bool = False,
        remat: bool = False,
        plan: backend.Plan,
        precision_name: str = "float32",
    ):
        self.with_grads, self.remat = with_grads, remat
        self.trims_heap = plan.trim_heap and _MALLOC_TRIM is not None
        rep, dat = P(), P(AXIS)

        def smap(fn, **kw):
            return jax.shard_map(_traced_under(plan, precision_name, fn), mesh=mesh, **kw)

        # the generator programs pass per-device values on (no replication check; their
        # parameter gradients are summed over devices in the G update)
        gen_map = functools.partial(smap, check_vma=False)
        programs = {}

        def per_spec(names: tuple[str, ...], make: Callable):
            key = tuple(model.specs[n] for n in names)
            if key not in programs:
                programs[key] = make()
            return programs[key]

        self._gen = {
            name: per_spec(
                (name,),
                lambda: {
                    "forward": jax.jit(
                        gen_map(
                            functools.partial(_gen_forward, model, name),
                            in_specs=(rep, dat),
                            out_specs=dat,
                        )
                    ),
                    "apply": jax.jit(
                        gen_map(
                            functools.partial(model.generator, name),
                            in_specs=(rep, dat),
                            out_specs=dat,
                        )
                    ),
                    "backward_remat": jax.jit(
                        gen_map(
                            functools.partial(_gen_backward_remat, model, name),
                            in_specs=(rep,) + (dat,) * 3,
                            out_specs=dat,
                        )
                    ),
                },
            )
            for name in GENERATORS
        }
        self._translation_loss = {
            judges: per_spec(
                judges,
                lambda: jax.jit(
                    smap(
                        functools.partial(_translation_part, model, hp, judges),
                        in_specs=(rep,) * 3 + (dat,) * 2,
                        out_specs=(rep, dat, rep),
                    ),
                    donate_argnums=(1,),
                ),
            )
            for judges in (("disGB", "disLB"), ("disGA", "disLA"))
        }
        self._identity_loss = jax.jit(
            smap(functools.partial(_identity_part, model, hp), in_specs=dat, out_specs=(rep, dat))
        )
        self._gen_backward = jax.jit(gen_map(_gen_backward, in_specs=dat, out_specs=dat))
        self._d_update = jax.jit(
            smap(
                functools.partial(_d_update, model, hp, with_grads),
                in_specs=(rep,) * 4 + (dat,) * 4,
                out_specs=rep,
            ),
            donate_argnums=(0, 1, 2),
        )
        self._g_update = jax.jit(
            smap(
                functools.partial(_g_update, model, hp, with_grads),
                in_specs=(rep, rep, rep, dat, rep),
                out_specs=rep,
            ),
            donate_argnums=(0, 1),
        )

    def _forward(self, name: str, params: Tree, x: jax.Array):
        """(image, CAM logit, pullback): ``pullback(ct_image, ct_cam)`` -> (stacked parameter
        gradient, cotangent of ``x``)."""
        programs = self._gen[name]
        if self.remat:
            y, cam = programs["apply"](params, x)
            return y, cam, functools.partial(programs["backward_remat"], params, x)
        y, cam, vjp = programs["forward"](params, x)
        return y, cam, functools.partial(self._gen_backward, vjp)

    def _translation(
        self,
        names: tuple[str, str],
        judges: tuple[str, str],
        gen: Tree,
        dis: Tree,
        spectral: Tree,
        face_state,
        real,
        fake,
        cam,
        pullback,
    ):
        """The translation ``real -> fake`` (by ``names[0]``, whose ``pullback`` is given) and
        back to ``real``'s domain (by ``names[1]``): its G loss part and backward passes.
        Returns (metrics, new spectral states of ``judges``, partial gradients of both)."""
        back = names[1]
        cycle, cycle_cam, pullback_cycle = self._forward(back, gen[back], fake)
        metrics, (ct_fake, ct_cam, ct_cycle), new_spectral = self._translation_loss[judges](
            tuple(dis[j] for j in judges),
            tuple(spectral[j] for j in judges),
            face_state,
            real,
            (fake, cam, cycle),
        )
        # the cycle first: its input cotangent joins the fake's own
        grad_back, ct_from_cycle = pullback_cycle(ct_cycle, jnp.zeros_like(cycle_cam))
        grad_forward, _ = pullback(ct_fake + ct_from_cycle, ct_cam)
        return metrics, dict(zip(judges, new_spectral)), {names[0]: grad_forward, back: grad_back}

    def _identity(self, name: str, params: Tree, real):
        """The identity call of generator ``name`` on ``real``: (metrics, partial gradient)."""
        same, cam, pullback = self._forward(name, params, real)
        metrics, (ct_same, ct_cam) = self._identity_loss(real, (same, cam))
        return metrics, pullback(ct_same, ct_cam)[0]

    def __call__(self, state: Tree, face_state, real_A: jax.Array, real_B: jax.Array):
        gen = state["gen"]
        A2B, cam_A2B, pullback_A2B = self._forward("genA2B", gen["genA2B"], real_A)
        B2A, cam_B2A, pullback_B2A = self._forward("genB2A", gen["genB2A"], real_B)
        dis, spectral, opt_d, d_metrics, d_grads = self._d_update(
            state["dis"], state["spectral"], state["opt_d"], state["step"], real_A, real_B, A2B, B2A
        )

        # the G loss part by part; a pullback is dropped once used, which frees its residuals
        metrics_A, spectral_B, grads_A = self._translation(
            ("genA2B", "genB2A"),
            ("disGB", "disLB"),
            gen,
            dis,
            spectral,
            face_state,
            real_A,
            A2B,
            cam_A2B,
            pullback_A2B,
        )
        del pullback_A2B
        metrics_B, spectral_A, grads_B = self._translation(
            ("genB2A", "genA2B"),
            ("disGA", "disLA"),
            gen,
            dis,
            spectral,
            face_state,
            real_B,
            B2A,
            cam_B2A,
            pullback_B2A,
        )
        del pullback_B2A
        metrics_A2A, grad_A2A = self._identity("genB2A", gen["genB2A"], real_A)
        metrics_B2B, grad_B2B = self._identity("genA2B", gen["genA2B"], real_B)
        gen, opt_g, step, g_metrics, g_grads = self._g_update(
            gen,
            state["opt_g"],
            state["step"],
            {
                "genA2B": [grads_A["genA2B"], grads_B["genA2B"], grad_B2B],
                "genB2A": [grads_B["genB2A"], grads_A["genB2A"], grad_A2A],
            },
            [metrics_A, metrics_B, metrics_A2A, metrics_B2B],
        )

        new_state = {
            "step": step,
            "gen": gen,
            "dis": dis,
            "spectral": {**spectral, **spectral_A, **spectral_B},
            "opt_g": opt_g,
            "opt_d": opt_d,
        }
        metrics = {**d_metrics, **g_metrics}
        if self.with_grads:
            metrics["grads"] = {"dis": d_grads, "gen": g_grads}
        if self.trims_heap:
            jax.block_until_ready((new_state, metrics))
            _MALLOC_TRIM(0)
        return new_state, metrics


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh over every device of every process (or ``devices``), axis ``data``."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(AXIS))


def put_replicated(tree, mesh: Mesh):
    """Place a host pytree (identical on every process) replicated on ``mesh``."""
    sharding = replicated(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_callback(
            np.shape(x), sharding, lambda idx, x=x: np.asarray(x)[idx]
        ),
        tree,
    )


def put_batch(local: np.ndarray, mesh: Mesh) -> jax.Array:
    """The global batch array from this process's slice ``[B // process_count, ...]``."""
    return jax.make_array_from_process_local_data(batch_sharding(mesh), np.asarray(local))


# --- the step as one program (the accelerator plan) ---------------------------------------------


def _fused_step(
    model: TrainModel,
    hp: Hparams,
    with_grads: bool,
    remat: bool,
    state: Tree,
    face_state,
    real_A: jax.Array,
    real_B: jax.Array,
):
    """The whole step as one function of global arrays (XLA partitions it over the mesh).

    The two translations run once, through ``jax.vjp``; the D update uses their outputs, and the
    G loss's gradient reaches them through their cotangents, as in ``SplitStep``. Generator calls
    that do not depend on each other run as one ``lax.map`` over the stacked calls, so the
    generator appears twice in the program, not six times (its compile time grows with that).
    """
    policy = None if remat else jax.checkpoint_policies.save_only_these_names(CONV_OUTPUT)
    one = jax.checkpoint(functools.partial(model.generator, "genA2B"), policy=policy)

    def generators(calls: list[tuple[Tree, jax.Array]]) -> list[tuple[jax.Array, jax.Array]]:
        """(image, CAM logit) of each (params, x); both generators share one spec."""
        params = jax.tree.map(lambda *a: jnp.stack(a), *[p for p, _ in calls])
        ys, cams = jax.lax.map(lambda px: one(*px), (params, jnp.stack([x for _, x in calls])))
        return [(ys[i], cams[i]) for i in range(len(calls))]

    def translate(gen_A2B: Tree, gen_B2A: Tree):
        (A2B, cam_A2B), (B2A, cam_B2A) = generators([(gen_A2B, real_A), (gen_B2A, real_B)])
        return A2B, cam_A2B, B2A, cam_B2A

    gen, lr = state["gen"], learning_rate(hp, state["step"] + 1)
    (A2B, cam_A2B, B2A, cam_B2A), pullback = jax.vjp(translate, gen["genA2B"], gen["genB2A"])

    def d_objective(dis, spectral):
        return model.d_loss(hp, dis, spectral, real_A, real_B, A2B, B2A)

    (d_loss, (d_terms, spectral)), d_grads = jax.value_and_grad(d_objective, has_aux=True)(
        state["dis"], state["spectral"]
    )
    dis, opt_d = _apply(optimizer(hp), d_grads, state["opt_d"], state["dis"], lr)

    def g_objective(gen, A2B, cam_A2B, B2A, cam_B2A):
        cycle_A, cycle_B, same_A, same_B = generators(
            [
                (gen["genB2A"], A2B),
                (gen["genA2B"], B2A),
                (gen["genB2A"], real_A),
                (gen["genA2B"], real_B),
            ]
        )
        parts, new_spectral = [], {}
        for real, fake, cam, cycle, judges in (
            (real_A, A2B, cam_A2B, cycle_A[0], ("disGB", "disLB")),
            (real_B, B2A, cam_B2A, cycle_B[0], ("disGA", "disLA")),
        ):
            loss, terms, judged = model.translation_loss(
                hp,
                judges,
                tuple(dis[j] for j in judges),
                tuple(spectral[j] for j in judges),
                face_state,
                real,
                fake,
                cam,
                cycle,
            )
            parts.append((loss, terms))
            new_spectral.update(zip(judges, judged))
        for real, same in ((real_A, same_A), (real_B, same_B)):
            parts.append(model.identity_loss(hp, real, *same))
        total = sum(loss for loss, _ in parts)
        metrics = {
            f"g_{k}": sum(terms[k] for _, terms in parts if k in terms)
            for k in ("adv", "cycle", "identity", "cam", "faceid")
        }
        return total, ({"g_loss": total, **metrics}, new_spectral)

    (_, (g_metrics, judged)), grads = jax.value_and_grad(
        g_objective, argnums=(0, 1, 2, 3, 4), has_aux=True
    )(gen, A2B, cam_A2B, B2A, cam_B2A)
    g_grads, ct_A2B, ct_cam_A2B, ct_B2A, ct_cam_B2A = grads
    via_A2B, via_B2A = pullback((ct_A2B, ct_cam_A2B, ct_B2A, ct_cam_B2A))
    g_grads = {
        "genA2B": jax.tree.map(jnp.add, g_grads["genA2B"], via_A2B),
        "genB2A": jax.tree.map(jnp.add, g_grads["genB2A"], via_B2A),
    }
    gen, opt_g = _apply(
        optax.masked(optimizer(hp), model.gen_mask), g_grads, state["opt_g"], gen, lr
    )
    new_state = {
        "step": state["step"] + 1,
        "gen": _clip(gen, hp),
        "dis": dis,
        "spectral": {**spectral, **judged},
        "opt_g": opt_g,
        "opt_d": opt_d,
    }
    metrics = {"d_loss": d_loss, **d_terms, **g_metrics, "lr": lr}
    if with_grads:
        metrics["grads"] = {"dis": d_grads, "gen": g_grads}
    return new_state, metrics


class FusedStep:
    """The step of the accelerator plan: one jitted program over ``mesh``, the state donated,
    parameters replicated and the global batch sharded on the ``data`` axis."""

    def __init__(
        self,
        model: TrainModel,
        hp: Hparams,
        mesh: Mesh,
        *,
        with_grads: bool = False,
        remat: bool = False,
        plan: backend.Plan,
        precision_name: str = "float32",
    ):
        if model.specs["genA2B"] != model.specs["genB2A"]:
            raise ValueError("the fused step runs both generators as one: they need one spec")
        rep, dat = replicated(mesh), batch_sharding(mesh)
        fn = functools.partial(_fused_step, model, hp, with_grads, remat)
        self._step = jax.jit(
            _traced_under(plan, precision_name, fn),
            in_shardings=(rep, rep, dat, dat),
            out_shardings=(rep, rep),
            donate_argnums=(0,),
        )

    def __call__(self, state: Tree, face_state, real_A: jax.Array, real_B: jax.Array):
        return self._step(state, face_state, real_A, real_B)


def make_step(
    model: TrainModel,
    hp: Hparams,
    mesh: Mesh,
    *,
    with_grads: bool = False,
    remat: bool = False,
    plan: backend.Plan | None = None,
    precision_name: str = "float32",
):
    """``step(state, face_state, real_A, real_B) -> (state, metrics)`` over ``mesh``.

    ``state`` and ``face_state`` replicated (``replicated(mesh)``), ``real_A``/``real_B`` global
    batches ``[B,H,W,3]`` sharded on their first axis (``batch_sharding(mesh)``); the metrics
    are replicated scalars, read by the host only when it needs them. With ``with_grads`` the
    metrics also hold the raw gradients of the global batch mean (``grads['dis']``,
    ``grads['gen']``), before weight decay and Adam. Between the forward and backward passes the
    generators keep only their convolutions' outputs; with ``remat`` nothing.

    The ``plan`` (default: ``backend.plan()``) picks ``SplitStep`` (several programs, CPU) or
    ``FusedStep`` (one program); both compute the same step.
    """
    plan = plan or backend.plan()
    cls = SplitStep if plan.split_step else FusedStep
    return cls(
        model,
        hp,
        mesh,
        with_grads=with_grads,
        remat=remat,
        plan=plan,
        precision_name=precision_name,
    )

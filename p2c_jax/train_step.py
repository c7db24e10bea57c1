"""One training step of photo2cartoon, the original trainer's semantics, over every device.

The state is a plain pytree (pure dicts of arrays, big_vision style)::

    {"step": int32 (completed steps),
     "gen": {genA2B, genB2A: params}, "dis": {disGA, disGB, disLA, disLB: params},
     "spectral": {disGA, ...: weight_u / weight_v}, "opt_g": ..., "opt_d": ..., "rng": key}

and the step (``TrainStep``) is a function of (state, frozen face-ID state, global batch of A, of B)
whose programs are mapped over the mesh axis ``data`` with ``jax.shard_map``: params replicated,
the batch split over devices, gradients summed across devices and hosts, the state donated.

Semantics of the original ``UgatitSadalinHourglass.train`` step, in its order:

1. D update: both generators translate (A2B, B2A); the four discriminators score real and
   fake images in the original's call order (each call in training mode runs one power
   iteration of every spectral norm); least-squares losses of logits and CAM logits.
   Adam(0.5, 0.999) with torch's L2 weight decay 1e-4 added to the gradient.
2. G update against the updated discriminators (their calls run power iterations too):
   adv + cycle L1 + identity L1 + CAM BCE + Face-ID, each with its weight.
3. rho of adaLIN / LIN clipped to [0, rho_clipper], w_gamma / w_beta to [0, w_clipper].

The generator outputs of step 1 equal those of step 2 (G has not changed in between), so the
generators run once, through ``jax.vjp``, and both updates use those outputs.
Parameters that receive no gradient in the original (the ``ConvBlock4`` of every ConvBlock whose
width does not change) are left to Adam's ``grad is None`` rule: not updated, not decayed.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from p2c_jax import losses
from p2c_jax.face_id import FaceID, cosine_similarity
from p2c_jax.generator import ConvBlock
from p2c_jax.layers import CONV_OUTPUT, SpectralState
from p2c_jax.models import DISCRIMINATORS, GENERATORS, NetSpec, abstract, build

AXIS = "data"
Tree = dict


@dataclasses.dataclass(frozen=True)
class Hparams:
    """The original's training flags that enter the step (same names, same defaults)."""

    lr: float = 1e-4
    iteration: int = 1_000_000
    decay_flag: bool = True
    adv_weight: float = 1.0
    cycle_weight: float = 50.0
    identity_weight: float = 10.0
    cam_weight: float = 1000.0
    faceid_weight: float = 1.0
    rho_clipper: float = 1.0
    w_clipper: float = 1.0
    weight_decay: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.999
    eps: float = 1e-8


def learning_rate(hp: Hparams, step) -> jax.Array:
    """lr of step ``step`` (1-based), as the original's in-place decrement leaves it: constant
    for the first ``iteration // 2`` steps, then minus ``lr / (iteration // 2)`` per step."""
    half = hp.iteration // 2
    if not hp.decay_flag or half == 0:
        return jnp.asarray(hp.lr)
    return hp.lr - (hp.lr / half) * jnp.maximum(jnp.asarray(step) - half, 0)


def optimizer(hp: Hparams) -> optax.GradientTransformation:
    """torch.optim.Adam(betas, weight_decay) without the learning rate (applied per step)."""
    return optax.chain(optax.add_decayed_weights(hp.weight_decay),
                       optax.scale_by_adam(b1=hp.beta1, b2=hp.beta2, eps=hp.eps))


# --- the nets as pure functions ---------------------------------------------------------------

def _trainable_mask(spec: NetSpec) -> Tree:
    """Params tree of bools: False where the original gets no gradient (Adam skips them)."""
    module = abstract(spec)
    unused = [path + ("ConvBlock4",) for path, node in nnx.iter_graph(module)
              if isinstance(node, ConvBlock)
              and node.ConvBlock4[-1].weight.shape[2] == node.dim_out]
    params = nnx.to_pure_dict(nnx.state(module, nnx.Param))
    return jax.tree_util.tree_map_with_path(
        lambda kp, _: not any(_keys(kp)[: len(u)] == u for u in unused), params)


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

    def _dis_calls(self, kind: str, dis: Tree, spectral: Tree, inputs_A: list, inputs_B: list):
        """Training-mode calls of the ``kind`` ('G' global / 'L' local) discriminators: disXA on
        each of ``inputs_A`` in order, disXB on each of ``inputs_B`` (each call runs one power
        iteration, chained from call to call).
        Returns ([(logit, cam_logit) per call of A], [... of B], {disXA: spectral, disXB: ...})."""
        outs, new_spectral = [], {}
        for name, inputs in ((f"dis{kind}A", inputs_A), (f"dis{kind}B", inputs_B)):
            net = nnx.merge(self.graphdefs[name], dis[name], spectral[name])
            outs.append([net(x, True)[:2] for x in inputs])
            new_spectral[name] = nnx.to_pure_dict(nnx.state(net, SpectralState))
        return outs[0], outs[1], new_spectral

    def d_loss(self, hp: Hparams, dis: Tree, spectral: Tree, real_A, real_B, fake_A2B, fake_B2A):
        """(Discriminator_loss, (terms, new spectral state)). Each discriminator scores the real
        image, then the fake, as in the original (disGA(real_A) ... disLB(fake_A2B))."""
        (real_GA, fake_GA), (real_GB, fake_GB), spec_G = self._dis_calls(
            "G", dis, spectral, [real_A, fake_B2A], [real_B, fake_A2B])
        (real_LA, fake_LA), (real_LB, fake_LB), spec_L = self._dis_calls(
            "L", dis, spectral, [real_A, fake_B2A], [real_B, fake_A2B])
        loss_A = hp.adv_weight * (losses.lsgan_d(real_GA, fake_GA) + losses.lsgan_d(real_LA, fake_LA))
        loss_B = hp.adv_weight * (losses.lsgan_d(real_GB, fake_GB) + losses.lsgan_d(real_LB, fake_LB))
        terms = {"d_loss_A": loss_A, "d_loss_B": loss_B}
        return loss_A + loss_B, (terms, {**spec_G, **spec_L})

    def g_loss(self, hp: Hparams, outs: dict, dis: Tree, spectral: Tree, face_state, real_A, real_B):
        """(Generator_loss, (terms, new spectral state)) from the generator outputs."""
        (fake_GA,), (fake_GB,), spec_G = self._dis_calls(
            "G", dis, spectral, [outs["fake_B2A"]], [outs["fake_A2B"]])
        (fake_LA,), (fake_LB,), spec_L = self._dis_calls(
            "L", dis, spectral, [outs["fake_B2A"]], [outs["fake_A2B"]])
        adv_A = losses.lsgan_g(fake_GA) + losses.lsgan_g(fake_LA)
        adv_B = losses.lsgan_g(fake_GB) + losses.lsgan_g(fake_LB)
        cycle_A, cycle_B = losses.l1(outs["fake_A2B2A"], real_A), losses.l1(outs["fake_B2A2B"], real_B)
        ident_A, ident_B = losses.l1(outs["fake_A2A"], real_A), losses.l1(outs["fake_B2B"], real_B)
        cam_A = losses.cam_g(outs["cam_B2A"], outs["cam_A2A"])
        cam_B = losses.cam_g(outs["cam_A2B"], outs["cam_B2B"])
        if hp.faceid_weight and self.face is not None:
            n = real_A.shape[0]
            emb = self.face.embed(face_state, jnp.concatenate(
                [real_A, real_B, outs["fake_A2B"], outs["fake_B2A"]], axis=0))
            id_A = jnp.mean(1.0 - cosine_similarity(emb[:n], emb[2 * n:3 * n]))
            id_B = jnp.mean(1.0 - cosine_similarity(emb[n:2 * n], emb[3 * n:]))
        else:
            id_A = id_B = jnp.zeros((), jnp.float32)
        loss_A = (hp.adv_weight * adv_A + hp.cycle_weight * cycle_A + hp.identity_weight * ident_A
                  + hp.cam_weight * cam_A + hp.faceid_weight * id_A)
        loss_B = (hp.adv_weight * adv_B + hp.cycle_weight * cycle_B + hp.identity_weight * ident_B
                  + hp.cam_weight * cam_B + hp.faceid_weight * id_B)
        terms = {"g_adv": adv_A + adv_B, "g_cycle": cycle_A + cycle_B,
                 "g_identity": ident_A + ident_B, "g_cam": cam_A + cam_B, "g_faceid": id_A + id_B,
                 "g_loss_A": loss_A, "g_loss_B": loss_B}
        return loss_A + loss_B, (terms, {**spec_G, **spec_L})

    def init_state(self, nets: dict[str, nnx.State], hp: Hparams, seed: int = 0) -> Tree:
        """The train state at step 0 from each net's full ``nnx.State``."""
        gen, dis, spectral = {}, {}, {}
        for name in GENERATORS:
            gen[name], _ = self.split(name, nets[name])
        for name in DISCRIMINATORS:
            dis[name], spectral[name] = self.split(name, nets[name])
        tx = optimizer(hp)
        return {"step": jnp.zeros((), jnp.int32), "gen": gen, "dis": dis, "spectral": spectral,
                "opt_g": optax.masked(tx, self.gen_mask).init(gen), "opt_d": tx.init(dis),
                "rng": jax.random.key_data(jax.random.key(seed))}


def fresh_nets(specs: dict[str, NetSpec], seed: int) -> dict[str, nnx.State]:
    """Newly initialised nets (torch's default init), one independent key per net."""
    return {name: nnx.state(build(spec, nnx.Rngs(jax.random.fold_in(jax.random.key(seed), i))))
            for i, (name, spec) in enumerate(sorted(specs.items()))}


def _clip(gen: Tree, hp: Hparams) -> Tree:
    def clip(kp, x):
        leaf = _keys(kp)[-1]
        if leaf == "rho":
            return jnp.clip(x, 0.0, hp.rho_clipper)
        if leaf in ("w_gamma", "w_beta"):
            return jnp.clip(x, 0.0, hp.w_clipper)
        return x
    return jax.tree_util.tree_map_with_path(clip, gen)


def _apply(tx, grads, opt_state, params, lr):
    updates, opt_state = tx.update(grads, opt_state, params)
    params = jax.tree.map(lambda p, u: p - lr * u, params, updates)
    return params, opt_state


# --- the step as five programs, each mapped over the mesh ---------------------------------------
#
# Per-device values that must cross from one program to the next (the generators' vjp
# residuals, their partial parameter gradients) leave a program stacked on a new leading axis
# (out_specs P(AXIS)) and enter the next one unstacked.

def _stacked(tree):
    return jax.tree.map(lambda x: x[None], tree)


def _unstacked(tree):
    return jax.tree.map(lambda x: x[0], tree)


def _gen_forward(model: TrainModel, name: str, params: Tree, x: jax.Array,
                 keep_only_convs: bool = True):
    """Generator ``name`` on this device's ``x``: (image, CAM logit, stacked vjp).

    With ``keep_only_convs`` the vjp keeps the convolutions' outputs and recomputes the rest
    (normalisations, activations, pads, concatenations) from them in the backward pass: at
    256 x 256 that is 255 MB per call instead of 1.48 GB, for a few percent more time.
    """
    def generator(p, x):
        return model.generator(name, p, x)
    if keep_only_convs:
        generator = jax.checkpoint(
            generator, policy=jax.checkpoint_policies.save_only_these_names(CONV_OUTPUT))
    (y, cam), vjp = jax.vjp(generator, params, x)
    return y, cam, _stacked(vjp)


def _gen_backward(vjp, ct_y: jax.Array, ct_cam: jax.Array):
    """(this device's parameter gradient, stacked; the input's cotangent)."""
    grads, ct_x = _unstacked(vjp)((ct_y, ct_cam))
    return _stacked(grads), ct_x


def _gen_backward_remat(model: TrainModel, name: str, params: Tree, x: jax.Array,
                        ct_y: jax.Array, ct_cam: jax.Array):
    """``_gen_backward`` that runs the forward pass again instead of keeping its residuals."""
    vjp = _gen_forward(model, name, params, x, keep_only_convs=False)[2]
    return _gen_backward(vjp, ct_y, ct_cam)


def _d_update(model: TrainModel, hp: Hparams, with_grads: bool, dis: Tree, spectral: Tree,
              opt_d, step, real_A, real_B, fake_A2B, fake_B2A):
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


def _g_loss(model: TrainModel, hp: Hparams, dis: Tree, spectral: Tree, face_state, outs: dict,
            real_A, real_B):
    """The G loss against the updated discriminators: (spectral, metrics, cotangents of
    ``outs``, this device's share)."""
    n_dev = jax.lax.axis_size(AXIS)

    def objective(outs, spectral):
        loss, aux = model.g_loss(hp, outs, dis, spectral, face_state, real_A, real_B)
        return loss / n_dev, aux

    (loss, (terms, spectral)), outs_ct = jax.value_and_grad(objective, has_aux=True)(outs, spectral)
    metrics = jax.lax.psum({"g_loss": loss, **{k: v / n_dev for k, v in terms.items()}}, AXIS)
    return spectral, metrics, outs_ct


def _g_update(model: TrainModel, hp: Hparams, with_grads: bool, gen: Tree, opt_g, step,
              partial_grads: dict):
    """Sums each generator's stacked partial gradients over its calls and the devices, then
    masked Adam and the clippers."""
    grads = {name: jax.lax.psum(jax.tree.map(lambda *g: sum(g), *map(_unstacked, parts)), AXIS)
             for name, parts in partial_grads.items()}
    lr = learning_rate(hp, step + 1)
    gen, opt_g = _apply(optax.masked(optimizer(hp), model.gen_mask), grads, opt_g, gen, lr)
    return _clip(gen, hp), opt_g, step + 1, lr, (grads if with_grads else None)


class TrainStep:
    """``step(state, face_state, real_A, real_B) -> (state, metrics)`` over ``mesh``.

    ``state`` and ``face_state`` replicated (``replicated(mesh)``), ``real_A``/``real_B`` global
    batches ``[B,H,W,3]`` sharded on their first axis (``batch_sharding(mesh)``). With
    ``with_grads`` the metrics also hold the raw gradients (``grads['dis']``, ``grads['gen']``),
    summed over devices, before weight decay and Adam.

    The step runs as five jitted programs, each a ``jax.shard_map`` over ``AXIS``: a generator's
    forward pass with its vjp (called for the six generator calls of the original), the D update,
    the G loss with its cotangents, a generator's backward pass (six calls, the cycles first so
    their input cotangents reach the translations), and the G update. As one program XLA
    compiled the generator eight times (four calls, forward and backward) and took minutes;
    this way it compiles one forward and one backward. The state is donated program by program.

    Between their forward and backward programs the generators keep only their convolutions'
    outputs (``_gen_forward``). With ``remat`` they keep nothing and run the forward pass again
    in the backward program (rematerialisation): less memory for one more forward pass per call.
    """

    def __init__(self, model: TrainModel, hp: Hparams, mesh: Mesh, *, with_grads: bool = False,
                 remat: bool = False):
        self.with_grads, self.remat = with_grads, remat
        rep, dat = P(), P(AXIS)
        smap = functools.partial(jax.shard_map, mesh=mesh)
        # the generator programs pass per-device values on (no replication check; their
        # parameter gradients are summed over devices in the G update)
        gen_map = functools.partial(smap, check_vma=False)
        by_spec = {}  # the generator programs, one set per distinct generator spec
        self._gen = {}
        for name in GENERATORS:
            spec = model.specs[name]
            if spec not in by_spec:
                apply = functools.partial(model.generator, name)
                by_spec[spec] = {
                    "forward": jax.jit(gen_map(functools.partial(_gen_forward, model, name),
                                               in_specs=(rep, dat), out_specs=dat)),
                    "apply": jax.jit(gen_map(apply, in_specs=(rep, dat), out_specs=dat)),
                    "backward_remat": jax.jit(gen_map(
                        functools.partial(_gen_backward_remat, model, name),
                        in_specs=(rep,) + (dat,) * 3, out_specs=dat))}
            self._gen[name] = by_spec[spec]
        self._gen_backward = jax.jit(gen_map(_gen_backward, in_specs=dat, out_specs=dat))
        self._d_update = jax.jit(
            smap(functools.partial(_d_update, model, hp, with_grads),
                 in_specs=(rep,) * 4 + (dat,) * 4, out_specs=rep), donate_argnums=(0, 1, 2))
        self._g_loss = jax.jit(
            smap(functools.partial(_g_loss, model, hp), in_specs=(rep,) * 3 + (dat,) * 3,
                 out_specs=(rep, rep, dat)), donate_argnums=(1,))
        self._g_update = jax.jit(
            smap(functools.partial(_g_update, model, hp, with_grads),
                 in_specs=(rep, rep, rep, dat), out_specs=rep), donate_argnums=(0, 1))

    def _forward(self, name: str, params: Tree, x: jax.Array):
        """(image, CAM logit, pullback): ``pullback(ct_image, ct_cam)`` -> (stacked parameter
        gradient, cotangent of ``x``)."""
        programs = self._gen[name]
        if self.remat:
            y, cam = programs["apply"](params, x)
            return y, cam, functools.partial(programs["backward_remat"], params, x)
        y, cam, vjp = programs["forward"](params, x)
        return y, cam, functools.partial(self._gen_backward, vjp)

    def __call__(self, state: Tree, face_state, real_A: jax.Array, real_B: jax.Array):
        gen = state["gen"]
        # the original's six generator calls
        A2B, cam_A2B, pb_A2B = self._forward("genA2B", gen["genA2B"], real_A)
        B2A, cam_B2A, pb_B2A = self._forward("genB2A", gen["genB2A"], real_B)
        A2B2A, _, pb_A2B2A = self._forward("genB2A", gen["genB2A"], A2B)
        B2A2B, _, pb_B2A2B = self._forward("genA2B", gen["genA2B"], B2A)
        A2A, cam_A2A, pb_A2A = self._forward("genB2A", gen["genB2A"], real_A)
        B2B, cam_B2B, pb_B2B = self._forward("genA2B", gen["genA2B"], real_B)
        outs = {"fake_A2B": A2B, "fake_B2A": B2A, "fake_A2B2A": A2B2A, "fake_B2A2B": B2A2B,
                "fake_A2A": A2A, "fake_B2B": B2B, "cam_A2B": cam_A2B, "cam_B2A": cam_B2A,
                "cam_A2A": cam_A2A, "cam_B2B": cam_B2B}

        dis, spectral, opt_d, d_metrics, d_grads = self._d_update(
            state["dis"], state["spectral"], state["opt_d"], state["step"], real_A, real_B, A2B, B2A)
        spectral, g_metrics, ct = self._g_loss(dis, spectral, face_state, outs, real_A, real_B)

        # the cycles first: their input cotangents join those of the translations
        no_cam = jnp.zeros_like(ct["cam_A2B"])
        g_A2B2A, ct_A2B = pb_A2B2A(ct["fake_A2B2A"], no_cam)
        g_B2A2B, ct_B2A = pb_B2A2B(ct["fake_B2A2B"], no_cam)
        g_A2B, _ = pb_A2B(ct["fake_A2B"] + ct_A2B, ct["cam_A2B"])
        g_B2A, _ = pb_B2A(ct["fake_B2A"] + ct_B2A, ct["cam_B2A"])
        g_A2A, _ = pb_A2A(ct["fake_A2A"], ct["cam_A2A"])
        g_B2B, _ = pb_B2B(ct["fake_B2B"], ct["cam_B2B"])
        gen, opt_g, step, lr, g_grads = self._g_update(
            gen, state["opt_g"], state["step"],
            {"genA2B": [g_A2B, g_B2A2B, g_B2B], "genB2A": [g_B2A, g_A2B2A, g_A2A]})

        new_state = {"step": step, "gen": gen, "dis": dis, "spectral": spectral,
                     "opt_g": opt_g, "opt_d": opt_d, "rng": state["rng"]}
        metrics = {**d_metrics, **g_metrics, "lr": lr}
        if self.with_grads:
            metrics["grads"] = {"dis": d_grads, "gen": g_grads}
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
    return jax.tree.map(lambda x: jax.make_array_from_callback(
        np.shape(x), sharding, lambda idx, x=x: np.asarray(x)[idx]), tree)


def put_batch(local: np.ndarray, mesh: Mesh) -> jax.Array:
    """The global batch array from this process's slice ``[B // process_count, ...]``."""
    return jax.make_array_from_process_local_data(batch_sharding(mesh), np.asarray(local))

"""The train state and the nets it trains, as plain pytrees and pure functions (big_vision
style)::

    {"step": int32 (completed steps),
     "gen": {genA2B, genB2A: params}, "dis": {disGA, disGB, disLA, disLB: params},
     "spectral": {disGA, ...: weight_u / weight_v}, "opt_g": ..., "opt_d": ...}

Parameters that receive no gradient in the original (the ``ConvBlock4`` of every ConvBlock
whose width does not change) are masked out of the generators' Adam (``trainable_mask``): not
updated, not decayed, as torch's Adam treats a ``None`` gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from p2c_jax.nn.face_id import FaceID
from p2c_jax.nn.generator import ConvBlock
from p2c_jax.nn.layers import SpectralState
from p2c_jax.nn.models import DISCRIMINATORS, GENERATORS, NetSpec, abstract, build, graphdef
from p2c_jax.nn.numerics import FLOAT32, Numerics
from p2c_jax.parallel import abstract_replicated
from p2c_jax.train.config import Hparams

Tree = dict


def optimizer(hp: Hparams) -> optax.GradientTransformation:
    """torch.optim.Adam(betas, weight_decay) without the learning rate (applied per step)."""
    return optax.chain(
        optax.add_decayed_weights(hp.weight_decay),
        optax.scale_by_adam(b1=hp.beta1, b2=hp.beta2, eps=hp.eps),
    )


def key_names(keypath) -> tuple:
    """A pytree key path as plain names and indices: ``('ConvBlock1', 'conv', 0, 'weight')``."""
    return tuple(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in keypath)


def trainable_mask(spec: NetSpec) -> Tree:
    """Params tree of bools: False where the original gets no gradient (Adam skips them)."""
    module = abstract(spec)
    unused = [
        (*path, "ConvBlock4")
        for path, node in nnx.iter_graph(module)
        if isinstance(node, ConvBlock) and node.ConvBlock4[-1].weight.shape[2] == node.dim_out
    ]
    params = nnx.to_pure_dict(nnx.state(module, nnx.Param))
    return jax.tree_util.tree_map_with_path(
        lambda kp, _: not any(key_names(kp)[: len(u)] == u for u in unused), params
    )


class TrainModel:
    """The six nets of ``models.TRAINING_NETS`` (and the frozen face-ID net) as pure functions of
    their params, computing in ``numerics``. ``specs`` maps each net to its ``NetSpec``. Models
    of equal specs, face-ID spec and numerics compute the same functions, so they compare equal:
    a static argument of ``jax.jit``."""

    def __init__(
        self, specs: dict[str, NetSpec], face: FaceID | None = None, numerics: Numerics = FLOAT32
    ):
        self.specs, self.face, self.numerics = dict(specs), face, numerics
        face_spec = face.spec if face is not None else None
        self._key = (tuple(sorted(self.specs.items())), face_spec, numerics)
        self.graphdefs = {n: graphdef(s, numerics) for n, s in self.specs.items()}
        self.gen_mask = {n: trainable_mask(self.specs[n]) for n in GENERATORS}

    def __eq__(self, other) -> bool:
        return isinstance(other, TrainModel) and self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def generator(self, name: str, params: Tree, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(image, CAM logit) of generator ``name`` on ``x``."""
        return nnx.merge(self.graphdefs[name], params)(x)[:2]

    def discriminate(self, name: str, params: Tree, spectral: Tree, inputs: list):
        """Training-mode calls of discriminator ``name`` on each of ``inputs`` in order (each
        runs one power iteration, chained from call to call).
        Returns ([(logit, cam_logit) per input], new spectral state)."""
        net = nnx.merge(self.graphdefs[name], params, spectral)
        outs = [net(x, True)[:2] for x in inputs]
        return outs, nnx.to_pure_dict(nnx.state(net, SpectralState))

    def embed(self, face_state, x: jax.Array) -> jax.Array:
        """Face-ID embeddings of ``x`` (``FaceID.embed``) in this model's numerics."""
        return self.face.embed(face_state, x, self.numerics)

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

    def abstract_state(self, hp: Hparams, mesh: Mesh) -> Tree:
        """The train state's shapes and dtypes, replicated on ``mesh``: the target that
        checkpoints are restored onto and that ahead-of-time compilation lowers with."""
        nets = {n: nnx.state(abstract(s)) for n, s in self.specs.items()}
        return abstract_replicated(
            jax.eval_shape(lambda nets: self.init_state(nets, hp), nets), mesh
        )


def fresh_nets(specs: dict[str, NetSpec], seed: int) -> dict[str, nnx.State]:
    """Newly initialised nets (torch's default init), one independent key per net."""
    return {
        name: nnx.state(build(spec, nnx.Rngs(jax.random.fold_in(jax.random.key(seed), i))))
        for i, (name, spec) in enumerate(sorted(specs.items()))
    }

"""Training checkpoints: the whole train state, saved and restored straight onto the mesh.

A checkpoint ``WORKDIR/checkpoints/<step>/`` holds four Orbax items:

- ``nets`` and ``config``: our public checkpoint format (``weights.checkpoint``), which every
  loader, ``p2c-infer``, ``p2c-export`` and ``p2c-convert`` read;
- ``train_state``: the step and both optimizer states as the pytree they are (``StandardSave``),
  restored onto the abstract train state replicated on the mesh (``StandardRestore``);
- ``meta``: the data position (= step), seed, global batch, hyper-parameters and ``format``.

Format 1 (before format numbers) stored the optimizer states flattened, one key per leaf with
their paths in ``meta``; ``restore`` still reads it (docs/checkpoints.md).

``restore_newest`` resumes from the newest step that restores: a newer, damaged one is moved
aside to ``<step>.corrupt-<UTC time>`` (a name Orbax does not read as a step), never deleted.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from p2c_jax.nn.models import TRAINING_NETS, NetSpec
from p2c_jax.parallel import put_replicated
from p2c_jax.train.config import Hparams
from p2c_jax.train.errors import TrainError
from p2c_jax.train.state import TrainModel, Tree
from p2c_jax.weights.checkpoint import damage, nets_to_tree, tree_to_nets

FORMAT = 2
TRAIN_STATE = ("step", "opt_g", "opt_d")  # the item train_state; the nets go to nets
ITEMS = ("nets", "config", "train_state", "meta")


def save_args(model: TrainModel, state: Tree, meta: dict) -> ocp.args.Composite:
    """The Orbax items of one checkpoint, the state's device arrays as they are (Orbax copies
    them to the host and writes in the background)."""
    weights = {n: (model.specs[n], model.net_state(state, n)) for n in TRAINING_NETS}
    nets, config = nets_to_tree(weights)
    return ocp.args.Composite(
        nets=ocp.args.StandardSave(nets),
        config=ocp.args.JsonSave(config),
        train_state=ocp.args.StandardSave({k: state[k] for k in TRAIN_STATE}),
        meta=ocp.args.JsonSave({**meta, "format": FORMAT}),
    )


def restore(
    manager: ocp.CheckpointManager, step: int, model: TrainModel, hp: Hparams, mesh: Mesh
) -> tuple[Tree, dict]:
    """(train state replicated on ``mesh``, meta) of checkpoint ``step``, checked against
    ``model``'s nets."""
    where = str(manager.directory / str(step))
    head = manager.restore(
        step, args=ocp.args.Composite(config=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore())
    )
    specs = {n: NetSpec.from_json(j) for n, j in head.config.items()}
    if specs != {n: model.specs[n] for n in TRAINING_NETS}:
        raise TrainError(
            f"{where}: its nets {specs} differ from this run's; resume with the "
            "flags of the run that wrote it (--ch --img_size --light)"
        )
    abstract = model.abstract_state(hp, mesh)
    legacy = head.meta.get("format", 1) < 2
    target = {k: abstract[k] for k in TRAIN_STATE}
    items = manager.restore(
        step,
        args=ocp.args.Composite(
            nets=ocp.args.StandardRestore(),
            train_state=ocp.args.StandardRestore(None if legacy else target),
        ),
    )
    weights = tree_to_nets(items.nets, head.config, where)
    nets = model.init_state({n: st for n, (_, st) in weights.items()}, hp)
    rest = items.train_state
    if legacy:
        rest = put_replicated(_format1_train_state(rest, head.meta, target, where), mesh)
    state = put_replicated({k: v for k, v in nets.items() if k not in TRAIN_STATE}, mesh)
    return {**state, **rest}, head.meta


def restore_newest(
    manager: ocp.CheckpointManager,
    model: TrainModel,
    hp: Hparams,
    mesh: Mesh,
    log: Callable[[str], None],
) -> tuple[int, Tree, dict] | None:
    """(step, state, meta) of the newest checkpoint that restores (``restore``), None when none
    does. Each newer one whose files are damaged (``weights.checkpoint.damage``; any other
    error raises) is moved aside by process 0, with one line; every process agrees on each
    step's verdict (a step damaged for one is damaged for all) and waits for the move."""
    damaged, restored = [], None
    for step in sorted(manager.all_steps(), reverse=True):
        why = None
        try:
            restored = (step, *restore(manager, step, model, hp, mesh))
        except Exception as e:  # narrowed by damage(): anything else raises
            why = damage(e, manager.directory / str(step))
            if why is None:
                raise
        if _restored_everywhere(why is None):
            break
        damaged.append((step, why or "damaged on another host"))
        restored = None
    if not damaged:
        return restored
    then = f"resuming from step {restored[0]}" if restored else "starting from scratch"
    when = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
    for step, why in damaged:
        aside = manager.directory / f"{step}.corrupt-{when}"
        if jax.process_index() == 0:
            (manager.directory / str(step)).rename(aside)
        log(
            f"p2c-train: checkpoint step {step} does not restore ({why}); moved it to {aside}; {then}"
        )
    ocp.multihost.sync_global_processes("p2c_jax_damaged_checkpoints_moved")
    manager.reload()  # forget the steps moved aside
    return restored


def _restored_everywhere(ok: bool) -> bool:
    """Whether every process restored its part of a step."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


def _format1_train_state(flat: dict, meta: dict, target: Tree, where: str) -> Tree:
    """The train state of a format-1 checkpoint: leaves under keys ``00000``... in the order
    of their paths in ``meta['train_state_paths']``."""
    leaves, treedef = jax.tree_util.tree_flatten(target)
    names = [jax.tree_util.keystr(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(target)[0]]
    if names != meta.get("train_state_paths"):
        raise TrainError(f"{where}: its optimizer state does not fit this version's")
    return treedef.unflatten(
        [np.asarray(flat[f"{i:05d}"], x.dtype).reshape(x.shape) for i, x in enumerate(leaves)]
    )

"""Our checkpoint format: an Orbax composite checkpoint with items ``nets`` and ``config``.

``nets`` is ``{net: nested state}`` (string keys, our layouts), ``config`` is
``{net: NetSpec json}``. A training run writes the same two items (plus its optimizer and data
state) into each step of an Orbax ``CheckpointManager`` under ``<workdir>/checkpoints``; every
reader here accepts such a workdir and then uses its latest step.
"""

from __future__ import annotations

import os

import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from p2c_jax import paths
from p2c_jax.nn.models import NetSpec, abstract

CHECKPOINTS = "checkpoints"
NetWeights = dict[str, tuple[NetSpec, nnx.State]]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file, net and keys."""


def nets_to_tree(weights: NetWeights) -> tuple[dict, dict]:
    """(nets item, config item) for Orbax: nested dicts with string keys, numpy leaves."""
    tree: dict = {}
    for net, (_, state) in weights.items():
        node = tree.setdefault(net, {})
        for path, var in nnx.to_flat_state(state):
            *parents, leaf = map(str, path)
            d = node
            for p in parents:
                d = d.setdefault(p, {})
            d[leaf] = np.asarray(var[...])
    return tree, {net: spec.to_json() for net, (spec, _) in weights.items()}


def tree_to_nets(tree: dict, config: dict, where: str = "") -> NetWeights:
    """Inverse of ``nets_to_tree``; checks every net's keys and shapes against its spec."""
    out: NetWeights = {}
    for net, spec_json in config.items():
        spec = NetSpec.from_json(spec_json)
        flat = []
        for path, var in nnx.to_flat_state(nnx.state(abstract(spec))):
            node = tree.get(net, {})
            for p in map(str, path):
                node = node.get(p) if isinstance(node, dict) else None
            if node is not None and var.shape == () and np.shape(node) == (1,):
                node = np.reshape(node, ())  # Orbax stores scalars as [1]
            if node is None or tuple(np.shape(node)) != tuple(var.shape):
                found = "missing" if node is None else f"shape {tuple(np.shape(node))}"
                raise CheckpointError(
                    f"{where}: {net}.{'.'.join(map(str, path))} is {found}, "
                    f"expected shape {tuple(var.shape)}"
                )
            flat.append((path, var.replace(np.asarray(node, var.dtype))))
        out[net] = (spec, nnx.from_flat_state(flat))
    return out


def save_nets(directory: str | os.PathLike, weights: NetWeights) -> None:
    """Write ``weights`` as our checkpoint directory (replacing nothing: it must not exist)."""
    directory = _path(directory)
    if directory.exists():
        raise CheckpointError(f"{directory}: already exists; choose a new --dst")
    tree, config = nets_to_tree(weights)
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        ckptr.save(
            directory,
            ocp.args.Composite(nets=ocp.args.StandardSave(tree), config=ocp.args.JsonSave(config)),
        )


def _path(directory: str | os.PathLike) -> epath.Path:
    try:
        return paths.as_path(directory)
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def resolve(directory: str | os.PathLike) -> epath.Path:
    """The checkpoint to read: ``directory`` itself, or the latest step of a training workdir."""
    d = _path(directory)
    if (d / "config").is_dir() and (d / "nets").is_dir():
        return d
    for root in (d / CHECKPOINTS, d):
        steps = sorted(
            (int(p.name), p) for p in root.glob("*") if p.name.isdigit() and (p / "nets").is_dir()
        )
        if steps:
            return steps[-1][1]
    raise CheckpointError(
        f"{d}: not a p2c-jax checkpoint or training workdir "
        "(no config/ and nets/ items, no checkpoints/<step>/)"
    )


def load_nets(directory: str | os.PathLike, nets: list[str] | None = None) -> NetWeights:
    """Weights of every net (or ``nets``) in our checkpoint or a training workdir's latest one."""
    path = resolve(directory)
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        config = ckptr.restore(path, ocp.args.Composite(config=ocp.args.JsonRestore())).config
        if nets is not None:
            absent = [n for n in nets if n not in config]
            if absent:
                raise CheckpointError(
                    f"{path}: has no {', '.join(absent)} (it holds {', '.join(config)})"
                )
            config = {n: config[n] for n in nets}
        tree = ckptr.restore(path, ocp.args.Composite(nets=ocp.args.StandardRestore())).nets
    return tree_to_nets(tree, config, str(path))

"""Our checkpoint format: an Orbax composite checkpoint with items ``nets`` and ``config``.

``nets`` is ``{net: nested state}`` (string keys, our layouts), ``config`` is
``{net: NetSpec json}``. A training run writes the same two items (plus its optimizer and data
state) into each step of an Orbax ``CheckpointManager`` under ``<workdir>/checkpoints``; every
reader here accepts such a workdir and then uses its latest step. ``steps`` lists a workdir's
steps and ``best_checkpoint`` finds the one that scored best (``--eval_freq``). Nets outside
``NetSpec`` (the FID Inception) use the same layout with items ``params`` and ``config``
(``write_items``, ``read_config``, ``read_tree``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Iterator

import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from p2c_jax import paths
from p2c_jax.nn.models import NetSpec, abstract

CHECKPOINTS = "checkpoints"
EVAL_DIR = "eval"  # a training workdir's evaluation records (train.evaluation)
SETTINGS_FILE = "settings.json"  # under EVAL_DIR: the run's select_by, for best_checkpoint
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
    write_items(directory, "nets", *nets_to_tree(weights))


def write_items(directory: str | os.PathLike, item: str, tree: dict, config: dict) -> None:
    """Write a new checkpoint directory of two Orbax items: ``item`` (a tree of arrays) and
    ``config`` (JSON). Refuses an existing ``directory``."""
    directory = _path(directory)
    if directory.exists():
        raise CheckpointError(f"{directory}: already exists; choose a new --dst")
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        ckptr.save(
            directory,
            ocp.args.Composite(
                **{item: ocp.args.StandardSave(tree), "config": ocp.args.JsonSave(config)}
            ),
        )


def read_config(directory: str | os.PathLike) -> dict:
    """The ``config`` item of a checkpoint directory."""
    with _reading(directory), ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        return ckptr.restore(
            _path(directory), ocp.args.Composite(config=ocp.args.JsonRestore())
        ).config


def read_tree(directory: str | os.PathLike, item: str) -> dict:
    """The array tree ``item`` of a checkpoint directory, as NumPy arrays."""
    with _reading(directory), ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        return ckptr.restore(
            _path(directory), ocp.args.Composite(**{item: ocp.args.StandardRestore()})
        )[item]


@contextlib.contextmanager
def _reading(directory: str | os.PathLike) -> Iterator[None]:
    """An Orbax read of ``directory`` whose failure (a damaged or missing file) is one
    ``CheckpointError`` naming it, without TensorStore's spec of the array.

    When one array's read fails, Orbax closes its event loop while the reads of the others run
    on: each then fails to call back into the closed loop (an unraisable "Event loop is
    closed", printed as a traceback) and asyncio logs its error when its task is collected
    ("Task exception was never retrieved"), even after the command has returned. Both are
    dropped: the first error says it all.
    """
    previous = sys.unraisablehook
    sys.unraisablehook = functools.partial(_unless_closed_loop, previous)
    try:
        yield
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged file fails in many ways
        logging.getLogger("asyncio").addFilter(functools.partial(_not_a_read_of, str(directory)))
        reason = _TENSORSTORE_DETAILS.sub("", str(e))
        raise CheckpointError(
            f"{directory}: damaged checkpoint ({type(e).__name__}: {reason})"
        ) from None
    sys.unraisablehook = previous  # every read finished


_TENSORSTORE_DETAILS = re.compile(r" \[(tensorstore_spec|source locations)=.*", re.DOTALL)


def _unless_closed_loop(hook: Callable, unraisable) -> None:
    e = unraisable.exc_value
    if not (isinstance(e, RuntimeError) and str(e) == "Event loop is closed"):
        hook(unraisable)


def _not_a_read_of(directory: str, record: logging.LogRecord) -> bool:
    failed = record.exc_info[1] if record.exc_info else None
    return not (
        str(record.msg).startswith("Task exception was never retrieved")
        and directory in str(failed)
    )


def _path(directory: str | os.PathLike) -> epath.Path:
    try:
        return paths.as_path(directory)
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def steps(root: str | os.PathLike) -> dict[int, epath.Path]:
    """``{step: folder}`` of the checkpoints saved under ``root`` (a workdir's ``checkpoints/``),
    in ascending order: the folders named by an integer that hold a ``nets`` item."""
    found = [(int(p.name), p) for p in _path(root).glob("*") if p.name.isdigit()]
    return {s: p for s, p in sorted(found) if (p / "nets").is_dir()}


def resolve(directory: str | os.PathLike) -> epath.Path:
    """The checkpoint to read: ``directory`` itself, or the latest step of a training workdir."""
    d = _path(directory)
    if (d / "config").is_dir() and (d / "nets").is_dir():
        return d
    for root in (d / CHECKPOINTS, d):
        found = steps(root)
        if found:
            return found[max(found)]
    raise CheckpointError(
        f"{d}: not a p2c-jax checkpoint or training workdir "
        "(no config/ and nets/ items, no checkpoints/<step>/)"
    )


def metric(select_by: str) -> Callable[[dict], float]:
    """A step's ``select_by`` value from its Orbax metrics (lower is better; absent: inf)."""
    return lambda m: float(m.get(select_by, math.inf))


def best_step(workdir: str | os.PathLike, select_by: str | None = None) -> int | None:
    """The kept step with the lowest ``select_by`` metric (default: the run's), or None."""
    workdir = _path(workdir)
    if select_by is None:
        settings = workdir / EVAL_DIR / SETTINGS_FILE
        select_by = json.loads(settings.read_text()).get("select_by") if settings.exists() else None
    select_by = select_by or "fid"
    manager = ocp.CheckpointManager(
        workdir / CHECKPOINTS,
        options=ocp.CheckpointManagerOptions(
            read_only=True, create=False, best_fn=metric(select_by), best_mode="min"
        ),
    )
    try:
        with_metrics = [s for s in steps(workdir / CHECKPOINTS) if manager.metrics(s) is not None]
        return manager.best_step() if with_metrics else None
    finally:
        manager.close()


def best_checkpoint(workdir: str | os.PathLike, select_by: str | None = None) -> epath.Path:
    """The checkpoint folder of ``best_step``; CheckpointError when no step has metrics."""
    workdir = _path(workdir)
    if not (workdir / CHECKPOINTS).is_dir():
        raise CheckpointError(f"{workdir}: not a training workdir (no {CHECKPOINTS}/)")
    step = best_step(workdir, select_by)
    if step is None:
        raise CheckpointError(
            f"{workdir}: no checkpoint has evaluation metrics (train with --eval_freq N)"
        )
    return workdir / CHECKPOINTS / str(step)


def load_nets(directory: str | os.PathLike, nets: list[str] | None = None) -> NetWeights:
    """Weights of every net (or ``nets``) in our checkpoint or a training workdir's latest one."""
    path = resolve(directory)
    config = read_config(path)
    if nets is not None:
        absent = [n for n in nets if n not in config]
        if absent:
            raise CheckpointError(
                f"{path}: has no {', '.join(absent)} (it holds {', '.join(config)})"
            )
        config = {n: config[n] for n in nets}
    return tree_to_nets(read_tree(path, "nets"), config, str(path))

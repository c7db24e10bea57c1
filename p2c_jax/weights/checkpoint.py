"""Our checkpoint format: an Orbax composite checkpoint with items ``nets`` and ``config``.

``nets`` is ``{net: nested state}`` (string keys, our layouts), ``config`` is
``{net: NetSpec json}``. A training run writes the same two items (plus its optimizer and data
state) into each step of an Orbax ``CheckpointManager`` under ``<workdir>/checkpoints``; every
reader here accepts such a workdir and then uses its newest step that restores (``resolve``: a
damaged newer one is named in a warning line, never changed). ``steps`` lists a workdir's steps
and ``best_checkpoint`` finds the one that scored best (``--eval_freq``). Nets outside
``NetSpec`` (the FID Inception) use the same layout with items ``params`` and ``config``
(``write_items``, ``read_config``, ``read_tree``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterator

import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from p2c_jax import paths
from p2c_jax.nn.models import NetSpec, abstract
from p2c_jax.weights.orbax_quiet import quiet_failures

CHECKPOINTS = "checkpoints"
EVAL_DIR = "eval"  # a training workdir's evaluation records (train.evaluation)
SETTINGS_FILE = "settings.json"  # under EVAL_DIR: the run's select_by, for best_checkpoint
NetWeights = dict[str, tuple[NetSpec, nnx.State]]
# TensorStore's status for bytes it cannot read back (truncated, garbled, missing); its other
# codes (UNAVAILABLE, PERMISSION_DENIED, ...) and Orbax's own checks (a shape or tree that does
# not fit) are not damage
_DAMAGE_STATUS = re.compile(r"^(DATA_LOSS|OUT_OF_RANGE|FAILED_PRECONDITION|NOT_FOUND): ")


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
    ``CheckpointError`` naming it, without TensorStore's spec of the array, and without the
    aftermath of the failed read (``orbax_quiet``)."""
    try:
        with quiet_failures():
            yield
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged file fails in many ways
        reason = _TENSORSTORE_DETAILS.sub("", str(e))
        raise CheckpointError(
            f"{directory}: damaged checkpoint ({type(e).__name__}: {reason})"
        ) from None


_TENSORSTORE_DETAILS = re.compile(r" \[(tensorstore_spec|source locations)=.*", re.DOTALL)


def _path(directory: str | os.PathLike) -> epath.Path:
    try:
        return paths.as_path(directory)
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def damage(e: BaseException, where: epath.Path) -> str | None:
    """Why checkpoint ``where`` does not restore when ``e`` (or the error it came from) says
    its files are damaged: a missing file, metadata that is not JSON, bytes TensorStore cannot
    read. None for any other error (a programming error), which callers raise again."""
    while e is not None:
        if isinstance(e, (FileNotFoundError, UnicodeDecodeError, json.JSONDecodeError)) or (
            type(e) is ValueError and _DAMAGE_STATUS.match(str(e))
        ):
            line = f"{type(e).__name__}: {e}" if isinstance(e, OSError) else str(e)
            # one line, "; " left to separate the fields of the lines that quote it
            line = line.splitlines()[0].replace(f"{where}/", "").replace(";", ",")
            return line if len(line) <= 200 else line[:199] + "…"
        e = e.__cause__ or e.__context__
    return None


def steps(root: str | os.PathLike) -> dict[int, epath.Path]:
    """``{step: folder}`` of the checkpoints saved under ``root`` (a workdir's ``checkpoints/``),
    in ascending order: the folders named by an integer that hold a ``nets`` item."""
    found = [(int(p.name), p) for p in _path(root).glob("*") if p.name.isdigit()]
    return {s: p for s, p in sorted(found) if (p / "nets").is_dir()}


def is_checkpoint(directory: epath.Path) -> bool:
    """Whether ``directory`` is one checkpoint (its own config/ and nets/ items)."""
    return (directory / "config").is_dir() and (directory / "nets").is_dir()


def workdir_steps(directory: str | os.PathLike) -> dict[int, epath.Path]:
    """``steps`` of a training workdir (or of its ``checkpoints/``); CheckpointError if none."""
    d = _path(directory)
    for root in (d / CHECKPOINTS, d):
        found = steps(root)
        if found:
            return found
    raise CheckpointError(
        f"{d}: not a p2c-jax checkpoint or training workdir "
        "(no config/ and nets/ items, no checkpoints/<step>/)"
    )


def resolve(directory: str | os.PathLike) -> epath.Path:
    """The checkpoint to read: ``directory`` itself, or the newest step of a training workdir
    whose ``config`` and ``nets`` restore; each newer step that does not is named in one warning
    line (and left as it is: a reader changes nothing in a workdir a run may be writing)."""
    d = _path(directory)
    if is_checkpoint(d):
        return d
    found = workdir_steps(d)
    damaged = []
    for step in sorted(found, reverse=True):
        try:
            read_config(found[step])
            read_tree(found[step], "nets")
        except Exception as e:  # narrowed by damage(): anything else raises
            why = damage(e, found[step])
            if why is None:
                raise
            damaged.append((step, why))
            continue
        for bad, why in damaged:
            logging.getLogger(__name__).warning(
                f"checkpoint step {bad} of {d} does not restore ({why}); using step {step}"
            )
        return found[step]
    raise CheckpointError(
        f"{d}: no checkpoint restores ("
        + "; ".join(f"step {step}: {why}" for step, why in damaged)
        + ")"
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
    """Weights of every net (or ``nets``) in our checkpoint or a training workdir's newest one
    that restores; a damaged checkpoint raises CheckpointError naming the others to choose."""
    path = resolve(directory)
    try:
        config = read_config(path)
        tree = read_tree(path, "nets")
    except Exception as e:  # narrowed by damage(): anything else raises
        why = damage(e, path)
        if why is None:
            raise
        raise CheckpointError(f"{path}: does not restore ({why}){_others(path)}") from None
    if nets is not None:
        absent = [n for n in nets if n not in config]
        if absent:
            raise CheckpointError(
                f"{path}: has no {', '.join(absent)} (it holds {', '.join(config)})"
            )
        config = {n: config[n] for n in nets}
    return tree_to_nets(tree, config, str(path))


def _others(path: epath.Path) -> str:
    """How to choose another step than ``path``, when it is one step of a workdir."""
    others = [str(s) for s in steps(path.parent) if str(s) != path.name]
    if not (path.name.isdigit() and others):
        return ""
    return (
        f"; pass another of its steps ({', '.join(others)}) or the workdir "
        f"{path.parent.parent} itself (its newest step that restores)"
    )

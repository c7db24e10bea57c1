"""The devices a program runs on: the one mesh factory, its shardings and placement, and the one
predicate that picks the XLA:CPU forms (``docs/benchmarks.md`` has their measurements).

Training and inference run data-parallel over a 1-D mesh, axis ``data``, spanning every device
of every process: parameters replicated, batches split on their first axis.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "data"
PLANS = ("auto", "cpu", "accelerator")


def uses_cpu_forms(devices: Sequence[jax.Device], plan: str = "auto") -> bool:
    """Whether programs for ``devices`` take the forms tuned for XLA:CPU (convolutions by shape,
    a staged training step, image-by-image inference): ``plan`` ``cpu`` or ``accelerator``
    forces them on or off (tests run the accelerator forms on CPU); ``auto`` follows the
    devices themselves, never the host's default backend."""
    if plan not in PLANS:
        raise ValueError(f"unknown plan {plan!r}: expected one of {', '.join(PLANS)}")
    if plan != "auto":
        return plan == "cpu"
    return all(d.platform == "cpu" for d in devices)


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over every device of every process (or ``devices``), axis ``data``."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(AXIS))


def abstract_replicated(tree, mesh: Mesh):
    """``tree``'s shapes and dtypes as ``ShapeDtypeStruct``s replicated on ``mesh``: what
    restoring and ahead-of-time compilation take in place of arrays."""
    sharding = replicated(mesh)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


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


def host_value(x) -> np.ndarray:
    """A replicated global array as a host numpy array (any process; no collective)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(x.addressable_data(0))
    return np.asarray(x)

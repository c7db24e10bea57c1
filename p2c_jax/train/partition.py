"""How the step's one body (``step.TrainStep``) becomes compiled programs over a mesh.

- ``Fused``: the whole step under one ``jax.jit``, the state donated, explicit in and out
  shardings (parameters replicated, the batch split on ``data``): for GPUs and TPUs.
- ``Staged``: each stage its own cached ``jax.jit``, run one after the other, for XLA:CPU,
  where the fused step's first compile costs about 2.8x the stages' (docs/benchmarks.md);
  each step ends by giving the C heap's free pages back to the system (``malloc_trim``: on
  CPU the device buffers live there, and glibc keeps freed pages resident).

Both compute the same step on global arrays: XLA inserts the reductions of gradients and
metrics over devices and hosts. ``make_step`` picks one from the mesh's devices.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import jax
from jax.sharding import Mesh

from p2c_jax.parallel import batch_sharding, replicated, uses_cpu_forms
from p2c_jax.train.step import STAGES, TrainStep


class Fused:
    """The step as one program: ``lower``/``__call__`` take global arrays placed as
    ``shardings`` says (state and face state replicated, batches sharded)."""

    def __init__(self, step: TrainStep, mesh: Mesh):
        rep, dat = replicated(mesh), batch_sharding(mesh)
        self.in_shardings = (rep, rep, dat, dat)
        self.program = jax.jit(
            lambda *args: step(lambda name: getattr(step, name), *args),
            in_shardings=self.in_shardings,
            out_shardings=(rep, rep),
            donate_argnums=(0,),
        )

    def __call__(self, state, face_state, real_A, real_B):
        return self.program(state, face_state, real_A, real_B)


def _find_malloc_trim() -> Callable | None:
    """glibc's ``malloc_trim``; None elsewhere."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError, TypeError):
        return None


_MALLOC_TRIM = _find_malloc_trim()


class Staged:
    """The step as one program per stage, each compiled once and donating what ``STAGES``
    says; the inputs are placed as for ``Fused`` and XLA propagates their shardings."""

    def __init__(self, step: TrainStep, mesh: Mesh):
        self.step = step
        self.programs = {
            name: jax.jit(getattr(step, name), donate_argnums=donate)
            for name, donate in STAGES.items()
        }

    def __call__(self, state, face_state, real_A, real_B):
        out = self.step(self.programs.__getitem__, state, face_state, real_A, real_B)
        if _MALLOC_TRIM is not None:
            jax.block_until_ready(out)
            _MALLOC_TRIM(0)
        return out


def make_step(step: TrainStep, mesh: Mesh, plan: str = "auto") -> Fused | Staged:
    """``step`` over ``mesh``: ``Staged`` where the mesh's devices take the XLA:CPU forms
    (``parallel.uses_cpu_forms``; ``plan`` can force either), else ``Fused``."""
    partition = Staged if uses_cpu_forms(list(mesh.devices.flat), plan) else Fused
    return partition(step, mesh)

"""How the step's one body (``step.TrainStep``) becomes compiled programs over a mesh.

- ``Fused``: the whole step under one ``jax.jit``, the state donated, explicit in and out
  shardings (parameters replicated, the batch split on ``data``): for GPUs and TPUs. The
  generator calls of a call stage run as one ``lax.map``, so the program holds the generator
  twice (the translations, the later calls), not six times.
- ``Staged``: each stage its own cached ``jax.jit``, a call stage's forward and backward
  passes programs called once per generator call, for XLA:CPU: there the fused step's first
  compile costs more than the stages', and a generator's backward pass inside a loop runs
  several times slower than outside one (docs/benchmarks.md). Each step ends by giving the C
  heap's free pages back to the system (``malloc_trim``: on CPU the device buffers live there,
  and glibc keeps freed pages resident).

Both compute the same step: staged on global arrays, whose reductions over devices and hosts
XLA inserts; fused per device, with one mean over devices per update. ``make_step`` picks one
from the mesh's devices.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from p2c_jax.parallel import AXIS, batch_sharding, replicated, uses_cpu_forms
from p2c_jax.train.step import CALL_LOSSES, CALL_STAGES, STAGES, TrainStep


def _stacked(items: list) -> object:
    return jax.tree.map(lambda *a: jnp.stack(a), *items)


def _unstacked(tree, n: int) -> list:
    return [jax.tree.map(lambda a: a[i], tree) for i in range(n)]


class _InOneProgram:
    """``step.Runner`` inside one traced program: each call stage as one ``lax.map`` over its
    items stacked, with ``each_grad`` a call's forward and backward inside one iteration."""

    def __init__(self, step: TrainStep):
        self.step = step

    def stage(self, name: str) -> Callable:
        return getattr(self.step, name)

    def each_vjp(self, name: str, items: list[tuple]) -> tuple[list, Callable[[list], list]]:
        call, n = getattr(self.step, name), len(items)
        out, pullback = jax.vjp(
            lambda *args: jax.lax.map(lambda a: call(*a), args), *_stacked(items)
        )
        return _unstacked(out, n), lambda cts: _unstacked(pullback(_stacked(cts)), n)

    def each_grad(self, name: str, loss: str, items: list[tuple[tuple, tuple]]) -> list:
        call, loss = getattr(self.step, name), getattr(self.step, loss)

        def one(item):
            args, loss_args = item
            (_, terms), cts = jax.value_and_grad(
                lambda *a: loss(call(*a), *loss_args), tuple(range(len(args))), has_aux=True
            )(*args)
            return terms, cts

        return _unstacked(jax.lax.map(one, _stacked(items)), len(items))


class Fused:
    """The step as one program: ``lower``/``__call__`` take global arrays placed as
    ``shardings`` says (state and face state replicated, batches sharded). Each device runs
    the body on its slice of the batch (``shard_map``, ``TrainStep.per_device``), so the only
    cross-device traffic is each update's one mean of its gradients and metrics (XLA's
    partitioner, given global arrays, reduces a gradient in every iteration of the call
    stages' loops)."""

    def __init__(self, step: TrainStep, mesh: Mesh):
        rep, dat = replicated(mesh), batch_sharding(mesh)
        self.in_shardings = (rep, rep, dat, dat)
        share = step.per_device(AXIS)
        body = jax.shard_map(
            functools.partial(share, _InOneProgram(share)),
            mesh=mesh,
            in_specs=(P(), P(), P(AXIS), P(AXIS)),
            out_specs=(P(), P()),
            check_vma=False,
        )
        self.program = jax.jit(
            body,
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


def _method(name: str, step: TrainStep, *args):
    return getattr(step, name)(*args)


def _vjp_of(name: str, step: TrainStep, *args):
    return jax.vjp(getattr(step, name), *args)


def _grad_of_output(name: str, step: TrainStep, out, *loss_args):
    loss = getattr(step, name)
    (_, terms), ct = jax.value_and_grad(lambda o: loss(o, *loss_args), has_aux=True)(out)
    return terms, ct


def _programs(fn: Callable, donated: dict[str, tuple[int, ...]]) -> dict[str, Callable]:
    """``fn(name, step, ...)`` jitted per name, ``step`` static, donating ``donated[name]`` (of
    the arguments after ``step``): steps that compare equal (``TrainStep.__eq__``) share jax's
    cache of traced and compiled programs, so a second run in one process neither traces nor
    compiles again."""
    return {
        name: jax.jit(
            functools.partial(fn, name),
            static_argnums=0,
            donate_argnums=tuple(i + 1 for i in donate),
        )
        for name, donate in donated.items()
    }


_STAGE_PROGRAMS = _programs(_method, STAGES)
_FORWARDS = _programs(_vjp_of, dict.fromkeys(CALL_STAGES, ()))
_LOSS_GRADS = _programs(_grad_of_output, dict.fromkeys(CALL_LOSSES, ()))
_BACKWARD = jax.jit(lambda pullback, ct: pullback(ct))


class Staged:
    """The step as one program per stage, each compiled once per process (``_programs``),
    donating what ``STAGES`` says.
    A call stage is two programs, its forward pass with the vjp and the vjp's backward pass,
    each run once per call; ``each_grad`` runs them around a third, the loss's gradient. The
    inputs are placed as for ``Fused``; XLA propagates their shardings. It is the
    ``step.Runner`` of its own body."""

    def __init__(self, step: TrainStep, mesh: Mesh):
        self.step = step

    def stage(self, name: str) -> Callable:
        return functools.partial(_STAGE_PROGRAMS[name], self.step)

    def each_vjp(self, name: str, items: list[tuple]) -> tuple[list, Callable[[list], list]]:
        outs, pullbacks = zip(*(_FORWARDS[name](self.step, *item) for item in items))

        def pullback(cts: list) -> list:
            return [_BACKWARD(p, ct) for p, ct in zip(pullbacks, cts)]

        return list(outs), pullback

    def each_grad(self, name: str, loss: str, items: list[tuple[tuple, tuple]]) -> list:
        results = []
        for args, loss_args in items:
            out, pullback = _FORWARDS[name](self.step, *args)
            terms, ct = _LOSS_GRADS[loss](self.step, out, *loss_args)
            results.append((terms, _BACKWARD(pullback, ct)))
            del out, pullback  # one call's residuals at a time
        return results

    def __call__(self, state, face_state, real_A, real_B):
        out = self.step(self, state, face_state, real_A, real_B)
        if _MALLOC_TRIM is not None:
            jax.block_until_ready(out)
            _MALLOC_TRIM(0)
        return out


def make_step(step: TrainStep, mesh: Mesh, plan: str = "auto") -> Fused | Staged:
    """``step`` over ``mesh``: ``Staged`` where the mesh's devices take the XLA:CPU forms
    (``parallel.uses_cpu_forms``; ``plan`` can force either), else ``Fused``."""
    partition = Staged if uses_cpu_forms(list(mesh.devices.flat), plan) else Fused
    return partition(step, mesh)

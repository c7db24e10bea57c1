"""``p2c-train --compile_only --topology NAME``: the update ``p2c-train`` would run on a TPU
slice, compiled on this host for the slice's devices, and what it costs per chip.

The step is ``partition.make_step``'s for the slice's mesh (``Fused``: one program, the
state donated, parameters replicated, batches split on ``data``), lowered from shapes only
(``TrainModel.abstract_state``); nothing runs and no weights are read. The report
(``aot_report``: memory, collectives, FLOPs, roofline against ``topology.CHIPS``) is printed
as a table and written to ``WORKDIR/compile_report.json``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from p2c_jax import aot, aot_report, topology
from p2c_jax.nn.face_id import FaceID
from p2c_jax.nn.models import NetSpec, abstract
from p2c_jax.nn.numerics import Numerics
from p2c_jax.parallel import abstract_replicated, batch_sharding, make_mesh
from p2c_jax.train.config import Config
from p2c_jax.train.errors import TrainError
from p2c_jax.train.loop import checked_specs
from p2c_jax.train.partition import Fused, make_step
from p2c_jax.train.state import TrainModel
from p2c_jax.train.step import TrainStep

#: the face-ID net compiled without ``--faceid_weights``: InsightFace's MobileFaceNet
FACE_SPEC = NetSpec("mobilefacenet", 512)


def _face(cfg: Config) -> FaceID | None:
    """The face-ID net's shapes when the Face-ID loss is on (``--faceid_weights``' spec, else
    ``FACE_SPEC``): compiling needs no weights."""
    if not cfg.hparams.faceid_weight:
        return None
    spec = FACE_SPEC
    if cfg.faceid_weights:
        from p2c_jax.weights.convert import load_face_id

        spec = load_face_id(cfg.faceid_weights).spec
    return FaceID(spec, nnx.state(abstract(spec)))


@dataclasses.dataclass
class CompiledStep:
    """The fused step for a mesh: its program, the abstract arguments it was lowered with,
    and the compiled result (``aot.Refused`` where it does not fit the chip's memory)."""

    step: Fused
    args: tuple
    compiled: jax.stages.Compiled | aot.Refused
    lower_seconds: float
    compile_seconds: float


def compile_step(
    cfg: Config,
    mesh: Mesh,
    specs: dict[str, NetSpec] | None = None,
    compiler_options: dict | None = None,
) -> CompiledStep:
    """Lower and compile ``cfg``'s training step for ``mesh`` from shapes, as ``loop.setup``
    builds it (same checks, numerics, step and shardings); ``specs`` replaces the six nets
    that ``cfg`` builds (smaller discriminators compile faster); ``compiler_options`` go to
    ``Lowered.compile`` (XLA's options; ``exec_time_optimization_effort`` and the like)."""
    specs = checked_specs(cfg, mesh, specs)
    face = _face(cfg)
    devices = list(mesh.devices.flat)
    numerics = Numerics.for_devices(devices, cfg.precision, cfg.plan, cfg.matmul_kernel_grads)
    model = TrainModel(specs, face, numerics)
    step = make_step(TrainStep(model, cfg.hparams, remat=cfg.remat), mesh, cfg.plan)
    if not isinstance(step, Fused):
        raise TrainError(f"--plan {cfg.plan}: a staged step is no one program to compile")
    batch = jax.ShapeDtypeStruct(
        (cfg.batch_size, cfg.img_size, cfg.img_size, 3), jnp.float32, sharding=batch_sharding(mesh)
    )
    face_state = abstract_replicated(face.state, mesh) if face is not None else None
    args = (model.abstract_state(cfg.hparams, mesh), face_state, batch, batch)
    t0 = time.perf_counter()
    lowered = step.program.lower(*args)
    t1 = time.perf_counter()
    compiled = aot.compile_program(lowered, compiler_options)
    return CompiledStep(step, args, compiled, t1 - t0, time.perf_counter() - t1)


def report(
    cfg: Config,
    name: str,
    num_slices: int = 1,
    max_batch_search: bool = False,
    on_try: Callable[[dict], None] = aot_report.print_try,
) -> dict:
    """Compile ``cfg``'s step for ``num_slices`` slices ``name`` and say what it costs per
    chip (the keys of ``aot_report.REPORT``); with ``max_batch_search`` also the largest
    per-chip batch that fits, one compile per batch tried (``aot_report.search_max_batch``)."""
    devices = topology.devices(name, num_slices)
    mesh = make_mesh(devices)

    def at(batch_per_chip: int) -> dict:
        batch_cfg = dataclasses.replace(cfg, batch_size=batch_per_chip * len(devices))
        return describe(batch_cfg, name, num_slices, devices, compile_step(batch_cfg, mesh))

    first = describe(cfg, name, num_slices, devices, compile_step(cfg, mesh))
    if not max_batch_search:
        return first
    return aot_report.search_max_batch(at, first, on_try)


def describe(
    cfg: Config, name: str, num_slices: int, devices: Sequence[jax.Device], built: CompiledStep
) -> dict:
    """The report of a compiled step (``report``)."""
    costs = aot_report.costs(
        built.compiled, devices, cfg.precision, cfg.batch_size // len(devices), num_slices
    )
    return {
        "topology": name,
        "num_slices": num_slices,
        "light": cfg.light,
        "ch": cfg.ch,
        "img_size": cfg.img_size,
        "precision": cfg.precision,
        "remat": cfg.remat,
        "faceid": bool(cfg.hparams.faceid_weight),
        "programs": 1,
        **costs,
        "lower_seconds": round(built.lower_seconds, 2),
        "compile_seconds": round(built.compile_seconds, 2),
    }


def table(r: dict) -> str:
    """The report as lines for a terminal."""
    net = (
        f"{'light' if r['light'] else 'full'} ch {r['ch']} at {r['img_size']} px, "
        f"{r['precision']}{', remat' if r['remat'] else ''}"
    )
    return aot_report.table(r, net)

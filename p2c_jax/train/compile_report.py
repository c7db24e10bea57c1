"""``p2c-train --compile_only --topology NAME``: the update ``p2c-train`` would run on a TPU
slice, compiled on this host for the slice's devices, and what it costs per chip.

The step is ``partition.make_step``'s for the slice's mesh (``Fused``: one program, the
state donated, parameters replicated, batches split on ``data``), lowered from shapes only
(``TrainModel.abstract_state``); nothing runs and no weights are read. The report
(``aot``: memory, collectives, FLOPs, roofline against ``topology.CHIPS``) is printed as a
table and written to ``WORKDIR/compile_report.json``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from p2c_jax import aot, paths, topology
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

REPORT = "compile_report.json"
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
    and the compiled result."""

    step: Fused
    args: tuple
    compiled: jax.stages.Compiled
    lower_seconds: float
    compile_seconds: float


def compile_step(cfg: Config, mesh: Mesh, specs: dict[str, NetSpec] | None = None) -> CompiledStep:
    """Lower and compile ``cfg``'s training step for ``mesh`` from shapes, as ``loop.setup``
    builds it (same checks, numerics, step and shardings); ``specs`` replaces the six nets
    that ``cfg`` builds (smaller discriminators compile faster)."""
    specs = checked_specs(cfg, mesh, specs)
    face = _face(cfg)
    devices = list(mesh.devices.flat)
    model = TrainModel(specs, face, Numerics.for_devices(devices, cfg.precision, cfg.plan))
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
    compiled = lowered.compile()
    return CompiledStep(step, args, compiled, t1 - t0, time.perf_counter() - t1)


def report(cfg: Config, name: str, num_slices: int = 1) -> dict:
    """Compile ``cfg``'s step for ``num_slices`` TPU slices ``name`` and say what it costs per
    chip (the keys of ``REPORT``)."""
    devices = topology.devices(name, num_slices)
    mesh = make_mesh(devices)
    built = compile_step(cfg, mesh)
    return describe(cfg, name, num_slices, devices, built)


def describe(
    cfg: Config, name: str, num_slices: int, devices: Sequence[jax.Device], built: CompiledStep
) -> dict:
    """The report of a compiled step (``report``)."""
    chip = topology.chip(devices)
    mem = aot.memory(built.compiled)
    program = aot.Program(built.compiled.as_text())
    xla = aot.cost(built.compiled)
    per_call = program.per_call(xla)
    flops, traffic = per_call["flops"], per_call["bytes accessed"]
    seconds = aot.roofline_seconds(
        flops, traffic, chip.peak_flops(cfg.precision), chip.hbm_bytes_per_second
    )
    return {
        "topology": name,
        "num_slices": num_slices,
        "chips": len(devices),
        "hosts": len({d.process_index for d in devices}),
        "chip": chip.name,
        "hbm_bytes": chip.hbm_bytes,
        "light": cfg.light,
        "ch": cfg.ch,
        "img_size": cfg.img_size,
        "precision": cfg.precision,
        "remat": cfg.remat,
        "faceid": bool(cfg.hparams.faceid_weight),
        "global_batch": cfg.batch_size,
        "batch_per_chip": cfg.batch_size // len(devices),
        "memory_bytes": {
            "arguments": mem.arguments,
            "outputs": mem.outputs,
            "temporaries": mem.temporaries,
            "aliased": mem.aliased,
            "code": mem.code,
            "total": mem.total,
        },
        "fits": mem.total <= chip.hbm_bytes,
        "programs": 1,
        "collectives": [dataclasses.asdict(c) for c in program.collectives()],
        "unknown_loop_trip_counts": program.unknown_trip_counts,
        "flops_per_step": flops,
        "bytes_accessed_per_step": traffic,
        "xla_cost_analysis": xla,
        "roofline_seconds": seconds,
        "images_per_second": cfg.batch_size / num_slices / seconds,
        "lower_seconds": round(built.lower_seconds, 2),
        "compile_seconds": round(built.compile_seconds, 2),
    }


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def table(r: dict) -> str:
    """The report as lines for a terminal."""
    m = r["memory_bytes"]
    rows = [
        (
            "topology",
            f"{r['topology']} x {r['num_slices']}: {r['chips']} {r['chip']} chips, "
            f"{r['hosts']} hosts",
        ),
        (
            "net",
            f"{'light' if r['light'] else 'full'} ch {r['ch']} at {r['img_size']} px, "
            f"{r['precision']}{', remat' if r['remat'] else ''}",
        ),
        ("batch", f"{r['global_batch']} global, {r['batch_per_chip']} per chip"),
        (
            "compile",
            f"{r['compile_seconds']:.1f} s (lowering {r['lower_seconds']:.1f} s), "
            f"{r['programs']} program",
        ),
        (
            "memory/chip",
            f"{_size(m['total'])} of {_size(r['hbm_bytes'])}: "
            f"{'fits' if r['fits'] else 'does not fit'}",
        ),
        (
            "",
            f"arguments {_size(m['arguments'])}, outputs {_size(m['outputs'])}, "
            f"temporaries {_size(m['temporaries'])}, donated {_size(m['aliased'])}, "
            f"code {_size(m['code'])}",
        ),
    ]
    for c in r["collectives"] or [{"kind": "none", "count": 0, "bytes": 0}]:
        rows.append(("collectives", f"{c['kind']}: {c['count']} per step, {_size(c['bytes'])}"))
    rows += [
        (
            "flops/chip",
            f"{r['flops_per_step'] / 1e9:.2f} GFLOP, "
            f"{_size(r['bytes_accessed_per_step'])} accessed per step",
        ),
        (
            "roofline",
            f"{r['roofline_seconds'] * 1e3:.2f} ms per step, at most "
            f"{r['images_per_second']:.0f} images/s per slice",
        ),
    ]
    return "\n".join(f"{k:<12} {v}" for k, v in rows)


def write(r: dict, workdir: str) -> str:
    """``r`` as ``workdir/compile_report.json``; its path."""
    path = paths.as_path(workdir) / REPORT
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(r, indent=2) + "\n")
    return str(path)

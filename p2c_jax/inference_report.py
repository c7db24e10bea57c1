"""``p2c-infer --compile_only --topology NAME``: the generator's forward pass that ``p2c-infer``
runs, compiled on this host for a TPU slice's (or GPU machine's) chips, and what it costs per
chip.

``p2c-infer`` runs one program per host over that host's chips (``BatchedGenerator`` on
``jax.local_devices()``): parameters replicated, the batch split, nothing crossing chips. The
program compiled is the one each host of the slice runs (on its first host's chips); the
report counts every host's chips for the slice's images per second.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import jax

from p2c_jax import aot, aot_report, topology
from p2c_jax.inference import batch_per_device, default_batch_size, lower_generator
from p2c_jax.nn.models import NetSpec


def host_devices(devices: Sequence[jax.Device]) -> list[jax.Device]:
    """The chips of ``devices``' first host: the devices ``p2c-infer`` runs on there."""
    return [d for d in devices if d.process_index == devices[0].process_index]


def compile_generator(
    spec: NetSpec, precision: str, devices: Sequence[jax.Device], batch_per_chip: int
) -> tuple[jax.stages.Compiled | aot.Refused, float, float]:
    """``p2c-infer``'s forward pass on ``devices`` at ``batch_per_chip`` images each, compiled
    (or refused for memory): the program, its lowering and compile seconds."""
    t0 = time.perf_counter()
    lowered = lower_generator(spec, precision, devices, batch_per_chip * len(devices))
    t1 = time.perf_counter()
    compiled = aot.compile_program(lowered)
    return compiled, t1 - t0, time.perf_counter() - t1


def report(
    spec: NetSpec,
    precision: str,
    name: str,
    num_slices: int = 1,
    batch_size: int | None = None,
    max_batch_search: bool = False,
    on_try: Callable[[dict], None] = aot_report.print_try,
) -> dict:
    """Compile a ``spec`` generator as ``p2c-infer`` runs it on each host of ``num_slices``
    slices ``name``, ``batch_size`` images per pass on a host (``p2c-infer --batch_size``;
    default 8 per chip), and say what it costs per chip (``aot_report``'s keys); with
    ``max_batch_search`` also the largest per-chip batch that fits."""
    devices = topology.devices(name, num_slices)
    host = host_devices(devices)

    def at(batch_per_chip: int) -> dict:
        compiled, lower_seconds, compile_seconds = compile_generator(
            spec, precision, host, batch_per_chip
        )
        return {
            "topology": name,
            "num_slices": num_slices,
            "light": spec.light,
            "ch": spec.ch,
            "img_size": spec.img_size,
            "precision": precision,
            "programs": 1,
            "program_chips": len(host),
            **aot_report.costs(compiled, devices, precision, batch_per_chip, num_slices),
            "lower_seconds": round(lower_seconds, 2),
            "compile_seconds": round(compile_seconds, 2),
        }

    first = at(batch_per_device(batch_size or default_batch_size(host), host))
    if not max_batch_search:
        return first
    return aot_report.search_max_batch(at, first, on_try)


def table(r: dict) -> str:
    """The report as lines for a terminal."""
    net = (
        f"{'light' if r['light'] else 'full'} generator ch {r['ch']} at {r['img_size']} px, "
        f"{r['precision']}, one program per host on its {r['program_chips']} chips"
    )
    return aot_report.table(r, net)

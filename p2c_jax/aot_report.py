"""The report of ``--compile_only`` (``p2c-train``'s step, ``p2c-infer``'s generator): what a
program compiled for a slice's chips costs per chip, as a table and as
``compile_report.json``, and the search for the largest per-chip batch that fits.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence

import jax
from jax.stages import Compiled

from p2c_jax import aot, paths, topology

REPORT = "compile_report.json"
#: the largest per-chip batch the search tries
SEARCH_LIMIT = 1024
_MEMORY_KEYS = (*(f.name for f in dataclasses.fields(aot.Memory)), "total")
# what only a compiled program tells: None in the report of a refused one
_PROGRAM_KEYS = (
    "collectives",
    "unknown_loop_trip_counts",
    "flops_per_step",
    "bytes_accessed_per_step",
    "xla_cost_analysis",
    "roofline_seconds",
    "images_per_second",
)


def costs(
    compiled: Compiled | aot.Refused,
    devices: Sequence[jax.Device],
    precision: str,
    batch_per_chip: int,
    num_slices: int = 1,
) -> dict:
    """The report's figures of ``compiled``, one step of ``batch_per_chip`` images on each of
    ``devices`` (every chip of ``num_slices`` slices): memory per chip against the HBM a
    program gets (``Chip.usable_bytes``),
    the collectives, FLOPs and bytes per chip (every loop iteration counted, ``aot.Program``)
    and the roofline. A program the compiler refused (``aot.Refused``) does not fit: its
    ``refused`` message, the total it said it needs, and None for what only a program has."""
    chip = topology.chip(devices)
    images = batch_per_chip * len(devices)
    layout = {
        "chips": len(devices),
        "hosts": len({d.process_index for d in devices}),
        "chip": chip.name,
        "hbm_bytes": chip.hbm_bytes,
        "usable_bytes": chip.usable_bytes,
        "global_batch": images,
        "batch_per_chip": batch_per_chip,
    }
    if isinstance(compiled, aot.Refused):
        return {
            **layout,
            "memory_bytes": {**dict.fromkeys(_MEMORY_KEYS), "total": compiled.required_bytes},
            "fits": False,
            "refused": compiled.message,
            "max_batch_per_chip": None,
            **dict.fromkeys(_PROGRAM_KEYS),
        }
    mem = aot.memory(compiled)
    program = aot.Program(compiled.as_text())
    xla = aot.cost(compiled)
    per_call = program.per_call(xla)
    flops, traffic = per_call["flops"], per_call["bytes accessed"]
    seconds = aot.roofline_seconds(
        flops, traffic, chip.peak_flops(precision), chip.hbm_bytes_per_second
    )
    return {
        **layout,
        "memory_bytes": {**dataclasses.asdict(mem), "total": mem.total},
        "fits": mem.total <= chip.usable_bytes,
        "max_batch_per_chip": None,
        "collectives": [dataclasses.asdict(c) for c in program.collectives()],
        "unknown_loop_trip_counts": program.unknown_trip_counts,
        "flops_per_step": flops,
        "bytes_accessed_per_step": traffic,
        "xla_cost_analysis": xla,
        "roofline_seconds": seconds,
        "images_per_second": images / num_slices / seconds,
    }


def largest_fitting(
    measure: Callable[[int], tuple[int | None, bool]],
    usable: int,
    start: int,
    limit: int = SEARCH_LIMIT,
) -> int:
    """The largest batch in 1..``limit`` that fits, 0 if none, where ``measure(batch)`` is
    (its total bytes, None where unknown; whether it fits), assuming memory grows with the
    batch. It grows about as a line (fixed costs plus so much per image), so after ``start``
    and its double (or half) each batch tried is where the line through two measured batches
    (those bracketing the answer, else the two nearest it) reaches ``usable``, kept strictly
    between the largest batch known to fit and the smallest known not to: a linear memory
    takes four compiles, the last confirming that one image more does not fit. Where the line
    says nothing (flat or unmeasured memory), or the last line's batch did not halve the
    bracket, the next batch doubles the largest that fits or bisects the bracket."""
    seen: dict[int, int] = {}  # batch -> total bytes, where measured
    low, high = 0, limit + 1  # the largest batch known to fit, the smallest known not to
    batch, interpolated = min(max(start, 1), limit), False
    while True:
        total, fits = measure(batch)
        if total is not None:
            seen[batch] = total
        width = high - low
        low, high = (batch, high) if fits else (low, batch)
        if high - low <= 1:
            return low
        slow = interpolated and high <= limit and 2 * (high - low) > width
        batch = None if slow else _line_batch(seen, usable, low, high)
        interpolated = batch is not None
        if batch is None:
            batch = (low + high) // 2 if high <= limit else 2 * low
        batch = min(max(batch, low + 1), high - 1)


def _line_batch(seen: dict[int, int], usable: int, low: int, high: int) -> int | None:
    """Where the line through the two measured batches nearest the bracket ``low``..``high``
    (the bracketing pair where both were measured) reaches ``usable`` (``largest_fitting``);
    None for fewer than two or a flat line."""
    if len(seen) < 2:
        return None
    b1, b2 = sorted(sorted(seen, key=lambda b: min(abs(b - low), abs(b - high)))[:2])
    slope = (seen[b2] - seen[b1]) / (b2 - b1)
    return b1 + math.floor((usable - seen[b1]) / slope) if slope > 0 else None


def search_max_batch(
    compile_at: Callable[[int], dict], first: dict, on_try: Callable[[dict], None]
) -> dict:
    """``first`` (a report of ``costs``' keys) with ``max_batch_per_chip``, found by
    ``largest_fitting`` over the reports ``compile_at(batch_per_chip)``, and
    ``max_batch_search``: each batch tried (``first``'s included), its memory, whether it fit
    (a program the compiler refused did not) and its compile seconds, each also handed to
    ``on_try`` as it comes."""
    tried: dict[int, dict] = {}

    def measure(batch: int) -> tuple[int | None, bool]:
        r = first if batch == first["batch_per_chip"] else compile_at(batch)
        tried[batch] = {
            "batch_per_chip": batch,
            "total_bytes": r["memory_bytes"]["total"],
            "fits": r["fits"],
            "refused": "refused" in r,
            "compile_seconds": r["compile_seconds"],
        }
        on_try(tried[batch])
        return tried[batch]["total_bytes"], tried[batch]["fits"]

    best = largest_fitting(measure, first["usable_bytes"], first["batch_per_chip"])
    return {**first, "max_batch_per_chip": best, "max_batch_search": list(tried.values())}


def size(n: float) -> str:
    """``n`` bytes for a reader: ``512 B``, ``1.50 MiB``; two decimals, so that a need just
    over a chip's memory does not print as equal to it (``15.79 GiB of 15.75 GiB``)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.2f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def print_try(t: dict) -> None:
    """One batch the search tried (``search_max_batch``), as a line on stdout."""
    need = "" if t["total_bytes"] is None else f"{size(t['total_bytes'])} per chip, "
    verdict = "fits" if t["fits"] else "does not fit"
    why = " (the compiler refused it)" if t["refused"] else ""
    print(
        f"batch {t['batch_per_chip']} per chip: {need}{verdict}{why} "
        f"(compiled in {t['compile_seconds']:.1f} s)",
        flush=True,
    )


def table(r: dict, net: str) -> str:
    """The report ``r`` as lines for a terminal; ``net`` says what was compiled."""
    m = r["memory_bytes"]
    of = f"{size(r['usable_bytes'])}" + (
        f" (of {size(r['hbm_bytes'])} HBM)" if r["usable_bytes"] < r["hbm_bytes"] else ""
    )
    rows = [
        (
            "topology",
            f"{r['topology']} x {r['num_slices']}: {r['chips']} {r['chip']} chips, "
            f"{r['hosts']} hosts",
        ),
        ("net", net),
        ("batch", f"{r['global_batch']} global, {r['batch_per_chip']} per chip"),
        (
            "compile",
            f"{r['compile_seconds']:.1f} s (lowering {r['lower_seconds']:.1f} s), "
            f"{r['programs']} program",
        ),
    ]
    if "refused" in r:
        need = "" if m["total"] is None else f"needs {size(m['total'])} of {of}: "
        rows.append(("memory/chip", f"{need}does not fit, the compiler refused it"))
        rows.append(("", r["refused"]))
    else:
        rows += [
            (
                "memory/chip",
                f"{size(m['total'])} of {of}: {'fits' if r['fits'] else 'does not fit'}",
            ),
            (
                "",
                f"arguments {size(m['arguments'])}, outputs {size(m['outputs'])}, "
                f"temporaries {size(m['temporaries'])}, donated {size(m['aliased'])}, "
                f"code {size(m['code'])}; peak {size(m['peak'])}",
            ),
        ]
    if r["max_batch_per_chip"] is not None:
        rows.append(("max batch", f"{r['max_batch_per_chip']} per chip fits (found by compiling)"))
    if "refused" not in r:
        for c in r["collectives"] or [{"kind": "none", "count": 0, "bytes": 0}]:
            rows.append(("collectives", f"{c['kind']}: {c['count']} per step, {size(c['bytes'])}"))
        rows += [
            (
                "flops/chip",
                f"{r['flops_per_step'] / 1e9:.2f} GFLOP, "
                f"{size(r['bytes_accessed_per_step'])} accessed per step",
            ),
            (
                "roofline",
                f"{r['roofline_seconds'] * 1e3:.2f} ms per step, at most "
                f"{r['images_per_second']:.0f} images/s per slice",
            ),
        ]
    return "\n".join(f"{k:<12} {v}" for k, v in rows)


def write(r: dict, folder: str) -> str:
    """``r`` as ``folder/compile_report.json`` (local or ``gs://``); its path."""
    path = paths.as_path(folder) / REPORT
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(r, indent=2) + "\n")
    return str(path)

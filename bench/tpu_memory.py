"""How XLA:TPU decides that a program fits a chip: a batched ``sin(x @ x) @ x``, summed over the
batch, compiled for one chip at sizes around its HBM, with what ``memory_analysis()`` says of
each program it compiled and the bytes it said each refused one needs.

    python bench/tpu_memory.py                          # v5e, x of 4 to 6 GiB (~1 minute)
    python bench/tpu_memory.py --topology v4-8 --gib 8 10 12

The program's temporaries are twice its input by default (``x @ x`` and its sine), so it
crosses a v5e's 15.75 GiB at an input of 5.25 GiB. Needs libtpu (``pip install
"jax[tpu]==<your jax>"``). Prints a Markdown table (docs/tpu.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GiB = 2**30
SIDE = 1024  # each of the batch's matrices: SIDE x SIDE float32, 4 MiB


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--topology", default="v5e-4", help="a TPU slice; one of its chips is used")
    p.add_argument(
        "--gib",
        type=float,
        nargs="+",
        default=[4.0, 5.0, 5.2, 5.4, 5.5, 5.6, 5.8, 6.0],
        help="input sizes, GiB",
    )
    args = p.parse_args()

    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    from p2c_jax import aot, parallel, topology

    devices = topology.devices(args.topology)[:1]
    chip = topology.chip(devices)
    mesh = parallel.make_mesh(devices)

    def program(x):
        return (jnp.sin(x @ x) @ x).sum(axis=0)

    print(f"{chip.name}, {chip.usable_bytes / GiB:.2f} GiB usable\n")
    print("| input | batch | verdict | arguments / outputs / temporaries (GiB) | total or needed |")
    print("|---|---|---|---|---|")
    for gib in args.gib:
        batch = int(gib * GiB / (4 * SIDE * SIDE))
        x = jax.ShapeDtypeStruct(
            (batch, SIDE, SIDE), jnp.float32, sharding=NamedSharding(mesh, PartitionSpec())
        )
        compiled = aot.compile_program(jax.jit(program).lower(x))
        if isinstance(compiled, aot.Refused):
            row = ("refused", "", f"{compiled.required_bytes / GiB:.2f} GiB needed")
        else:
            m = aot.memory(compiled)
            parts = " / ".join(f"{b / GiB:.2f}" for b in (m.arguments, m.outputs, m.temporaries))
            row = ("compiled", parts, f"{m.total / GiB:.2f} GiB")
        print(f"| {gib:.2f} GiB | {batch} | " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()

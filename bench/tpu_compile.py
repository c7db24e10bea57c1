"""Where a TPU compile's time goes: the generator's forward pass and its gradient, compiled for
a TPU slice on this host, with XLA's kernel-gradient convolutions and with them as matrix
products (``Numerics.matmul_kernel_grads``, what p2c-train uses on TPUs).

    python bench/tpu_compile.py                         # light ch 4, 32 px, v5e-4 (~8 minutes)
    python bench/tpu_compile.py --ch 8 --img_size 128 --only forward
    JAX_EXEC_TIME_OPTIMIZATION_EFFORT=-1 python bench/tpu_compile.py   # jax's effort knob

Each program is compiled in a process of its own (its host peak RSS its own). The gradient is
the one each generator call of the training step takes (``TrainStep.translate``: the
convolutions' outputs kept, the rest recomputed), of an L1 and CAM loss. Needs libtpu
(``pip install "jax[tpu]==<your jax>"``). Prints a Markdown table (docs/tpu.md).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = {
    "forward": (False, False),
    "gradient": (True, False),
    "gradient, kernel gradients as matrix products": (True, True),
}


def compile_one(name: str, args: argparse.Namespace) -> dict:
    """Compile program ``name`` here; its figures."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from p2c_jax import aot, topology
    from p2c_jax.nn.models import abstract, training_specs
    from p2c_jax.nn.numerics import Numerics
    from p2c_jax.parallel import abstract_replicated, batch_sharding, make_mesh
    from p2c_jax.train.config import Hparams
    from p2c_jax.train.state import TrainModel
    from p2c_jax.train.step import TrainStep

    grad, matmul = PROGRAMS[name]
    devices = topology.devices(args.topology)
    mesh = make_mesh(devices)
    specs = training_specs(args.ch, args.img_size, light=True)
    model = TrainModel(specs, None, Numerics(args.precision, matmul_kernel_grads=matmul))
    generator = TrainStep(model, Hparams()).translate  # the step's: convolution outputs kept
    spec = specs["genA2B"]

    def loss(params, x):
        y, cam = generator(params, x)
        return jnp.mean(jnp.abs(y - x)) + jnp.mean(cam)

    state = abstract_replicated(nnx.state(abstract(spec)), mesh)
    shape = (len(devices) * args.batch_per_chip, args.img_size, args.img_size, 3)
    x = jax.ShapeDtypeStruct(shape, jnp.float32, sharding=batch_sharding(mesh))
    fn = jax.grad(loss) if grad else generator
    start = time.perf_counter()
    lowered = jax.jit(fn).lower(state, x)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    done = time.perf_counter()
    memory, text = aot.memory(compiled), compiled.as_text()
    per_call = aot.Program(text).per_call(aot.cost(compiled))
    return {
        "program": name,
        "compile_seconds": round(done - lowered_at, 1),
        "lower_seconds": round(lowered_at - start, 1),
        "code_bytes": memory.code,
        "temporaries_bytes": memory.temporaries,
        "flops": per_call["flops"],
        "bytes_accessed": per_call["bytes accessed"],
        "hlo_convolutions": text.count("convolution("),
        "hlo_fusions": text.count(" fusion("),
        "host_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--topology", default="v5e-4")
    p.add_argument("--ch", type=int, default=4)
    p.add_argument("--img_size", type=int, default=32)
    p.add_argument("--batch_per_chip", type=int, default=1)
    p.add_argument("--precision", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--only", nargs="+", choices=("forward", "gradient"), help="programs to run")
    p.add_argument("--one", help=argparse.SUPPRESS)  # the child process's program
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(compile_one(args.one, args)))
        return 0
    names = [n for n in PROGRAMS if not args.only or n.split(",")[0] in args.only]
    flags = [f"--{k}={getattr(args, k)}" for k in ("topology", "ch", "img_size", "precision")]
    flags.append(f"--batch_per_chip={args.batch_per_chip}")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TPU_SKIP_MDS_QUERY": "1"}
    print(
        f"light generator ch {args.ch}, {args.img_size} px, {args.batch_per_chip} per chip, "
        f"{args.precision}, {args.topology}; exec_time_optimization_effort "
        f"{os.environ.get('JAX_EXEC_TIME_OPTIMIZATION_EFFORT', 'default')}\n"
    )
    print(
        "| program | compile | code | temporaries | GFLOP / GB accessed per chip "
        "| HLO convolutions / fusions | host peak RSS |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in names:
        out = subprocess.run(
            [sys.executable, __file__, *flags, "--one", name],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(
            f"| {name} | {r['compile_seconds']} s | {r['code_bytes'] / 1e6:.1f} MB "
            f"| {r['temporaries_bytes'] / 1e6:.1f} MB "
            f"| {r['flops'] / 1e9:.3f} / {r['bytes_accessed'] / 1e9:.2f} "
            f"| {r['hlo_convolutions']} / "
            f"{r['hlo_fusions']} | {r['host_peak_rss_bytes'] / 1e9:.1f} GB |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

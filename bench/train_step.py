"""Seconds per training step, compile time and peak RSS: our JAX step against our PyTorch port of
the original trainer, at the original's defaults (256 x 256, batch 1, light, ch 32, Face-ID on).

    python bench/train_step.py [--img_size 256] [--ch 32] [--steps 5] [--light true]
                               [--baseline ../old]

Three sides: our PyTorch port, our step, our step with ``--remat true``; with ``--baseline`` a
fourth, another checkout's step run by that checkout's own copy of this script. Each runs in its own
process (so that its peak RSS is its own); the table is printed at the end. Random weights: the
arithmetic, not the values, is measured.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # tests/helpers/torch_trainer.py: the reference


COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_jax(args, remat: bool) -> dict:
    import jax
    import numpy as np
    from flax import nnx

    from p2c_jax import parallel
    from p2c_jax.nn.face_id import FaceID
    from p2c_jax.nn.models import NetSpec, build, training_specs
    from p2c_jax.nn.numerics import Numerics
    from p2c_jax.train.config import Hparams
    from p2c_jax.train.partition import make_step
    from p2c_jax.train.state import TrainModel, fresh_nets
    from p2c_jax.train.step import TrainStep

    specs = training_specs(args.ch, args.img_size, args.light)
    face_spec = NetSpec("mobilefacenet", 512)
    face = FaceID(face_spec, nnx.state(build(face_spec)))
    hp = Hparams()
    mesh = parallel.make_mesh(jax.devices()[:1])
    model = TrainModel(specs, face, Numerics.for_devices(jax.devices()[:1]))
    state = parallel.put_replicated(model.init_state(fresh_nets(specs, 0), hp), mesh)
    face_state = parallel.put_replicated(face.state, mesh)
    step = make_step(TrainStep(model, hp, remat=remat), mesh)
    rng = np.random.default_rng(0)
    shape = (1, args.img_size, args.img_size, 3)

    def batch():
        return parallel.put_batch(rng.uniform(-1, 1, shape).astype(np.float32), mesh)

    a, b = batch(), batch()
    jax.block_until_ready((state, face_state, a, b))
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, secs, **_: compiles.append(secs) if event == COMPILE_EVENT else None
    )
    t = time.perf_counter()
    state, _ = step(state, face_state, a, b)  # traces and compiles the step's programs
    jax.block_until_ready(state)
    first_s = time.perf_counter() - t
    times = []
    for _ in range(args.steps):
        a, b = batch(), batch()
        t = time.perf_counter()
        state, _ = step(state, face_state, a, b)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t)
    return {
        "s_per_step": float(np.median(times)),
        "compile_s": sum(compiles),
        "first_step_s": first_s,
        "peak_rss_gb": _peak_rss_gb(),
    }


def run_torch(args) -> dict:
    import numpy as np
    import torch
    from helpers.torch_trainer import TorchTrainer

    from p2c_jax.pytorch import nets as torch_port
    from p2c_jax.train.config import Hparams

    torch.manual_seed(0)
    nets = {
        n: torch_port.ResnetGenerator(args.ch, args.img_size, args.light)
        for n in ("genA2B", "genB2A")
    }
    nets.update(
        {
            n: torch_port.Discriminator(3, args.ch, k)
            for n, k in (("disGA", 7), ("disGB", 7), ("disLA", 5), ("disLB", 5))
        }
    )
    trainer = TorchTrainer(nets, torch_port.MobileFaceNet(512), Hparams())
    shape = (1, 3, args.img_size, args.img_size)
    trainer.step(torch.rand(shape) * 2 - 1, torch.rand(shape) * 2 - 1)  # warm-up
    times = []
    for _ in range(args.steps):
        a, b = torch.rand(shape) * 2 - 1, torch.rand(shape) * 2 - 1
        t = time.perf_counter()
        trainer.step(a, b)
        times.append(time.perf_counter() - t)
    return {
        "s_per_step": float(np.median(times)),
        "compile_s": 0.0,
        "first_step_s": 0.0,
        "peak_rss_gb": _peak_rss_gb(),
    }


SIDES = {
    "torch": "PyTorch port (torch CPU)",
    "jax": "p2c-jax (XLA CPU)",
    "jax_remat": "p2c-jax, --remat true",
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--img_size", type=int, default=256)
    p.add_argument("--ch", type=int, default=32)
    p.add_argument("--light", type=lambda s: s.lower() == "true", default=True)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--only", choices=list(SIDES), default=None)
    p.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="another checkout (e.g. `git worktree add ../old main`): its own bench's jax side "
        "runs too, in this same run, for a before / after ratio",
    )
    args = p.parse_args()
    if args.only:
        result = (
            run_torch(args) if args.only == "torch" else run_jax(args, args.only == "jax_remat")
        )
        print(json.dumps(result))
        return
    flags = ["--img_size", str(args.img_size), "--ch", str(args.ch)]
    flags += ["--light", str(args.light).lower(), "--steps", str(args.steps)]
    sides = {side: (name, __file__, side) for side, name in SIDES.items()}
    if args.baseline:
        script = args.baseline.resolve() / "bench" / "train_step.py"
        sides["baseline"] = (f"p2c-jax at {args.baseline}", str(script), "jax")
    rows = {}
    for side, (_, script, only) in sides.items():
        cmd = [sys.executable, script, "--only", only, *flags]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows[side] = json.loads(out.strip().splitlines()[-1])
        print(side, rows[side], flush=True)
    print(
        f"\n{args.img_size} x {args.img_size}, batch 1, light={args.light}, ch={args.ch}, "
        f"Face-ID on, median of {args.steps} steps"
    )
    print("| | s / step | speed-up | XLA compile s | first step s | peak RSS GB | memory |")
    print("|---|---|---|---|---|---|---|")
    torch_row = rows["torch"]
    for side, (name, _, _) in sides.items():
        r = rows[side]
        print(
            f"| {name} | {r['s_per_step']:.2f} | {torch_row['s_per_step'] / r['s_per_step']:.2f}x | "
            f"{r['compile_s']:.0f} | {r['first_step_s']:.0f} | {r['peak_rss_gb']:.2f} | "
            f"{r['peak_rss_gb'] / torch_row['peak_rss_gb']:.2f}x |"
        )
    if args.baseline:
        new, old = rows["jax"], rows["baseline"]
        print(
            f"\nagainst {args.baseline}: {old['s_per_step'] / new['s_per_step']:.2f}x its speed, "
            f"{new['peak_rss_gb'] / old['peak_rss_gb']:.2f}x its peak RSS, "
            f"{new['first_step_s'] / max(old['first_step_s'], 1e-9):.2f}x its first step"
        )


if __name__ == "__main__":
    main()

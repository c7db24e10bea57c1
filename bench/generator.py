"""Generator throughput: our JAX forward pass against our PyTorch port, same weights, 256 x 256.

    python bench/generator.py [--ngf 32] [--light true] [--batches 1 8] [--repeats 3]

Each implementation runs in its own subprocess (so that peak RSS is its own), one after the
other, in one command; the table gives images/s, the speed-up and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _run_one(impl: str, ngf: int, light: bool, batch: int, repeats: int) -> dict:
    import numpy as np
    import torch

    from p2c_jax.pytorch import nets as torch_port

    torch.manual_seed(0)
    ref = torch_port.ResnetGenerator(ngf, 256, light).eval()
    x = np.random.default_rng(0).uniform(-1, 1, (batch, 256, 256, 3)).astype(np.float32)
    if impl == "torch":
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())

        def step():
            with torch.no_grad():
                return ref(xt)[0]
    else:
        import jax

        from p2c_jax import CompiledNet
        from p2c_jax.weights.convert import spec_from_state_dict, state_from_torch

        sd = {k: v.numpy() for k, v in ref.state_dict().items()}
        spec = spec_from_state_dict("genA2B", sd)
        gen = CompiledNet(spec, state_from_torch(spec, sd))
        del ref

        def step():
            return jax.block_until_ready(gen(x)[0])

    t = time.perf_counter()
    step()  # warm-up (compiles for jax)
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return {
        "impl": impl,
        "batch": batch,
        "first_s": first,
        "s_per_batch": min(times),
        "images_per_s": batch / min(times),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ngf", type=int, default=32)
    p.add_argument("--light", type=lambda s: s.lower() == "true", default=True)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        impl, batch = args.child.split(":")
        print(json.dumps(_run_one(impl, args.ngf, args.light, int(batch), args.repeats)))
        return
    rows = []
    for batch in args.batches:
        for impl in ("torch", "jax"):
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    f"{impl}:{batch}",
                    "--ngf",
                    str(args.ngf),
                    "--light",
                    str(args.light),
                    "--repeats",
                    str(args.repeats),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"generator ngf={args.ngf} light={args.light} 256x256, best of {args.repeats}")
    print(
        "| batch | PyTorch img/s | JAX img/s | speed-up | PyTorch peak RSS | JAX peak RSS | JAX compile+first |"
    )
    print("|---|---|---|---|---|---|---|")
    for batch in args.batches:
        t, j = (
            next(r for r in rows if r["impl"] == i and r["batch"] == batch)
            for i in ("torch", "jax")
        )
        print(
            f"| {batch} | {t['images_per_s']:.2f} | {j['images_per_s']:.2f} | "
            f"{j['images_per_s'] / t['images_per_s']:.2f}x | {t['peak_rss_mb']:.0f} MB | "
            f"{j['peak_rss_mb']:.0f} MB | {j['first_s']:.1f} s |"
        )


if __name__ == "__main__":
    main()

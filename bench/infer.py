"""End-to-end cartoonization throughput: our pipelined batch path against the original's
single-image path, on the same photos, weights and preprocessing, in one run.

    python bench/infer.py [--count 32] [--batch_size N] [--workers 2] [--ngf 32] [--torch_threads N]

Photos: variations (flips, scales, rotations, brightness, placement on a larger canvas) of
scikit-image's astronaut and, when present, ../shared/images/photo_test.jpg, as JPEGs.
Weights: a random light generator (the speed does not depend on the values), saved as the
original's ``photo2cartoon_weights.pt``. Both paths: decode, dlib landmarks, rotate + crop,
GrabCut mask, resize to 256, generator, composite on white, PNG write.

- ours: ``p2c_jax.inference.run`` (thread pool + batched, compiled JAX generator; compiled
  once before the clock starts, and that compile time is printed apart);
- original: a sequential loop, one photo at a time through the same preprocessing and our
  PyTorch port of the generator, as the original ``test.py`` does per command (without its
  per-command model loading, which would only slow it further).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from p2c_jax import load_generator, torch_port
from p2c_jax.inference import (BatchedGenerator, Preparer, default_batch_size, face_and_mask,
                               postprocess, prepare_face, run, torch_twin)
from preprocessing.io import encode_png, load_rgb, write_atomic
from preprocessing.landmarks import make_landmarker
from preprocessing.pipeline import Preprocessor
from preprocessing.segmentation import make_segmenter

SHARED = Path(__file__).resolve().parents[2] / "shared" / "images" / "photo_test.jpg"


def sources() -> list[np.ndarray]:
    from skimage import data

    images = [data.astronaut()]
    if SHARED.is_file():
        big = load_rgb(SHARED)
        half = (big.shape[1] // 2, big.shape[0] // 2)
        images.append(cv2.resize(big, half, interpolation=cv2.INTER_AREA))
    return images


def variation(image: np.ndarray, i: int) -> np.ndarray:
    """A different but still face-bearing photo for each i."""
    rng = np.random.default_rng(i)
    out = image[:, ::-1] if i % 2 else image
    scale = rng.uniform(0.7, 1.4)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    out = cv2.resize(out, None, fx=scale, fy=scale, interpolation=interpolation)
    h, w = out.shape[:2]
    rot = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-12, 12), 1.0)
    out = cv2.warpAffine(out, rot, (w, h), borderMode=cv2.BORDER_REFLECT)
    out = np.clip(out * rng.uniform(0.8, 1.2) + rng.uniform(-20, 20), 0, 255).astype(np.uint8)
    pad = [int(v) for v in rng.integers(0, max(h, w) // 3, 4)]
    colour = [int(v) for v in rng.integers(0, 255, 3)]
    return cv2.copyMakeBorder(out, *pad, cv2.BORDER_CONSTANT, value=colour)


def original_loop(items, out: Path, pre: Preprocessor, model) -> int:
    """One photo at a time: decode, preprocess, torch generator, post-process, write."""
    done = 0
    for path, rel in items:
        try:
            prep = prepare_face(*face_and_mask(pre, load_rgb(path)))
        except Exception:  # noqa: BLE001 - same failures as ours, skipped the same way
            continue
        y = model(prep.x[None])[0]
        write_atomic(out / Path(rel).with_suffix(".png"), encode_png(postprocess(y, prep.mask)))
        done += 1
    return done


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--count", type=int, default=32)
    p.add_argument("--batch_size", type=int, default=None, help="default: as infer.py")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--ngf", type=int, default=32)
    p.add_argument("--torch_threads", type=int, default=None,
                   help="torch intra-op threads of the original loop (default: torch's own, the "
                        "core count); 1 is steadier on a loaded machine")
    args = p.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        srcs = sources()
        items = []
        for i in range(args.count):
            f = tmp / "in" / f"{i:03d}.jpg"
            Image.fromarray(variation(srcs[i % len(srcs)], i)).save(f, quality=92)
            items.append((f, f.name))
        torch.manual_seed(0)
        sd = torch_port.ResnetGenerator(args.ngf, 256, light=True).state_dict()
        torch.save({"genA2B": sd}, tmp / "photo2cartoon_weights.pt")

        def make() -> Preprocessor:
            return Preprocessor(make_landmarker("dlib"), make_segmenter("grabcut"))

        gen = BatchedGenerator(load_generator(tmp / "photo2cartoon_weights.pt"),
                               args.batch_size or default_batch_size())
        t = time.perf_counter()
        gen(np.zeros((1, 256, 256, 3), np.float32))
        compile_s = time.perf_counter() - t
        prepare = Preparer(make)
        t = time.perf_counter()
        ours = run(items, tmp / "ours", gen, prepare, workers=args.workers, progress=False)
        ours_s = time.perf_counter() - t

        model = torch_twin(gen)
        pre = make()
        t = time.perf_counter()
        base_done = original_loop(items, tmp / "base", pre, model)
        base_s = time.perf_counter() - t

    if ours.done != base_done:
        raise SystemExit(f"the two paths did different work: {ours.line()} vs {base_done} done")
    ours_ips, base_ips = ours.done / ours_s, base_done / base_s
    print(f"{args.count} photos ({ours.done} with a face), ngf={args.ngf} light, "
          f"batch {gen.batch_size}, {args.workers} workers, torch threads "
          f"{torch.get_num_threads()}; JAX compile {compile_s:.1f} s (before the clock)")
    print("| path | images/s | s/image |\n|---|---|---|")
    print(f"| original single-image loop (PyTorch port) | {base_ips:.2f} | {1 / base_ips:.2f} |")
    print(f"| p2c-jax `infer.py` pipeline | {ours_ips:.2f} | {1 / ours_ips:.2f} |")
    print(f"speed-up: {ours_ips / base_ips:.2f}x")


if __name__ == "__main__":
    main()

"""End-to-end cartoonization throughput: ours against the original's single-image path, on the
same photos, weights and preprocessing, in one run.

    python bench/infer.py [--count 32] [--batch_size N] [--workers 2] [--ngf 32] [--torch_threads N]

Photos: variations (flips, scales, rotations, brightness, placement on a larger canvas) of
scikit-image's astronaut and the original's test photo (tests/data/images/), as JPEGs.
Weights: a random light generator (the speed does not depend on the values), saved as the
original's ``photo2cartoon_weights.pt``. Every path: decode, dlib landmarks, rotate + crop,
GrabCut mask, resize to 256, generator, composite on white, PNG write.

Two comparisons:

- as commands, wall clock: the original's ``test.py`` is one command per photo (start-up,
  imports, generator and preprocessing models loaded, one photo); here each such command runs
  our PyTorch port in a process of its own that imports what ``test.py``'s path needs (torch,
  OpenCV, dlib), not JAX. Against it, ``infer.py`` as one command over the folder, start-up,
  weight loading and compilation included, then the same command again, which finds the
  compiled generator in the first one's ``--compile_cache``.
- in one process, models loaded once: a sequential loop, one photo at a time through the same
  preprocessing and our PyTorch port, against ``p2c_jax.cartoonize.run`` (thread pool, batched
  compiled JAX generator, compiled before the clock starts; the compile time is printed apart).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from preprocessing.files import write_atomic  # noqa: E402
from preprocessing.generator_io import face_and_mask, postprocess, prepare_face  # noqa: E402
from preprocessing.io import encode_png, load_rgb  # noqa: E402
from preprocessing.landmarks import make_landmarker  # noqa: E402
from preprocessing.pipeline import Preprocessor  # noqa: E402
from preprocessing.segmentation import make_segmenter  # noqa: E402

TEST_PHOTO = Path(__file__).resolve().parents[1] / "tests" / "data" / "images" / "photo_test.jpg"


def sources() -> list[np.ndarray]:
    from skimage import data

    big = load_rgb(TEST_PHOTO)
    half = (big.shape[1] // 2, big.shape[0] // 2)
    return [data.astronaut(), cv2.resize(big, half, interpolation=cv2.INTER_AREA)]


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


def make_preprocessor() -> Preprocessor:
    return Preprocessor(make_landmarker("dlib"), make_segmenter("grabcut"))


def torch_generator(weights: Path, ngf: int):
    """``x [n, S, S, 3] -> image`` of the port loaded from the original's weights file, as
    ``test.py`` loads its generator."""
    import torch

    from p2c_jax.pytorch import nets as torch_port  # no JAX: p2c_jax loads its API lazily

    model = torch_port.ResnetGenerator(ngf, 256, light=True)
    model.load_state_dict(torch.load(weights, map_location="cpu")["genA2B"])
    return torch_port.nhwc_images(model)


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


def original_command(photo: Path, out: Path, weights: Path, ngf: int) -> None:
    """What one run of the original ``test.py`` does (this script with ``--one_photo``)."""
    original_loop([(photo, photo.name)], out, make_preprocessor(), torch_generator(weights, ngf))


def timed_commands(commands: list[list[str]]) -> float:
    """Seconds to run ``commands`` one after the other; each must succeed."""
    t = time.perf_counter()
    for cmd in commands:
        subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--count", type=int, default=32)
    p.add_argument("--batch_size", type=int, default=None, help="default: as infer.py")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--ngf", type=int, default=32)
    p.add_argument(
        "--torch_threads",
        type=int,
        default=None,
        help="torch intra-op threads of the original's paths (default: torch's own, "
        "the core count); 1 is steadier on a loaded machine",
    )
    p.add_argument(
        "--one_photo",
        nargs=3,
        type=Path,
        metavar=("PHOTO", "OUT", "WEIGHTS"),
        help=argparse.SUPPRESS,
    )
    args = p.parse_args()
    import torch

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    if args.one_photo:
        original_command(*args.one_photo, args.ngf)
        return

    from p2c_jax import load_generator
    from p2c_jax.cartoonize import Preparer, run
    from p2c_jax.inference import BatchedGenerator, default_batch_size

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        srcs = sources()
        items = []
        for i in range(args.count):
            f = tmp / "in" / f"{i:03d}.jpg"
            Image.fromarray(variation(srcs[i % len(srcs)], i)).save(f, quality=92)
            items.append((f, f.name))
        weights = tmp / "photo2cartoon_weights.pt"
        torch.manual_seed(0)
        from p2c_jax.pytorch import nets as torch_port

        sd = torch_port.ResnetGenerator(args.ngf, 256, light=True).state_dict()
        torch.save({"genA2B": sd}, weights)
        threads = ["--torch_threads", str(args.torch_threads)] if args.torch_threads else []

        # as commands
        per_photo_s = timed_commands(
            [
                [
                    sys.executable,
                    __file__,
                    "--one_photo",
                    str(f),
                    str(tmp / "cmd_base"),
                    str(weights),
                    "--ngf",
                    str(args.ngf),
                    *threads,
                ]
                for f, _ in items
            ]
        )
        infer = [
            sys.executable,
            str(ROOT / "infer.py"),
            str(tmp / "in"),
            "--weights",
            str(weights),
            "--workers",
            str(args.workers),
            "--no_progress",
            "--compile_cache",
            str(tmp / "xla_cache"),
        ]  # empty: the first command compiles
        if args.batch_size:
            infer += ["--batch_size", str(args.batch_size)]
        folder_s = timed_commands([[*infer, "--output", str(tmp / "cmd_ours")]])
        cached_s = timed_commands([[*infer, "--output", str(tmp / "cmd_cached")]])
        cmd_done = [
            len(list((tmp / d).glob("*.png"))) for d in ("cmd_base", "cmd_ours", "cmd_cached")
        ]

        # in one process
        gen = BatchedGenerator(load_generator(weights), args.batch_size or default_batch_size())
        t = time.perf_counter()
        gen(np.zeros((1, 256, 256, 3), np.float32))
        compile_s = time.perf_counter() - t
        t = time.perf_counter()
        ours, _ = run(
            items,
            tmp / "ours",
            gen,
            Preparer(make_preprocessor),
            workers=args.workers,
            progress=False,
        )
        ours_s = time.perf_counter() - t
        pre, model = make_preprocessor(), torch_generator(weights, args.ngf)
        t = time.perf_counter()
        base_done = original_loop(items, tmp / "base", pre, model)
        base_s = time.perf_counter() - t

    if len({*cmd_done, ours.done, base_done}) != 1:
        raise SystemExit(
            f"the paths did different work: {cmd_done} by command, "
            f"{ours.line()} vs {base_done} done in one process"
        )
    n = ours.done
    rows = [
        ("the original's `test.py`, one command per photo (PyTorch port)", per_photo_s, None),
        (
            "`infer.py`, one command for the folder (start-up, compile included)",
            folder_s,
            per_photo_s,
        ),
        (
            "`infer.py` again, the compiled generator from the first command's cache",
            cached_s,
            per_photo_s,
        ),
        ("the original's single-image loop in one process, models loaded once", base_s, None),
        ("`p2c_jax.cartoonize.run` in one process, compiled before the clock", ours_s, base_s),
    ]
    print(
        f"{args.count} photos ({n} with a face), ngf={args.ngf} light, batch {gen.batch_size}, "
        f"{args.workers} workers, torch threads {torch.get_num_threads()}; "
        f"JAX compile {compile_s:.1f} s (in-process row: before the clock)"
    )
    print("| path | images/s | s/image | speed-up |\n|---|---|---|---|")
    for name, secs, baseline in rows:
        speed_up = f"{baseline / secs:.2f}x" if baseline else "1.00x"
        print(f"| {name} | {n / secs:.2f} | {secs / n:.2f} | {speed_up} |")


if __name__ == "__main__":
    main()

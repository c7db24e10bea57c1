"""Throughput of the preprocessing pipeline per stage.

    python bench/preprocess.py [--image PATH] [--count N] [--segmentation grabcut|pb --seg_model PATH]

Runs N copies of one photo (default: the original's test photo, tests/data/images/photo_test.jpg) through decode, landmarks, rotate+crop, segment,
composite and PNG write, and prints milliseconds per image for each stage.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from preprocessing.landmarks import make_landmarker
from preprocessing.pipeline import Preprocessor, run
from preprocessing.segmentation import make_segmenter

DEFAULT = Path(__file__).resolve().parents[1] / "tests" / "data" / "images" / "photo_test.jpg"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--image", type=Path, default=DEFAULT)
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--landmarks", default="dlib")
    p.add_argument("--segmentation", default="grabcut")
    p.add_argument("--seg_model", default=None)
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        image = args.image
        for i in range(args.count):
            (src / f"{i:04d}{image.suffix}").symlink_to(image.resolve())
        pre = Preprocessor(
            make_landmarker(args.landmarks), make_segmenter(args.segmentation, args.seg_model)
        )
        io_timings: dict[str, float] = defaultdict(float)
        t = time.perf_counter()
        summary = run(
            [(f, f.name) for f in sorted(src.iterdir())],
            Path(tmp) / "out",
            pre,
            progress=False,
            timings=io_timings,
        )
        total = time.perf_counter() - t

    n = summary.done
    if n == 0:
        raise SystemExit(f"no image was processed: {summary.line()}")
    print(
        f"{n} images ({args.image}), {args.landmarks} + {args.segmentation}: "
        f"{n / total:.2f} img/s, {1000 * total / n:.0f} ms/img"
    )
    stages = {"decode": io_timings["decode"], **pre.timings, "write": io_timings["write"]}
    for stage, seconds in stages.items():
        print(
            f"  {stage:12s} {1000 * seconds / n:8.1f} ms/img  {n / seconds if seconds else float('inf'):8.1f} img/s"
        )


if __name__ == "__main__":
    main()

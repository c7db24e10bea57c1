"""Batches/s of `train_batches` with augmentation at 256 px, against what training needs.

    python bench/input_pipeline.py [--img_size 256] [--batches 1 8] [--seconds 10] [--workers 3]
        [--sources folders tfrecords stream grain]

The source images are the demo photos and cartoons built at 256 px (the size of the
original's aligned faces), read as image folders, as TFRecords small enough to be held
(encoded) whole, and as TFRecords streamed through tf.data (a shuffle buffer smaller than
the split forces it), and as ArrayRecord shards read through Grain. A train step at 256 px takes well over 1 s on this CPU, so a rate
above 10 batches/s means the input pipeline is never the bottleneck here.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from p2c_jax.data.demo import build_demo
from p2c_jax.data.input_pipeline import train_batches

REQUIRED = 10.0  # batches/s: ten times the fastest train step here
N_TRAIN = 64
SHUFFLE_BUFFER = {"folders": None, "tfrecords": None, "stream": N_TRAIN // 2, "grain": None}


def rate(
    dataset: Path, batch: int, img_size: int, seconds: float, workers: int, buffer: int | None
) -> float:
    """Steady-state batches/s after one warm-up batch, prefetching as in training."""
    kw = {} if buffer is None else {"shuffle_buffer": buffer}
    with train_batches(dataset, "A", batch, img_size, True, seed=0, workers=workers, **kw) as it:
        next(it)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            next(it)
            n += 1
        return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--img_size", type=int, default=256)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--sources", nargs="+", choices=list(SHUFFLE_BUFFER), default=["folders"])
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folders = build_demo(Path(tmp) / "demo256", n_train=N_TRAIN, n_test=1, size=256)
        datasets = {"folders": folders}
        if {"tfrecords", "stream"} & set(args.sources):
            from preprocessing.tfrecords import write_dataset

            datasets["tfrecords"] = datasets["stream"] = Path(tmp) / "records"
            write_dataset(folders, datasets["tfrecords"])
        if "grain" in args.sources:
            from preprocessing import array_record

            datasets["grain"] = Path(tmp) / "shards"
            array_record.write_dataset(folders, datasets["grain"] / array_record.FOLDER)
        for source in args.sources:
            dataset = datasets[source]
            for batch in args.batches:
                r = rate(
                    dataset,
                    batch,
                    args.img_size,
                    args.seconds,
                    args.workers,
                    SHUFFLE_BUFFER[source],
                )
                verdict = "ok" if r >= REQUIRED else "TOO SLOW"
                print(
                    f"{source:9s} img_size {args.img_size} batch {batch}: {r:7.1f} batches/s "
                    f"({r * batch:7.1f} images/s), required {REQUIRED:.0f} batches/s: {verdict}"
                )


if __name__ == "__main__":
    main()

"""Training and test images of the original's unpaired dataset layout, as numpy batches.

`dataset/<name>/{trainA,trainB,testA,testB}` (or TFRecords written by
`python -m preprocessing --tfrecords` under `<dataset>/tfrecords`), loaded like the
original's `ImageFolder` (sorted, recursive, PIL `convert('RGB')`) and transformed like
its torchvision pipelines:

* train: RandomHorizontalFlip(0.5), Resize((S+30, S+30)) bilinear, RandomCrop(S), to [-1, 1];
* test: Resize((S, S)) bilinear, to [-1, 1].

Order: the global batch of step t holds positions t*B ... t*B+B-1 of the concatenation of
per-epoch permutations of the files. Unlike the original's DataLoader (shuffle=True),
which yields a short last batch at the end of each epoch, batches here are always full
and may straddle two epochs. Every random draw (permutations, flips, crops) comes from a
Philox stream keyed by (seed, domain, epoch) or (seed, domain, step, index in the global
batch), so the data of a step is the same whatever the number of processes, and a run
resumed at step k sees exactly the batches k, k+1, ...

When TFRecords are present they are read instead of the folders (needs the `preprocess`
extra); they hold the same PNGs, so the batches are the same.
"""

from __future__ import annotations

import json
import os
import weakref
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from preprocessing.splits import SPLITS

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif")
RESIZE_MARGIN = 30  # train images are resized to img_size + 30, then randomly cropped
_ORDER, _AUGMENT = 0, 1  # stream tags of the two kinds of random draws


class DatasetError(ValueError):
    """The --dataset argument does not name a usable dataset."""


class Augment(NamedTuple):
    """The random draws of one training example: flip first, then the crop's top-left corner."""

    flip: bool
    top: int
    left: int


# ---------------------------------------------------------------------------- files


def list_images(folder: str | Path) -> list[Path]:
    """Image files under `folder` in the original's order (os.walk sorted, then sorted names)."""
    found = []
    for root, _, names in sorted(os.walk(folder)):
        found += [Path(root) / n for n in sorted(names) if n.lower().endswith(IMG_EXTENSIONS)]
    return found


def _walk_key(name: str) -> tuple[str, str]:
    """Sort key putting relative names in `list_images` order (by folder path, then name)."""
    parent, _, base = name.rpartition("/")
    return ("/" + parent if parent else "", base)


def _tfrecord_dir(dataset_dir: Path) -> Path | None:
    """The TFRecord dataset of `preprocessing.tfrecords` in `dataset_dir/tfrecords` or `dataset_dir`."""
    for cand in (dataset_dir / "tfrecords", dataset_dir):
        infos = [cand / "dataset_info.json", *sorted(cand.glob("*/*/dataset_info.json"))]
        info = next((p for p in reversed(infos) if p.is_file()), None)
        if info is not None:
            return info.parent
    return None


def _tfrecord_counts(tf_dir: Path) -> dict[str, int]:
    splits = json.loads((tf_dir / "dataset_info.json").read_text()).get("splits", [])
    return {s["name"]: sum(int(n) for n in s.get("shardLengths", [])) for s in splits}


class _Split:
    """The images of one split, in order, each loadable as a PIL RGB image.

    Folder images are decoded when needed; a TFRecord split is decoded into memory at once
    (its reader yields decoded images), about 200 kB per 256 px image.
    """

    def __init__(self, dataset_dir: Path, split: str):
        tf_dir = _tfrecord_dir(dataset_dir)
        if tf_dir is not None:
            from preprocessing.tfrecords import read_tfrecord_images  # needs the `preprocess` extra

            records = sorted(read_tfrecord_images(tf_dir, split), key=lambda r: _walk_key(r[0]))
            self.names = [name for name, _ in records]
            self._arrays: list[np.ndarray] | None = [img for _, img in records]
        else:
            self.names = [str(p) for p in list_images(dataset_dir / split)]
            self._arrays = None
        if not self.names:
            raise DatasetError(f"--dataset {dataset_dir}: {split} has no images")

    def __len__(self) -> int:
        return len(self.names)

    def load(self, i: int) -> Image.Image:
        if self._arrays is not None:
            return Image.fromarray(self._arrays[i])
        with Image.open(self.names[i]) as im:
            return im.convert("RGB")


def resolve_dataset(dataset: str, root: str | Path = "dataset") -> Path:
    """The dataset folder of `--dataset`: 'demo' (built on first use at `<root>/demo`),
    a plain name (`<root>/<name>`, as in the original) or a path.

    Raises DatasetError naming the flag and the missing or empty splits.
    """
    if dataset == "demo":
        from p2c_jax.data.demo import build_demo

        path = build_demo(Path(root) / "demo")
    elif dataset not in (".", "..") and Path(dataset).name == dataset:
        path = Path(root) / dataset
    else:
        path = Path(dataset).expanduser()
    if not path.is_dir():
        raise DatasetError(
            f"--dataset {dataset}: no folder {path} (expected {'/'.join(SPLITS)} in it, or 'demo')"
        )
    tf_dir = _tfrecord_dir(path)
    if tf_dir is not None:
        counts = _tfrecord_counts(tf_dir)
        bad = [s for s in SPLITS if counts.get(s, 0) == 0]
        where = f"the TFRecords in {tf_dir}"
    else:
        bad = [s for s in SPLITS if not list_images(path / s)]
        where = str(path)
    if bad:
        raise DatasetError(
            f"--dataset {dataset}: {where} lacks images in {', '.join(bad)} (expected folders "
            f"{', '.join(SPLITS)} holding {'/'.join(IMG_EXTENSIONS)} files, or 'demo')"
        )
    return path


# ---------------------------------------------------------------------------- random draws


def _rng(*key: int) -> np.random.Generator:
    return np.random.Generator(np.random.Philox(np.random.SeedSequence(list(key))))


def _domain_key(domain: str) -> int:
    return int.from_bytes(domain.encode(), "little")


@lru_cache(maxsize=8)
def epoch_permutation(seed: int, domain: str, epoch: int, n: int) -> np.ndarray:
    """The order of the `n` files of `domain` in pass `epoch` over them."""
    perm = _rng(seed, _domain_key(domain), _ORDER, epoch).permutation(n)
    perm.flags.writeable = False
    return perm


def batch_file_indices(seed: int, domain: str, step: int, global_batch: int, n: int) -> np.ndarray:
    """File indices of the global batch of `step`: consecutive positions of the epoch permutations."""
    pos = step * global_batch + np.arange(global_batch)
    epochs, offsets = np.divmod(pos, n)
    return np.array(
        [epoch_permutation(seed, domain, int(e), n)[o] for e, o in zip(epochs, offsets)]
    )


def augment_params(seed: int, domain: str, step: int, index: int) -> Augment:
    """The flip and crop of example `index` of the global batch of `step`."""
    rng = _rng(seed, _domain_key(domain), _AUGMENT, step, index)
    flip = bool(rng.random() < 0.5)
    top, left = (int(v) for v in rng.integers(0, RESIZE_MARGIN + 1, size=2))
    return Augment(flip, top, left)


# ---------------------------------------------------------------------------- transforms


def to_unit_range(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB -> float32 in [-1, 1], as ToTensor then Normalize(0.5, 0.5) compute it."""
    return (np.asarray(rgb, np.float32) / np.float32(255) - np.float32(0.5)) / np.float32(0.5)


def transform(img: Image.Image, img_size: int, aug: Augment | None) -> np.ndarray:
    """The original's train transform with the draws `aug`, or its test transform if None."""
    if aug is None:
        return to_unit_range(img.resize((img_size, img_size), Image.BILINEAR))
    if aug.flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    big = img_size + RESIZE_MARGIN
    rgb = np.asarray(img.resize((big, big), Image.BILINEAR))
    return to_unit_range(rgb[aug.top : aug.top + img_size, aug.left : aug.left + img_size])


# ---------------------------------------------------------------------------- batches


class BatchIterator(Iterator[np.ndarray]):
    """Endless batches of one process, decoded by a thread pool `prefetch` batches ahead.

    Call close() (or use it as a context manager) to stop the workers; pending work is dropped.
    """

    def __init__(
        self,
        split: _Split,
        domain: str,
        global_batch: int,
        img_size: int,
        augment: bool,
        seed: int,
        lo: int,
        hi: int,
        start_step: int,
        prefetch: int,
        workers: int,
    ):
        self._split, self._domain, self._seed = split, domain, seed
        self._global_batch, self._img_size, self._augment = global_batch, img_size, augment
        self._lo, self._hi, self._step = lo, hi, start_step
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix=f"p2c-input-{domain}")
        self._pending: deque[list[Future]] = deque()
        self._stop = weakref.finalize(self, self._pool.shutdown, wait=False, cancel_futures=True)
        for _ in range(prefetch):
            self._submit()

    def _example(self, step: int, index: int, file_index: int) -> np.ndarray:
        aug = augment_params(self._seed, self._domain, step, index) if self._augment else None
        return transform(self._split.load(file_index), self._img_size, aug)

    def _submit(self) -> None:
        step, self._step = self._step, self._step + 1
        files = batch_file_indices(
            self._seed, self._domain, step, self._global_batch, len(self._split)
        )
        self._pending.append(
            [
                self._pool.submit(self._example, step, k, int(files[k]))
                for k in range(self._lo, self._hi)
            ]
        )

    def __next__(self) -> np.ndarray:
        if not self._pending:
            raise StopIteration
        futures = self._pending.popleft()
        self._submit()
        return np.stack([f.result() for f in futures])

    def close(self) -> None:
        self._pending.clear()
        self._stop()

    def __enter__(self) -> BatchIterator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def train_batches(
    dataset_dir: str | Path,
    domain: str,
    global_batch: int,
    img_size: int,
    augment: bool,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    start_step: int = 0,
    *,
    prefetch: int = 3,
    workers: int = 3,
) -> BatchIterator:
    """Endless float32 batches [global_batch // process_count, img_size, img_size, 3] in [-1, 1]
    of `train<domain>`: this process's slice of the global batches of steps start_step, start_step+1, ...

    The global batch of a step depends only on (seed, domain, step, files), not on the topology.
    """
    if global_batch % process_count:
        raise ValueError(
            f"global batch {global_batch} is not divisible by {process_count} processes"
        )
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is outside [0, {process_count})")
    per = global_batch // process_count
    split = _Split(Path(dataset_dir), f"train{domain}")
    return BatchIterator(
        split,
        domain,
        global_batch,
        img_size,
        augment,
        seed,
        process_index * per,
        (process_index + 1) * per,
        start_step,
        prefetch,
        workers,
    )


def test_images(dataset_dir: str | Path, domain: str, img_size: int, n: int) -> np.ndarray:
    """The first `n` images of `test<domain>` (wrapping around if fewer), test transform,
    float32 [n, img_size, img_size, 3] in [-1, 1]."""
    split = _Split(Path(dataset_dir), f"test{domain}")
    return np.stack([transform(split.load(i % len(split)), img_size, None) for i in range(n)])


test_images.__test__ = False  # not a pytest test, although its name says so

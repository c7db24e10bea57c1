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

When TFRecords are present (`p2c_jax.data.tfrecords`; reading them needs tensorflow, in
the `preprocess` extra) they are read instead of the folders, decoded as consumed:

* a split of at most `shuffle_buffer` records (1024 by default) is held encoded and read
  exactly like the folders: the same batches, whatever the topology;
* a larger split is streamed through tf.data, so that memory stays flat as it grows:
  record files sharded across processes, interleaved, shuffled per epoch by a bounded
  buffer (`tfrecords.stream_batches`). The flips and crops are drawn as above and each
  epoch of a process is a permutation of its records, but which records make up a batch
  depends on the number of processes. A run resumed at step k on as many processes sees
  exactly the batches k, k+1, ...; the resumed epoch's records before k are re-read (not
  decoded) to get there.

When ArrayRecord shards are present (`python -m preprocessing --tfrecords --format
array_record`, under `<dataset>/array_record`) they are read instead, through Grain
(`p2c_jax.data.grain_input`, the `grain` extra): the folders' batches, whatever the
topology and the number of shards, each process reading only its records, resumed at
step k without reading the records before it.

A remote dataset is TFRecords (`gs://...`, any scheme `tf.io.gfile` reads) or ArrayRecord
shards in a `gs://` bucket, which array_record reads directly (docs/cloud.md).
"""

from __future__ import annotations

import os
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from p2c_jax.data import tfrecords
from p2c_jax.data.augment import (
    STREAM,
    augment_params,
    batch_file_indices,
    decode_image,
    domain_key,
    transform,
)
from preprocessing import array_record
from preprocessing.files import is_url, walk_key
from preprocessing.splits import SPLITS

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif")


class DatasetError(ValueError):
    """The --dataset argument does not name a usable dataset."""


# ---------------------------------------------------------------------------- files


def list_images(folder: str | Path) -> list[Path]:
    """Image files under `folder` in the original's order (os.walk sorted, then sorted names)."""
    found = []
    for root, _, names in sorted(os.walk(folder)):
        found += [Path(root) / n for n in sorted(names) if n.lower().endswith(IMG_EXTENSIONS)]
    return found


class _Split:
    """The images of one split, in order, each loadable as a PIL RGB image.

    Folder images are decoded from their files when needed. A TFRecord split's encoded
    images are read at once (train_batches does so for small splits only) and decoded
    when needed.
    """

    def __init__(self, dataset_dir: str | os.PathLike, split: str, tf_dir: str | None):
        if tf_dir is not None:
            records = sorted(tfrecords.read_records(tf_dir, split), key=lambda r: walk_key(r[0]))
            self.names = [name for name, _ in records]
            self._encoded: list[bytes] | None = [data for _, data in records]
        else:
            self.names = [str(p) for p in list_images(Path(dataset_dir) / split)]
            self._encoded = None
        if not self.names:
            raise DatasetError(f"--dataset {os.fspath(dataset_dir)}: {split} has no images")

    def __len__(self) -> int:
        return len(self.names)

    def load(self, i: int) -> Image.Image:
        if self._encoded is not None:
            return decode_image(self._encoded[i])
        with Image.open(self.names[i]) as im:
            return im.convert("RGB")


def _record_counts(tf_dir: str) -> dict[str, int]:
    return {name: split.size for name, split in tfrecords.read_splits(tf_dir).items()}


def resolve_dataset(dataset: str, root: str | Path = "dataset") -> Path | str:
    """The dataset folder of `--dataset`: 'demo' (built on first use at `<root>/demo`),
    a plain name (`<root>/<name>`, as in the original), a path, or the URI of a remote
    TFRecord or ArrayRecord dataset (returned as the string, never made a local Path).

    Raises DatasetError naming the flag and the missing or empty splits.
    """
    if is_url(dataset):
        uri = dataset.rstrip("/")
        try:
            shards = _shards(uri)
        except ImportError as e:  # epath lists gs:// with gcsfs or tf.io.gfile
            raise DatasetError(
                f"--dataset {dataset}: listing gs:// needs gcsfs: pip install 'p2c-jax[gcs]' ({e})"
            ) from None
        if shards is not None:
            bad = [s for s in SPLITS if not array_record.split_shards(shards, s)]
            if bad:
                raise DatasetError(
                    f"--dataset {dataset}: the ArrayRecord shards in {shards} lack images in "
                    f"{', '.join(bad)}"
                )
            return uri
        try:
            tf_dir = tfrecords.find_dataset(uri)
        except ValueError:
            scheme = uri.partition("://")[0]
            raise DatasetError(
                f"--dataset {dataset}: TensorFlow reads no {scheme}:// files"
            ) from None
        if tf_dir is None:
            raise DatasetError(
                f"--dataset {dataset}: no TFRecord dataset or ArrayRecord shards there (a "
                "remote dataset must be written by `python -m preprocessing --tfrecords`, "
                "`--format array_record` for shards; image folders are read from local disk only)"
            )
        bad = [s for s in SPLITS if _record_counts(tf_dir).get(s, 0) == 0]
        if bad:
            raise DatasetError(
                f"--dataset {dataset}: the TFRecords in {tf_dir} lack images in {', '.join(bad)}"
            )
        return uri
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
    shards = _shards(path)
    tf_dir = tfrecords.find_dataset(path) if shards is None else None
    if shards is not None:
        bad = [s for s in SPLITS if not array_record.split_shards(shards, s)]
        where = f"the ArrayRecord shards in {shards}"
    elif tf_dir is not None:
        counts = _record_counts(tf_dir)
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


def _shards(dataset_dir: str | os.PathLike) -> Path | str | None:
    from p2c_jax.data.grain_input import find_shards

    return find_shards(dataset_dir)


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


Batches = BatchIterator | tfrecords.RecordStream  # or grain_input.GrainBatches


def _stream_example(
    seed: int, domain: str, per: int, lo: int, img_size: int, augment: bool
) -> Callable[[int, bytes], np.ndarray]:
    """The example at position p of a process's TFRecord stream: index lo + p mod per of the
    global batch of step p // per, transformed with that slot's draws as folders are."""

    def example(position: int, data: bytes) -> np.ndarray:
        step, k = divmod(int(position), per)
        aug = augment_params(seed, domain, step, lo + k) if augment else None
        return transform(decode_image(data), img_size, aug)

    return example


def _open_shards(shards: Path | str, dataset_dir: str | os.PathLike, split: str):
    from p2c_jax.data.grain_input import open_split

    try:
        return open_split(shards, split)
    except FileNotFoundError as e:
        raise DatasetError(f"--dataset {os.fspath(dataset_dir)}: {e}") from None


def _check_split(tf_dir: str, dataset_dir: str | os.PathLike, split: str) -> int:
    try:
        return tfrecords.split_files(tf_dir, split).size
    except FileNotFoundError as e:
        raise DatasetError(f"--dataset {os.fspath(dataset_dir)}: {e}") from None


def train_batches(
    dataset_dir: str | os.PathLike,
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
    workers: int | None = 3,
    shuffle_buffer: int = tfrecords.SHUFFLE_BUFFER,
    with_names: bool = False,
) -> Batches:
    """Endless float32 batches [global_batch // process_count, img_size, img_size, 3] in [-1, 1]
    of `train<domain>`: this process's slice of the global batches of steps start_step, start_step+1, ...

    Folders, ArrayRecord shards (read through Grain) and TFRecord splits of at most
    `shuffle_buffer` records: the global batch of a step depends only on (seed, domain,
    step, files), not on the topology. Larger TFRecord
    splits are streamed with a `shuffle_buffer`-record buffer (see the module docstring).
    `workers` threads decode (None: tf.data's autotuning for streams, 3 otherwise).
    A stream `with_names` gives (record names, batch) pairs.
    """
    if global_batch % process_count:
        raise ValueError(
            f"global batch {global_batch} is not divisible by {process_count} processes"
        )
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is outside [0, {process_count})")
    per = global_batch // process_count
    split = f"train{domain}"
    shards = _shards(dataset_dir)
    if shards is not None:
        from p2c_jax.data import grain_input

        return grain_input.train_batches(
            _open_shards(shards, dataset_dir, split),
            domain,
            global_batch,
            img_size,
            augment,
            seed,
            process_index,
            process_count,
            start_step,
            prefetch=prefetch,
            workers=3 if workers is None else workers,
        )
    tf_dir = tfrecords.find_dataset(dataset_dir)
    if tf_dir is not None and (_check_split(tf_dir, dataset_dir, split) > shuffle_buffer):
        return tfrecords.stream_batches(
            tf_dir,
            split,
            per,
            _stream_example(seed, domain, per, process_index * per, img_size, augment),
            (img_size, img_size, 3),
            (seed, domain_key(domain), STREAM),
            process_index,
            process_count,
            start_step * per,
            shuffle_buffer=shuffle_buffer,
            prefetch=prefetch,
            workers=workers,
            with_names=with_names,
        )
    return BatchIterator(
        _Split(dataset_dir, split, tf_dir),
        domain,
        global_batch,
        img_size,
        augment,
        seed,
        process_index * per,
        (process_index + 1) * per,
        start_step,
        prefetch,
        3 if workers is None else workers,
    )


def held_out_images(
    dataset_dir: str | os.PathLike, domain: str, img_size: int, n: int
) -> np.ndarray:
    """The first `n` images of `test<domain>` (wrapping around if fewer), test transform,
    float32 [n, img_size, img_size, 3] in [-1, 1]. TFRecords are read through once, holding
    only those `n` images."""
    split = f"test{domain}"
    shards = _shards(dataset_dir)
    tf_dir = tfrecords.find_dataset(dataset_dir) if shards is None else None
    if shards is not None:
        from p2c_jax.data.grain_input import first_images

        first = first_images(_open_shards(shards, dataset_dir, split), n)
    elif tf_dir is not None:
        _check_split(tf_dir, dataset_dir, split)
        first = [
            decode_image(data) for _, data in tfrecords.first_records(tf_dir, split, n, walk_key)
        ]
    else:
        folder = _Split(dataset_dir, split, None)
        first = [folder.load(i) for i in range(min(n, len(folder)))]
    return np.stack([transform(first[i % len(first)], img_size, None) for i in range(n)])

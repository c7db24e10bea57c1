"""Training input from ArrayRecord shards (`preprocessing.array_record`) through Grain, for pods.

The global order is the folder reader's (the draws of `augment`): position p of the global
batches is image `epoch_permutation(seed, domain, e)[o]` with (e, o) = divmod(p, split size),
transformed with the draws of its (step, index in the global batch). The split's shards are
one random-access source whose record keys are the images' indices, so each process reads
only the records of its slice of each global batch, as Grain's `ShardByJaxProcess` would
have it, whatever the number of shards or processes; the batches are the folder reader's
whatever the topology. Starting at step k reads no record of the steps before: the data
position saved with a checkpoint (the step) is the whole iterator state.

Shards may be local or in a `gs://` bucket: array-record (>= 0.8.6) reads `gs://` itself
through its C++ GCS client (credentials as google-cloud-cpp finds them), so a bucket is read
as a folder is, each process fetching only its records; etils.epath lists the shards.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from p2c_jax.data.augment import augment_params, decode_image, epoch_permutation, transform
from preprocessing import array_record
from preprocessing.extras import needs
from preprocessing.files import is_url, join
from preprocessing.splits import SPLITS

_END = 2**62  # positions of an endless stream


def find_shards(dataset_dir: str | os.PathLike) -> Path | str | None:
    """The folder of `dataset_dir`'s ArrayRecord shards (`<dataset>/array_record`, or the
    folder itself), or None: a Path, or for a `gs://` dataset its URI (array_record reads no
    other scheme, so any other URI has none)."""
    text = os.fspath(dataset_dir)
    if is_url(text):
        if not text.startswith("gs://"):
            return None
        root = text.rstrip("/")
        candidates: tuple[Path | str, ...] = (join(root, array_record.FOLDER), root)
    else:
        candidates = (Path(dataset_dir) / array_record.FOLDER, Path(dataset_dir))
    for cand in candidates:
        if any(array_record.split_shards(cand, s) for s in SPLITS):
            return cand
    return None


def open_split(folder: str | os.PathLike, split: str):
    """The records of `split` as one Grain random-access source (keys: the images' indices);
    FileNotFoundError naming the folder when it has no shards."""
    shards = array_record.split_shards(folder, split)
    if not shards:
        raise FileNotFoundError(f"the ArrayRecord shards in {os.fspath(folder)} have no {split}")
    with needs("grain", "ArrayRecord datasets"):
        import grain

    return grain.sources.ArrayRecordDataSource(shards)


class GrainBatches(Iterator[np.ndarray]):
    """Endless batches from a Grain iterator; close() (or `with`) releases its threads."""

    def __init__(self, iterator):
        self._it = iterator

    def __next__(self) -> np.ndarray:
        if self._it is None:
            raise StopIteration
        return next(self._it)

    def close(self) -> None:
        if self._it is not None:
            self._it.close()
        self._it = None

    def __enter__(self) -> GrainBatches:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def train_batches(
    source,
    domain: str,
    global_batch: int,
    img_size: int,
    augment: bool,
    seed: int,
    process_index: int,
    process_count: int,
    start_step: int,
    *,
    prefetch: int,
    workers: int,
) -> GrainBatches:
    """This process's slices [global_batch // process_count, img_size, img_size, 3] of the
    global batches of steps start_step, start_step + 1, ... from the random-access `source`
    (`open_split`), decoded by `workers` threads `prefetch` batches ahead."""
    import grain

    n, per = len(source), global_batch // process_count
    lo = process_index * per

    def example(position: int) -> np.ndarray:
        step, k = divmod(position, per)
        epoch, offset = divmod(step * global_batch + lo + k, n)
        key = int(epoch_permutation(seed, domain, epoch, n)[offset])
        _, png = array_record.decode_example(source[key])
        aug = augment_params(seed, domain, step, lo + k) if augment else None
        return transform(decode_image(png), img_size, aug)

    options = grain.ReadOptions(num_threads=workers, prefetch_buffer_size=prefetch * per)
    batches = (
        grain.MapDataset.range(start_step * per, _END)
        .map(example)
        .to_iter_dataset(options)
        .batch(per)
    )
    return GrainBatches(iter(batches))


def first_images(source, n: int) -> list:
    """The first `n` images of a split (fewer if it is smaller), in the reader's order."""
    return [
        decode_image(array_record.decode_example(source[i])[1]) for i in range(min(n, len(source)))
    ]

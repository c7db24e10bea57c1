"""Reading the TFRecord datasets written by `preprocessing.tfrecords`, streamed through tf.data.

A dataset is a tensorflow-datasets folder (`dataset_info.json` and, per split, shards
`p2c_faces-<split>.tfrecord-XXXXX-of-YYYYY` of `tf.train.Example`s holding `image`, the
encoded PNG, and `name`, its path relative to the split folder). Only `tensorflow` is
needed to read it (not tensorflow-datasets), and only when records are read: finding a
local dataset and counting its records reads the JSON alone. Paths may be local, `gs://`
or any other scheme `tf.io.gfile` knows (`ram://` in the tests); a remote path is kept
as a string and never made absolute.

`stream_batches` is the training reader: records are read as they are consumed, so the
memory it holds is bounded by the shuffle buffer (encoded records) and the batches in
flight (decoded), whatever the size of the split.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import heapq
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from preprocessing.extras import tensorflow
from preprocessing.files import is_url

INFO_FILE = "dataset_info.json"
SHUFFLE_BUFFER = 1024  # records: ~100-200 MB of 256 px PNGs, the original's splits whole
CYCLE_LENGTH = 16  # record files read at once by the interleave

PathLike = str | os.PathLike


# ---------------------------------------------------------------------------- files


@functools.cache
def _tf():
    """tensorflow, imported on first use, kept off the GPUs and TPUs that JAX uses.

    TensorFlow only reads files here; left alone, a GPU build would reserve the devices'
    memory on its first operation.
    """
    tf = tensorflow("reading TFRecords")

    for kind in ("GPU", "TPU"):
        # fails if TensorFlow already initialised its devices, or knows no such type
        with contextlib.suppress(RuntimeError, ValueError):
            tf.config.set_visible_devices([], kind)
    return tf


def _join(path: PathLike, *parts: str) -> str:
    return "/".join([os.fspath(path).rstrip("/"), *parts])


@contextlib.contextmanager
def _known_scheme(path: str) -> Iterator[None]:
    """ValueError naming the scheme when TensorFlow has no file system for it (memory://)."""
    tf = _tf()
    try:
        yield
    except tf.errors.UnimplementedError:
        scheme = path.partition("://")[0]
        raise ValueError(f"{path}: TensorFlow reads no {scheme}:// files") from None


def _is_file(path: str) -> bool:
    if not is_url(path):
        return os.path.isfile(path)
    with _known_scheme(path):
        return _tf().io.gfile.exists(path)


def _glob(folder: str, *parts: str) -> list[str]:
    """Matches of the pattern `parts` inside `folder` (whose own name is taken literally)."""
    if not is_url(folder):
        return sorted(glob.glob(os.path.join(glob.escape(folder), *parts)))
    with _known_scheme(folder):
        return sorted(_tf().io.gfile.glob(_join(folder, *parts)))


def _read_text(path: str) -> str:
    if is_url(path):
        with _tf().io.gfile.GFile(path, "r") as f:
            return f.read()
    return Path(path).read_text()


def find_dataset(dataset_dir: PathLike) -> str | None:
    """The folder holding `dataset_info.json` of a TFRecord dataset in `dataset_dir/tfrecords`
    or `dataset_dir` (directly, or as tfds's `<name>/<version>/`, the last version), or None.

    ValueError for a URI whose scheme TensorFlow cannot read."""
    for cand in (_join(dataset_dir, "tfrecords"), os.fspath(dataset_dir).rstrip("/")):
        infos = [_join(cand, INFO_FILE), *_glob(cand, "*", "*", INFO_FILE)]
        info = next((p for p in reversed(infos) if _is_file(p)), None)
        if info is not None:
            return info.rpartition("/")[0]
    return None


@dataclass(frozen=True)
class SplitFiles:
    """The record files of one split, in shard order, and the number of records in each."""

    files: tuple[str, ...]
    lengths: tuple[int, ...]

    @property
    def size(self) -> int:
        return sum(self.lengths)


def _shard_name(template: str, dataset: str, split: str, i: int, n: int) -> str:
    return (
        template.replace("{DATASET}", dataset)
        .replace("{SPLIT}", split)
        .replace("{FILEFORMAT}", "tfrecord")
        .replace("{SHARD_X_OF_Y}", f"{i:05d}-of-{n:05d}")
        .replace("{SHARD_INDEX}", f"{i:05d}")
        .replace("{NUM_SHARDS}", f"{n:05d}")
    )


def read_splits(tf_dir: PathLike) -> dict[str, SplitFiles]:
    """The splits of the dataset in `tf_dir` (a `find_dataset` folder), from its JSON alone."""
    tf_dir = os.fspath(tf_dir).rstrip("/")
    info = json.loads(_read_text(_join(tf_dir, INFO_FILE)))
    out = {}
    for s in info.get("splits", []):
        lengths = tuple(int(n) for n in s.get("shardLengths", []))
        template = s.get("filepathTemplate", "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}")
        files = tuple(
            _join(tf_dir, _shard_name(template, info["name"], s["name"], i, len(lengths)))
            for i in range(len(lengths))
        )
        out[s["name"]] = SplitFiles(files, lengths)
    return out


def split_files(tf_dir: PathLike, split: str) -> SplitFiles:
    """The record files of `split`; FileNotFoundError naming the dataset when it has none."""
    found = read_splits(tf_dir).get(split)
    if found is None or not found.size:
        raise FileNotFoundError(f"the TFRecords in {os.fspath(tf_dir)} have no {split} images")
    return found


def _parse(record):
    tf = _tf()
    ex = tf.io.parse_single_example(
        record,
        {
            "name": tf.io.FixedLenFeature([], tf.string),
            "image": tf.io.FixedLenFeature([], tf.string),
        },
    )
    return ex["name"], ex["image"]


def read_records(tf_dir: PathLike, split: str) -> Iterator[tuple[str, bytes]]:
    """(name, encoded image) of every record of `split`, in file order, read as consumed."""
    tf = _tf()
    files = split_files(tf_dir, split).files
    ds = tf.data.TFRecordDataset(list(files)).map(_parse)
    for name, data in ds.as_numpy_iterator():
        yield name.decode(), data


def first_records(
    tf_dir: PathLike, split: str, n: int, key: Callable[[str], object] = str
) -> list[tuple[str, bytes]]:
    """The `n` records of `split` first by `key(name)`, in that order, holding only `n` at once."""
    return heapq.nsmallest(n, read_records(tf_dir, split), key=lambda r: key(r[0]))


def read_tfrecord_images(data_dir: PathLike, split: str) -> Iterator[tuple[str, np.ndarray]]:
    """(name, RGB uint8 image) of one split, sorted by name, decoded losslessly from the PNGs.

    For tests and inspection: it holds the split's encoded images (not decoded) while sorting.
    """
    from preprocessing.io import load_rgb_bytes

    tf_dir = find_dataset(data_dir)
    if tf_dir is None:
        raise FileNotFoundError(f"no TFRecord dataset under {os.fspath(data_dir)}")
    for name, data in sorted(read_records(tf_dir, split)):
        yield name, load_rgb_bytes(data)


# ---------------------------------------------------------------------------- streaming


MAX_SHARE_SPREAD = 0.1  # the largest share of files at most 10 % over the smallest


@dataclass(frozen=True)
class HostShard:
    """The records one process reads in each epoch.

    `by_file`: the process reads the files `files` whole (files sharded across processes);
    otherwise it reads every file of the split and keeps every `process_count`-th record of
    each epoch's interleaved sequence, starting at its `process_index`.
    `size`: the records it gets per epoch (its epoch length).
    """

    files: tuple[str, ...]
    size: int
    by_file: bool


def host_shard(split: SplitFiles, process_index: int, process_count: int) -> HostShard:
    """Files sharded (each process reads only its own) when their number is a multiple of
    `process_count` and the processes' shares differ by at most `MAX_SHARE_SPREAD` (tfds's
    shards are equal to within a record, the Beam pipeline's to about the square root of their
    size); records sharded by index otherwise, since a process with a smaller share would draw
    its images more often."""
    sizes = [sum(split.lengths[p::process_count]) for p in range(process_count)]
    even = max(sizes) <= (1 + MAX_SHARE_SPREAD) * min(sizes)
    if len(split.files) % process_count == 0 and even:
        shard = HostShard(split.files[process_index::process_count], sizes[process_index], True)
    else:
        shard = HostShard(split.files, len(range(process_index, split.size, process_count)), False)
    if shard.size == 0:
        raise ValueError(
            f"{split.size} records cannot be shared by {process_count} processes: "
            f"process {process_index} gets none"
        )
    return shard


def _seed(*key: int) -> int:
    """A non-negative int62 drawn from `key`, to seed TensorFlow's random ops (room to add epochs)."""
    return int(np.random.SeedSequence(list(key)).generate_state(1, np.uint64)[0] >> np.uint64(2))


class RecordStream(Iterator):
    """Endless batches from a tf.data pipeline; close() (or `with`) releases it."""

    def __init__(self, dataset, with_names: bool):
        self._it = dataset.as_numpy_iterator()
        self._with_names = with_names

    def __next__(self):
        if self._it is None:
            raise StopIteration
        names, images = next(self._it)
        if self._with_names:
            return [n.decode() for n in names], images
        return images

    def close(self) -> None:
        self._it = None

    def __enter__(self) -> RecordStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def stream_batches(
    tf_dir: PathLike,
    split: str,
    batch: int,
    example: Callable[[int, bytes], np.ndarray],
    example_shape: Sequence[int],
    seed_key: Sequence[int],
    process_index: int = 0,
    process_count: int = 1,
    start_position: int = 0,
    *,
    shuffle_buffer: int = SHUFFLE_BUFFER,
    prefetch: int = 3,
    workers: int | None = 3,
    with_names: bool = False,
) -> RecordStream:
    """Endless batches of `batch` examples `example(position, encoded image)` (float32 arrays
    of `example_shape`) from this process's records of `split`; `(names, batch)` pairs if
    `with_names`.

    Epoch e of this process (see `host_shard`): its record files in an order drawn from
    (seed_key, e) (and process_index when sharded by file), read `CYCLE_LENGTH` at a time by
    a deterministic interleave, kept one in `process_count` when sharded by record, then
    shuffled by a `shuffle_buffer`-record buffer seeded by (seed_key, process_index, e): a
    uniform permutation when the buffer holds the whole epoch. Epochs follow each other;
    `position` counts the examples of this process from 0. Starting at `start_position`
    gives exactly the examples an uninterrupted stream gives from there: that epoch is
    rebuilt and its first `start_position mod size` records are read and dropped (never
    decoded). The order is a function of (seed_key, files, process_index, process_count)
    alone, as long as nothing sets TensorFlow's global seed (`tf.random.set_seed`). Records
    are decoded in `workers` threads (tf.data's autotuning if None) as the batches are
    consumed, `prefetch` batches ahead.
    """
    tf = _tf()
    shard = host_shard(split_files(tf_dir, split), process_index, process_count)
    first_epoch, skip = divmod(start_position, shard.size)
    order_key = (*seed_key, 0) if not shard.by_file else (*seed_key, 0, process_index)
    order_seed = _seed(*order_key)  # the same on every process when sharded by record
    shuffle_seed = _seed(*seed_key, 1, process_index)
    files = tf.constant(shard.files)
    cycle = min(len(shard.files), CYCLE_LENGTH)

    def epoch(e):
        draws = tf.random.stateless_uniform([len(shard.files)], seed=tf.stack([order_seed, e]))
        records = tf.data.Dataset.from_tensor_slices(tf.gather(files, tf.argsort(draws)))
        records = records.interleave(
            tf.data.TFRecordDataset,
            cycle_length=cycle,
            block_length=1,
            num_parallel_calls=cycle,
            deterministic=True,
        )
        if not shard.by_file:
            records = records.shard(process_count, process_index)
        return records.shuffle(
            shuffle_buffer, seed=shuffle_seed + e, reshuffle_each_iteration=False
        )

    def decode(position, name, data):
        image = tf.numpy_function(example, [position, data], tf.float32, stateful=False)
        return name, tf.ensure_shape(image, example_shape)

    records = tf.data.Dataset.range(first_epoch, 2**62).flat_map(epoch).skip(skip).map(_parse)
    positions = tf.data.Dataset.range(start_position, 2**62)
    ds = tf.data.Dataset.zip((positions, records)).map(
        lambda p, r: decode(p, *r),
        num_parallel_calls=tf.data.AUTOTUNE if workers is None else workers,
        deterministic=True,
    )
    ds = ds.batch(batch, drop_remainder=True).prefetch(prefetch)
    options = tf.data.Options()
    options.deterministic = True
    return RecordStream(ds.with_options(options), with_names)

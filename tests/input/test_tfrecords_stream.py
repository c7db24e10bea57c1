"""TFRecord splits larger than the shuffle buffer, streamed through tf.data: memory flat in the
split size, records sharded across processes, deterministic, resumable at any step."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers.ci_required import require
from PIL import Image

from p2c_jax.data import input_pipeline as ip
from p2c_jax.data import tfrecords
from p2c_jax.data.augment import augment_params, transform
from preprocessing.splits import SPLITS

# the TFRecord writer needs tensorflow-datasets
write_dataset = require("preprocessing.tfrecords", "the preprocess extra").write_dataset

N_TRAIN = 20
SIZE = 16  # examples are SIZE x SIZE crops of the 32 px images resized to SIZE + 30
BUFFER = 8  # < N_TRAIN: the train splits are streamed


def _write_images(folder: Path, names: list[str], side: int, rng: np.random.Generator) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name, compress_level=0)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """Image folders: N_TRAIN distinct 32 px images per train split, 4 per test split."""
    root, rng = tmp_path_factory.mktemp("source"), np.random.default_rng(0)
    for split in SPLITS:
        n = N_TRAIN if split.startswith("train") else 4
        _write_images(root / split, [f"{split}_{i:02d}.png" for i in range(n)], 32, rng)
    return root


@pytest.fixture(scope="module")
def records(source, tmp_path_factory) -> dict[int, Path]:
    """The folders as TFRecords in 4 files per split (sharded by file across 2 processes)
    and in 3 (sharded by record)."""
    out = {}
    for shards in (4, 3):
        out[shards] = tmp_path_factory.mktemp(f"records{shards}")
        assert write_dataset(source, out[shards], num_shards=shards)["trainA"] == N_TRAIN
    return out


def _stream(dataset, n: int, **kw) -> list[tuple[list[str], np.ndarray]]:
    """The first n (names, batch) pairs of a stream of global batch 4 (of the defaults below)."""
    args = {"domain": "A", "global_batch": 4, "img_size": SIZE, "augment": True, "seed": 5}
    args.update(kw)
    it = ip.train_batches(dataset, shuffle_buffer=BUFFER, with_names=True, **args)
    assert isinstance(it, tfrecords.RecordStream)
    with it:
        return [next(it) for _ in range(n)]


def _names(pairs) -> list[str]:
    return [name for names, _ in pairs for name in names]


@pytest.mark.parametrize("shards", [4, 3])
def test_processes_read_disjoint_records_covering_the_split(records, source, shards):
    split = tfrecords.split_files(tfrecords.find_dataset(records[shards]), "trainA")
    assert len(split.files) == shards and split.size == N_TRAIN
    hosts = [tfrecords.host_shard(split, p, 2) for p in range(2)]
    assert [h.by_file for h in hosts] == [shards == 4] * 2
    assert sum(h.size for h in hosts) == N_TRAIN
    everything = {p.name for p in (source / "trainA").iterdir()}
    epochs = []  # [process][epoch]: the names read
    for p, host in enumerate(hosts):
        # global batch 4 on 2 processes: 2 examples a step; 2 epochs of this process
        names = _names(_stream(records[shards], host.size, process_index=p, process_count=2))
        epochs.append([names[: host.size], names[host.size :]])
        assert epochs[p][0] != epochs[p][1]  # reshuffled each epoch
    for e in range(2):  # in every epoch the processes share out the whole split
        a, b = (set(epochs[p][e]) for p in range(2))
        assert len(a) == len(b) == N_TRAIN // 2 and a.isdisjoint(b) and a | b == everything
    # by file, each process keeps its files; by record, the shares change with the epoch
    assert (set(epochs[0][0]) == set(epochs[0][1])) == (shards == 4)
    # one process reads every file: each epoch a fresh permutation of the whole split
    names = _names(_stream(records[shards], N_TRAIN // 2))
    assert set(names[:N_TRAIN]) == set(names[N_TRAIN:]) == everything
    assert names[:N_TRAIN] != names[N_TRAIN:]


@pytest.mark.parametrize(
    ("lengths", "by_file", "sizes"),
    [((10, 9, 10, 10), True, [20, 19]), ((10, 8, 10, 9), False, [19, 18])],
)
def test_files_are_shared_only_where_they_share_the_records_evenly(lengths, by_file, sizes):
    """Four files for two processes: by file where one share is 5 % over the other, by record
    where it would be 11 % over (``tfrecords.MAX_SHARE_SPREAD``)."""
    split = tfrecords.SplitFiles(tuple(f"f{i}" for i in range(len(lengths))), lengths)
    hosts = [tfrecords.host_shard(split, p, 2) for p in range(2)]
    assert [h.by_file for h in hosts] == [by_file] * 2 and [h.size for h in hosts] == sizes
    assert hosts[0].files == (("f0", "f2") if by_file else split.files)


@pytest.mark.parametrize("process_count", [1, 2])
def test_streams_are_deterministic_and_resume_exactly(records, process_count):
    kw = {"process_index": process_count - 1, "process_count": process_count}
    straight = _stream(records[3], 14, **kw)  # 14 steps: into the third epoch of a process
    again = _stream(records[3], 14, **kw)
    assert _names(again) == _names(straight)
    np.testing.assert_array_equal(
        np.stack([b for _, b in again]), np.stack([b for _, b in straight])
    )
    other_seed = _stream(records[3], 14, **{**kw, "seed": 6})
    assert _names(other_seed) != _names(straight)
    for start in (3, 7, 11):  # within the first epoch, and in later ones (epochs: 20 / pc)
        resumed = _stream(records[3], 14 - start, start_step=start, **kw)
        assert _names(resumed) == _names(straight[start:])
        np.testing.assert_array_equal(
            np.stack([b for _, b in resumed]), np.stack([b for _, b in straight[start:]])
        )


def _folder_examples(source: Path, names: list[str], step: int, p: int, augment: bool):
    """The examples that the images ``names`` of the folder make at ``step`` on process ``p``
    of 2 (global batch 4), decoded from the PNGs and transformed as the folder reader does."""
    out = []
    for k, name in enumerate(names):
        aug = augment_params(5, "A", step, 2 * p + k) if augment else None
        with Image.open(source / "trainA" / name) as im:
            out.append(transform(im.convert("RGB"), SIZE, aug))
    return np.stack(out)


@pytest.mark.parametrize("augment", [True, False])
def test_streamed_examples_are_the_folder_transforms(records, source, augment):
    """Each example is the folder image of that name, flipped and cropped with the draws of
    its slot (step, index in the global batch), exactly as the folder reader does it."""
    for p in range(2):
        pairs = _stream(
            records[4], 3, augment=augment, process_index=p, process_count=2, start_step=2
        )
        for step, (names, batch) in enumerate(pairs, start=2):
            assert batch.shape == (2, SIZE, SIZE, 3) and batch.dtype == np.float32
            np.testing.assert_array_equal(batch, _folder_examples(source, names, step, p, augment))


def test_train_batches_streams_splits_larger_than_the_buffer(records, source):
    """``train_batches`` streams a split larger than the buffer: its batches are the folder's
    PNGs, decoded and transformed, named by the stream's order."""
    with ip.train_batches(records[4], "A", 4, SIZE, True, 5, shuffle_buffer=BUFFER) as it:
        assert isinstance(it, tfrecords.RecordStream)
        batches = [next(it) for _ in range(3)]
    assert next(it, None) is None  # closed
    names = _names(_stream(records[4], 3))
    assert len(set(names)) == len(names) == 12  # 12 distinct images: batches differ
    for step, batch in enumerate(batches):
        want = _folder_examples(source, names[4 * step : 4 * step + 4], step, 0, True)
        np.testing.assert_array_equal(batch, want)
    # at most shuffle_buffer records: held encoded, the same batches as the folders
    with ip.train_batches(records[4], "A", 4, SIZE, True, 5, shuffle_buffer=N_TRAIN) as held:
        assert isinstance(held, ip.BatchIterator)
        with ip.train_batches(source, "A", 4, SIZE, True, 5) as folder:
            np.testing.assert_array_equal(next(held), next(folder))


def test_remote_datasets_are_read_through_tf_gfile(records, source):
    """A dataset on TensorFlow's in-memory filesystem, standing for gs://, reads as on disk."""
    import tensorflow as tf

    local = Path(tfrecords.find_dataset(records[4]))
    remote = "ram://p2c-test/dataset"
    tf.io.gfile.makedirs(f"{remote}/tfrecords")
    for f in local.iterdir():
        tf.io.gfile.copy(str(f), f"{remote}/tfrecords/{f.name}", overwrite=True)
    try:
        assert ip.resolve_dataset(remote + "/") == remote  # a string, not a local Path
        assert ip.resolve_dataset(remote).startswith("ram://")
        np.testing.assert_array_equal(
            np.stack([b for _, b in _stream(remote, 3)]),
            np.stack([b for _, b in _stream(records[4], 3)]),
        )
        np.testing.assert_array_equal(
            ip.held_out_images(remote, "B", SIZE, 5), ip.held_out_images(source, "B", SIZE, 5)
        )
        with pytest.raises(ip.DatasetError, match=r"--dataset ram://p2c-test/none: no TFRecord"):
            ip.resolve_dataset("ram://p2c-test/none")
        with pytest.raises(ip.DatasetError, match=r"--dataset memory://d: TensorFlow reads no"):
            ip.resolve_dataset("memory://d")
    finally:
        tf.io.gfile.rmtree("ram://p2c-test")


_PEAK_RSS = textwrap.dedent(
    """
    import json, sys

    def status(key):  # MiB
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) / 1024 for l in f if l.startswith(key))

    from p2c_jax.data import input_pipeline as ip, tfrecords
    import tensorflow  # imported before the baseline
    dataset, mode = sys.argv[1], sys.argv[2]
    base = status("VmRSS")
    if mode == "whole":  # the former reader: the split decoded into memory, then batches
        images = [image for _, image in tfrecords.read_tfrecord_images(dataset, "trainA")]
        kw = {}
    else:
        kw = {"shuffle_buffer": 16}
    with ip.train_batches(dataset, "A", 8, 64, True, 0, **kw) as it:
        for _ in range(32):  # 256 images: one epoch of the larger split, 4 of the smaller
            next(it)
    print(json.dumps({"base": base, "peak": status("VmHWM")}))
    """
)


def peak_rss(datasets: list[Path], mode: str = "stream") -> list[dict[str, float]]:
    """Peak and pre-pipeline resident memory (MiB) of a fresh process reading each dataset,
    the processes run side by side."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _PEAK_RSS, str(d), mode],
            cwd=Path(__file__).parents[2],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for d in datasets
    ]
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


@pytest.fixture(scope="module")
def sized_records(tmp_path_factory) -> dict[int, Path]:
    """TFRecords of 64 and 256 random 384 px images (442 kB decoded, as much stored)."""
    root, rng = tmp_path_factory.mktemp("sized"), np.random.default_rng(1)
    names = [f"{i:03d}.png" for i in range(256)]
    _write_images(root / "src256" / "trainA", names, 384, rng)
    (root / "src64" / "trainA").mkdir(parents=True)
    for name in names[:64]:
        (root / "src64" / "trainA" / name).symlink_to(root / "src256" / "trainA" / name)
    out = {}
    for n in (64, 256):
        out[n] = root / f"records{n}"
        assert write_dataset(root / f"src{n}", out[n], ["trainA"]) == {"trainA": n}
    return out


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads Linux's VmHWM")
def test_peak_memory_is_flat_in_the_split_size(sized_records):
    """Streaming 4N images peaks within 10 % of streaming N (measured: 4N 2-3 % lower). The
    former whole-split decoding (`peak_rss(..., "whole")`: the split decoded, its encoded
    records held while sorting) fails both bounds: 4N peaks 24 % (171 MiB) above N."""
    small, large = peak_rss([sized_records[64], sized_records[256]])
    assert abs(large["peak"] - small["peak"]) <= 0.1 * small["peak"], (small, large)
    decoded_extra = 192 * 384 * 384 * 3 / 2**20  # MiB of the 3N images only the 4N split has
    assert large["peak"] - small["peak"] < decoded_extra / 4, (small, large)

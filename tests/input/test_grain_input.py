"""ArrayRecord shards, local or in a gs:// bucket, read through Grain: the folders' batches at
any topology and shard count, each process reading only its records, resumed without reading
earlier ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers.ci_required import require
from PIL import Image

from p2c_jax.data import input_pipeline as ip
from p2c_jax.data.augment import batch_file_indices
from p2c_jax.train import evaluation
from preprocessing.splits import SPLITS

require("grain", "the grain extra")
from p2c_jax.data import grain_input  # noqa: E402
from preprocessing import array_record  # noqa: E402

N_TRAIN = 10  # the global batches below straddle epochs
SIZE = 16
BATCH = 4
STEPS = 5
ARGS = {"domain": "A", "global_batch": BATCH, "img_size": SIZE, "augment": True, "seed": 7}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """Image folders with a subfolder (the walk order), N_TRAIN train and 5 test images each."""
    root, rng = tmp_path_factory.mktemp("source"), np.random.default_rng(1)
    for split in SPLITS:
        n = N_TRAIN if split.startswith("train") else 5
        for i in range(n):
            path = root / split / ("sub" if i % 3 == 0 else "") / f"{split}_{i:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    return root


@pytest.fixture(scope="module")
def shards(source, tmp_path_factory) -> dict[int, Path]:
    """The folders as ArrayRecord datasets of 1, 3 and 5 shards per split."""
    out = {}
    for n in (1, 3, 5):
        out[n] = tmp_path_factory.mktemp(f"shards{n}")
        counts = array_record.write_dataset(source, out[n] / "array_record", num_shards=n)
        assert counts["trainA"] == N_TRAIN
        assert len(array_record.split_shards(out[n] / "array_record", "trainA")) == n
    return out


class CountingSource:
    """A Grain source that records the keys read."""

    def __init__(self, inner):
        self.inner, self.keys = inner, []

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, key: int) -> bytes:
        self.keys.append(int(key))
        return self.inner[key]


def _global(dataset, process_count: int, steps: int = STEPS, start: int = 0) -> np.ndarray:
    """The global batches of `steps` steps, concatenated from every simulated process."""
    per_process = []
    for pi in range(process_count):
        with ip.train_batches(
            dataset, **ARGS, process_index=pi, process_count=process_count, start_step=start
        ) as it:
            per_process.append([next(it) for _ in range(steps)])
    return np.stack([np.concatenate(batches) for batches in zip(*per_process)])


def test_records_hold_the_tfrecord_example_in_walk_order(source, shards):
    """Record key i is the i-th image of the walk order, its name and PNG bytes intact."""
    src = grain_input.open_split(shards[3] / "array_record", "trainA")
    names = [array_record.decode_example(src[i]) for i in range(len(src))]
    expected = [
        p.relative_to(source / "trainA").as_posix() for p in ip.list_images(source / "trainA")
    ]
    assert [n for n, _ in names] == expected
    assert all(png == (source / "trainA" / n).read_bytes() for n, png in names)


@pytest.mark.parametrize(("n_shards", "process_counts"), [(1, (1, 2, 4)), (3, (2,)), (5, (4,))])
def test_global_batches_are_the_folders_at_any_topology(source, shards, n_shards, process_counts):
    folders = _global(source, 1)
    for pc in process_counts:
        np.testing.assert_array_equal(_global(shards[n_shards], pc), folders)


def test_each_process_reads_only_its_slice(shards):
    src = grain_input.open_split(shards[3] / "array_record", "trainA")
    n, per = len(src), BATCH // 2
    for pi in range(2):
        counting = CountingSource(src)
        with grain_input.train_batches(
            counting, "A", BATCH, SIZE, True, 7, pi, 2, 0, prefetch=0, workers=1
        ) as it:
            for _ in range(STEPS):
                next(it)
        mine = [
            int(batch_file_indices(7, "A", s, BATCH, n)[k])
            for s in range(STEPS)
            for k in range(pi * per, (pi + 1) * per)
        ]
        assert sorted(counting.keys[: len(mine)]) == sorted(mine)


def test_resume_at_step_k_reads_nothing_before_it(shards):
    straight = _global(shards[3], 2, steps=STEPS)
    k = 3
    np.testing.assert_array_equal(_global(shards[3], 2, steps=STEPS - k, start=k), straight[k:])
    src = grain_input.open_split(shards[3] / "array_record", "trainA")
    counting = CountingSource(src)
    with grain_input.train_batches(
        counting, "A", BATCH, SIZE, True, 7, 0, 1, k, prefetch=0, workers=1
    ) as it:
        next(it)
    first = batch_file_indices(7, "A", k, BATCH, len(src))
    assert counting.keys[:BATCH] == [int(i) for i in first]
    assert len(counting.keys) <= 2 * BATCH  # that batch and at most one ahead, no earlier step


def test_dataset_with_shards_resolves_and_holds_out_test_images(source, shards):
    assert ip.resolve_dataset(str(shards[5])) == shards[5]
    np.testing.assert_array_equal(
        ip.held_out_images(shards[5], "B", SIZE, 5), ip.held_out_images(source, "B", SIZE, 5)
    )


def test_missing_split_names_the_dataset(source, tmp_path):
    array_record.write_dataset(source, tmp_path / "array_record", ["trainA", "testA"])
    with pytest.raises(
        ip.DatasetError, match=r"shards in .*array_record lacks images in trainB, testB"
    ):
        ip.resolve_dataset(str(tmp_path))


def _upload(folder: Path, dest) -> None:
    """The files of `folder` copied under the epath `dest` (a gs:// prefix)."""
    for f in sorted(folder.iterdir()):
        (dest / f.name).write_bytes(f.read_bytes())


def test_shards_in_a_bucket_read_as_the_folder(shards, gcs_bucket, monkeypatch):
    """array_record reads gs:// itself: a bucket's shards give the folder's batches, at 1 and
    2 processes and resumed at step k; the held-out and evaluation images too. Shards win over TFRecords beside
    them, as locally, and no TensorFlow is asked (its GCS client could not reach the fake)."""
    _upload(shards[3] / "array_record", gcs_bucket / "array_record")
    (gcs_bucket / "tfrecords" / "dataset_info.json").write_text("{}")
    monkeypatch.setattr(ip.tfrecords, "find_dataset", lambda d: pytest.fail(f"TFRecords of {d}"))
    uri = str(gcs_bucket)
    assert ip.resolve_dataset(uri + "/") == uri
    assert grain_input.find_shards(uri) == f"{uri}/array_record"
    assert array_record.split_shards(f"{uri}/array_record", "trainA") == [
        f"{uri}/array_record/{Path(f).name}"
        for f in array_record.split_shards(shards[3] / "array_record", "trainA")
    ]
    k = 3
    for pc in (1, 2):
        local = _global(shards[3], pc)
        np.testing.assert_array_equal(_global(uri, pc), local)
        np.testing.assert_array_equal(_global(uri, pc, steps=STEPS - k, start=k), local[k:])
    np.testing.assert_array_equal(
        ip.held_out_images(uri, "B", SIZE, 5), ip.held_out_images(shards[3], "B", SIZE, 5)
    )
    held_out = evaluation.held_out_uint8(uri, "A", SIZE, 0)  # --eval_freq: the whole split
    assert held_out.shape == (5, SIZE, SIZE, 3)
    np.testing.assert_array_equal(held_out, evaluation.held_out_uint8(shards[3], "A", SIZE, 0))


def test_bucket_without_a_split_or_a_dataset_names_the_flag(
    source, tmp_path, gcs_bucket, monkeypatch
):
    """A bucket's shards lacking splits, or a bucket with neither shards nor TFRecords: a
    DatasetError naming --dataset."""
    array_record.write_dataset(source, tmp_path, ["trainA", "testA"])
    _upload(tmp_path, gcs_bucket)
    uri = str(gcs_bucket)
    with pytest.raises(
        ip.DatasetError,
        match=rf"--dataset {uri}: the ArrayRecord shards in {uri} lack images in trainB, testB",
    ):
        ip.resolve_dataset(uri)
    monkeypatch.setattr(ip.tfrecords, "find_dataset", lambda d: None)  # no TFRecords there
    with pytest.raises(
        ip.DatasetError, match=rf"--dataset {uri}/empty: no TFRecord dataset or ArrayRecord shards"
    ):
        ip.resolve_dataset(f"{uri}/empty")

"""Input pipeline and demo dataset, checked against independent PIL/numpy references."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers.ci_required import require
from PIL import Image, ImageOps

from p2c_jax.data import input_pipeline as ip
from p2c_jax.data.augment import Augment, augment_params, batch_file_indices, epoch_permutation
from p2c_jax.data.demo import build_demo

SIZE = 32


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return ip.resolve_dataset("demo", tmp_path_factory.mktemp("datasets"))


def _files(dataset: Path, split: str) -> list[Path]:
    return sorted(
        (dataset / split).glob("*.png")
    )  # the demo is flat, so sorted() is the original's order


def _pil_rgb(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def _reference_example(path: Path, aug: Augment | None) -> np.ndarray:
    """The original's transforms re-done with PIL alone: flip, resize, crop, x / 127.5 - 1."""
    img = _pil_rgb(path)
    if aug is None:
        img = img.resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    else:
        if aug.flip:
            img = ImageOps.mirror(img)
        img = img.resize((SIZE + 30, SIZE + 30), Image.Resampling.BILINEAR)
        img = img.crop((aug.left, aug.top, aug.left + SIZE, aug.top + SIZE))
    return np.asarray(img, np.float64) / 127.5 - 1


def _take(it, n: int) -> list[np.ndarray]:
    with it:
        return [next(it) for _ in range(n)]


def test_list_images_follows_the_original_walk_order(tmp_path):
    for rel in ["b.png", "a.JPG", "notes.txt", "sub/z.bmp", "sub/a.tif", "sub-x/c.jpeg", "a/y.png"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    got = [p.relative_to(tmp_path).as_posix() for p in ip.list_images(tmp_path)]
    # os.walk sorted by folder path ("", "/a", "/sub", "/sub-x" sorts as "/sub" < "/sub-x"), names sorted
    assert got == ["a.JPG", "b.png", "a/y.png", "sub/a.tif", "sub/z.bmp", "sub-x/c.jpeg"]
    assert sorted(got, key=ip.walk_key) == got  # the key that orders TFRecord names the same way


def test_unaugmented_batches_are_pil_bilinear_resizes(demo):
    files = _files(demo, "trainA")
    for step, batch in enumerate(_take(ip.train_batches(demo, "A", 5, SIZE, False, seed=7), 3)):
        assert batch.shape == (5, SIZE, SIZE, 3) and batch.dtype == np.float32
        idx = batch_file_indices(7, "A", step, 5, len(files))
        want = np.stack([_reference_example(files[i], None) for i in idx])
        np.testing.assert_allclose(batch, want, atol=1e-6)


def test_augmented_batches_match_a_pil_reimplementation(demo):
    files = _files(demo, "trainB")
    batches = _take(ip.train_batches(demo, "B", 4, SIZE, True, seed=3, start_step=10), 3)
    for step, batch in enumerate(batches, start=10):
        idx = batch_file_indices(3, "B", step, 4, len(files))
        want = [
            _reference_example(files[i], augment_params(3, "B", step, k)) for k, i in enumerate(idx)
        ]
        np.testing.assert_allclose(batch, np.stack(want), atol=1e-6)


def test_augment_draws_cover_flips_and_all_crop_offsets():
    draws = [augment_params(0, "A", step, k) for step in range(100) for k in range(8)]
    flips = np.mean([d.flip for d in draws])
    assert 0.44 < flips < 0.56
    assert {d.top for d in draws} == set(range(31)) == {d.left for d in draws}
    assert augment_params(0, "A", 5, 1) == augment_params(0, "A", 5, 1)
    assert len({augment_params(0, dom, 5, 1) for dom in "AB"} | {augment_params(1, "A", 5, 1)}) > 1


@pytest.mark.parametrize("augment", [False, True])
def test_process_slices_concatenate_to_the_global_batch_and_resume(demo, augment):
    whole = _take(ip.train_batches(demo, "A", 6, SIZE, augment, seed=1), 4)
    parts = [
        _take(
            ip.train_batches(demo, "A", 6, SIZE, augment, seed=1, process_index=p, process_count=3),
            4,
        )
        for p in range(3)
    ]
    for t in range(4):
        assert parts[0][t].shape == (2, SIZE, SIZE, 3)
        np.testing.assert_array_equal(np.concatenate([p[t] for p in parts]), whole[t])
    resumed = _take(ip.train_batches(demo, "A", 6, SIZE, augment, seed=1, start_step=2), 2)
    np.testing.assert_array_equal(np.stack(resumed), np.stack(whole[2:]))


def test_epochs_are_fresh_permutations_and_domains_differ():
    n, batch = 10, 4  # batches straddle epochs
    flat = np.concatenate([batch_file_indices(5, "A", t, batch, n) for t in range(10)])
    epochs = flat.reshape(4, n)
    for e in epochs:
        assert sorted(e) == list(range(n))
    assert len({tuple(e) for e in epochs}) == 4
    a, b = (np.concatenate([epoch_permutation(5, d, e, 50) for e in range(2)]) for d in "AB")
    assert not np.array_equal(a, b)
    assert not np.array_equal(epoch_permutation(5, "A", 0, 50), epoch_permutation(6, "A", 0, 50))


def test_test_images_are_the_first_sorted_files_resized(demo):
    files = _files(demo, "testB")
    got = ip.held_out_images(demo, "B", SIZE, len(files) + 2)
    want = [_reference_example(files[i % len(files)], None) for i in range(len(files) + 2)]
    np.testing.assert_allclose(got, np.stack(want), atol=1e-6)


def test_dataset_errors_name_the_flag_and_the_folders(tmp_path, demo):
    with pytest.raises(ip.DatasetError, match=r"--dataset nothing: no folder .*nothing"):
        ip.resolve_dataset("nothing", tmp_path)
    shutil.copytree(demo / "trainA", tmp_path / "partial" / "trainA")
    (tmp_path / "partial" / "testA").mkdir()
    with pytest.raises(
        ip.DatasetError, match=r"--dataset partial: .* lacks images in trainB, testA, testB"
    ):
        ip.resolve_dataset("partial", tmp_path)
    assert ip.resolve_dataset(str(demo)) == demo  # a path, not a name under root
    assert ip.resolve_dataset("demo", demo.parent) == demo  # built once, then reused
    with pytest.raises(ValueError, match="not divisible"):
        ip.train_batches(demo, "A", 5, SIZE, False, 0, process_count=2)


def test_close_stops_the_workers(demo):
    it = ip.train_batches(demo, "A", 8, SIZE, True, 0, prefetch=4)
    next(it)
    it.close()
    assert next(it, None) is None
    deadline = time.monotonic() + 10
    while (
        any(t.name.startswith("p2c-input") for t in threading.enumerate())
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    assert not any(t.name.startswith("p2c-input") for t in threading.enumerate())


def test_tfrecords_give_the_same_batches(demo, tmp_path):
    """Splits of at most shuffle_buffer records (here 6) are read like their folders; larger
    ones are streamed (tests/input/test_tfrecords_stream.py)."""
    require("tensorflow_datasets", "the preprocess extra")
    from preprocessing.tfrecords import write_dataset

    src = tmp_path / "src"
    for split in ip.SPLITS:
        (src / split).mkdir(parents=True)
        for f in _files(demo, split)[:6]:
            shutil.copy(f, src / split / f.name)
    write_dataset(src, tmp_path / "records")
    records = ip.resolve_dataset(str(tmp_path / "records"))  # TFRecords alone are a dataset
    for domain in "AB":
        want = _take(ip.train_batches(src, domain, 4, SIZE, True, seed=2), 3)
        it = ip.train_batches(records, domain, 4, SIZE, True, seed=2)
        assert isinstance(it, ip.BatchIterator)
        got = _take(it, 3)
        np.testing.assert_array_equal(np.stack(got), np.stack(want))
        np.testing.assert_array_equal(
            ip.held_out_images(records, domain, SIZE, 4), ip.held_out_images(src, domain, SIZE, 4)
        )


def _high_frequency_ratio(rgb: np.ndarray) -> float:
    """Mean squared Laplacian over variance: 20 for i.i.d. noise, a few at most for real images."""
    x = rgb.astype(np.float64)
    return float((cv2.Laplacian(x, cv2.CV_64F) ** 2).mean() / x.var())


def test_demo_is_deterministic_real_photos_and_cartoons(demo, tmp_path):
    counts = {split: len(_files(demo, split)) for split in ip.SPLITS}
    assert counts == {"trainA": 48, "trainB": 48, "testA": 8, "testB": 8}
    images = {
        split: [np.asarray(Image.open(f)) for f in _files(demo, split)] for split in ip.SPLITS
    }
    assert all(
        img.shape == (96, 96, 3) and img.dtype == np.uint8
        for imgs in images.values()
        for img in imgs
    )
    noise = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    assert _high_frequency_ratio(noise) > 15
    assert max(_high_frequency_ratio(img) for imgs in images.values() for img in imgs) < 5
    colours = {
        split: [len(np.unique(img.reshape(-1, 3), axis=0)) for img in imgs]
        for split, imgs in images.items()
    }
    assert np.median(colours["trainA"]) > 1000  # photos
    assert (
        max(colours["trainB"] + colours["testB"]) <= 16
    )  # cartoons: 8-colour palette and dark outlines

    small_a, small_b = build_demo(tmp_path / "a", 3, 2, 40), build_demo(tmp_path / "b", 3, 2, 40)
    for split in ip.SPLITS:
        fa, fb = _files(small_a, split), _files(small_b, split)
        assert [f.name for f in fa] == [f.name for f in fb] and len(fa) == (
            3 if split.startswith("train") else 2
        )
        for x, y in zip(fa, fb):
            np.testing.assert_array_equal(np.asarray(Image.open(x)), np.asarray(Image.open(y)))

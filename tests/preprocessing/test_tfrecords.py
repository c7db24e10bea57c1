"""preprocessing.tfrecords: folder -> TFRecords -> the same images, names and order."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.ci_required import needs, require
from PIL import Image

from p2c_jax.data.tfrecords import read_tfrecord_images
from preprocessing.io import load_rgb

# the TFRecord writer needs tensorflow-datasets
write_dataset = require("preprocessing.tfrecords", "the preprocess extra").write_dataset


def folder_images(folder):
    paths = sorted(folder.rglob("*.png"))
    return [(p.relative_to(folder).as_posix(), load_rgb(p)) for p in paths]


def test_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "aligned"
    sizes = {"trainA": [(64, 64), (97, 97), (64, 80)], "trainB": [(256, 256), (40, 50)]}
    for split, shapes in sizes.items():
        (src / split / "sub").mkdir(parents=True)
        for i, (h, w) in enumerate(shapes):
            name = f"sub/{i:03d}.png" if i == 2 else f"img_{9 - i}.png"
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
                src / split / name
            )
        (src / split / "report.jsonl").write_text("{}\n")  # not an image: not in the dataset
    counts = write_dataset(src, tmp_path / "tfrecords", ["trainA", "trainB"])
    assert counts == {"trainA": 3, "trainB": 2}
    for split in ("trainA", "trainB"):
        got = list(read_tfrecord_images(tmp_path / "tfrecords", split))
        want = folder_images(src / split)
        assert [n for n, _ in got] == [n for n, _ in want]
        for (_, a), (_, b) in zip(got, want):
            assert a.dtype == np.uint8 and a.shape == b.shape and np.array_equal(a, b)
    assert [n for n, _ in read_tfrecord_images(tmp_path / "tfrecords", "trainA")] == [
        "img_8.png",
        "img_9.png",
        "sub/002.png",
    ]


def test_rewrite_replaces_the_old_dataset(tmp_path):
    src = tmp_path / "aligned"
    (src / "testB").mkdir(parents=True)
    Image.new("RGB", (40, 40), (1, 2, 3)).save(src / "testB" / "a.png")
    write_dataset(src, tmp_path / "tf", ["testB"])
    Image.new("RGB", (40, 40), (4, 5, 6)).save(src / "testB" / "b.png")
    assert write_dataset(src, tmp_path / "tf", ["testB"]) == {"testB": 2}
    (_, a), (_, b) = read_tfrecord_images(tmp_path / "tf", "testB")
    assert tuple(a[0, 0]) == (1, 2, 3) and tuple(b[0, 0]) == (4, 5, 6)
    with pytest.raises(ValueError, match="num_shards 3: every split needs as many images"):
        write_dataset(src, tmp_path / "tf", ["testB"], num_shards=3)


@needs("dlib", "skimage", reason="the preprocess extra (dlib-bin) and scikit-image")
def test_cli_dataset_mode(tmp_path, capsys):
    from skimage import data

    from preprocessing.__main__ import main

    src = tmp_path / "dataset"
    for split in ("trainA", "trainB", "testB"):
        (src / split).mkdir(parents=True)
    Image.fromarray(data.astronaut()).save(src / "trainA" / "astro.jpg", quality=95)
    (src / "trainA" / "bad.jpg").write_bytes(b"nope")
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., :3], rgba[:32, :, 3] = 7, 255
    Image.fromarray(rgba, "RGBA").save(src / "trainB" / "cartoon.png")
    Image.new("RGB", (48, 48), (9, 9, 9)).save(src / "testB" / "c2.jpg")
    out = tmp_path / "out"
    argv = ["--data_path", str(src), "--save_path", str(out), "--tfrecords"]
    assert main([*argv, "--direct_running_mode", "in_memory"]) == 1
    err = capsys.readouterr().err
    assert "trainA: 2 inputs: 1 done, 1 failed [not an image: 1]" in err
    assert "tfrecords: trainA: 1, trainB: 1, testB: 1" in err
    ((name, photo),) = read_tfrecord_images(out / "tfrecords", "trainA")
    assert name == "astro.png" and np.array_equal(photo, load_rgb(out / "trainA" / "astro.png"))
    ((name, cartoon),) = read_tfrecord_images(out / "tfrecords", "trainB")
    # stored as it is, the transparent half on white
    assert name == "cartoon.png" and (cartoon[:32] == 7).all() and (cartoon[32:] == 255).all()
    report = [
        json.loads(line) for line in (out / "trainA" / "report.jsonl").read_text().splitlines()
    ]
    assert [(r["name"], r["status"]) for r in report] == [
        ("astro.jpg", "done"),
        ("bad.jpg", "failed"),
    ]

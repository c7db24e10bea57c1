"""ArrayRecord shards hold the TFRecords' examples, in the training order."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.ci_required import require
from PIL import Image

from p2c_jax.data import tfrecords
from preprocessing.files import walk_key

array_record = require("preprocessing.array_record", "the grain extra")
write_tfrecords = require("preprocessing.tfrecords", "the preprocess extra").write_dataset
require("grain", "the grain extra")
from p2c_jax.data.grain_input import open_split  # noqa: E402


def test_records_are_the_tfrecord_examples_in_walk_order(tmp_path):
    rng = np.random.default_rng(0)
    names = ["b.png", "a.png", "sub/a.png", "sub-x/c.png", "c.png"]
    for name in names:
        path = tmp_path / "src" / "trainA" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
    write_tfrecords(tmp_path / "src", tmp_path / "tf", ["trainA"])
    tf_dir = tfrecords.find_dataset(tmp_path / "tf")
    import tensorflow as tf

    files = tfrecords.split_files(tf_dir, "trainA").files
    serialized = [r.numpy() for r in tf.data.TFRecordDataset(list(files))]
    expected = sorted(serialized, key=lambda r: walk_key(array_record.decode_example(r)[0]))
    assert array_record.write_dataset(tmp_path / "src", tmp_path / "ar", ["trainA"], num_shards=2)
    source = open_split(tmp_path / "ar", "trainA")
    # the same examples, not bytes: protobuf orders an Example's feature map as it happens to
    # in its process
    decode = array_record.decode_example
    assert [decode(source[i]) for i in range(len(source))] == [decode(r) for r in expected]
    assert [array_record.decode_example(r)[0] for r in expected] == [
        "a.png",
        "b.png",
        "c.png",
        "sub/a.png",
        "sub-x/c.png",
    ]


def test_more_shards_than_images_names_the_split(tmp_path):
    (tmp_path / "testB").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "testB" / "x.png")
    with pytest.raises(ValueError, match="num_shards 2: testB has 1 images"):
        array_record.write_dataset(tmp_path, tmp_path / "ar", ["testB"], num_shards=2)

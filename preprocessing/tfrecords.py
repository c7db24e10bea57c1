"""The preprocessed dataset as TFRecord shards, through a local tensorflow-datasets builder.

Each example holds the image as PNG bytes and its source name (relative to its
split folder). Needs the `preprocess` extra (tensorflow-cpu, tensorflow-datasets);
nothing is downloaded. `p2c-preprocess` (`shards`) writes the same files a shard at a time
(`shard_path`, `write_shard`, then `info_files`). This module writes; `p2c_jax.data.tfrecords`
reads.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from .array_record import encode_example
from .extras import needs, tensorflow
from .files import join
from .splits import SPLITS

tf = tensorflow("TFRecords (preprocessing.tfrecords)")
with needs("preprocess", "TFRecords (preprocessing.tfrecords)"):
    import tensorflow_datasets as tfds


TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"  # tfds's default shard names


class P2cFaces(tfds.core.GeneratorBasedBuilder):
    """Aligned photos (A) and cartoons (B) read from `source_dir/<split>/**.png`."""

    VERSION = tfds.core.Version("1.0.0")

    def __init__(
        self, *, source_dir: str | Path | None = None, splits: Sequence[str] = SPLITS, **kwargs
    ):
        self._source_dir = Path(source_dir) if source_dir is not None else None
        self._splits = tuple(splits)
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
                    "name": tfds.features.Text(),
                }
            ),
            description="photo2cartoon faces, aligned like the original (PNG)",
        )

    def _log_download_bytes(self) -> None:
        """Nothing is downloaded: tfds's "Downloading and preparing dataset Unknown size" line
        would say otherwise."""

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(self._source_dir / split) for split in self._splits}

    def _generate_examples(self, folder: Path):
        for path in sorted(folder.rglob("*.png")):
            name = path.relative_to(folder).as_posix()
            yield name, {"image": path.read_bytes(), "name": name}


def dataset_dir(data_dir: str | os.PathLike) -> str:
    """The folder of the dataset's files under `data_dir` (tfds's `<name>/<version>`)."""
    return join(data_dir, P2cFaces.name, str(P2cFaces.VERSION))


def shard_path(data_dir: str | os.PathLike, split: str, index: int, count: int) -> str:
    """Shard `index` of `count` of `split` in the dataset under `data_dir`, named as tfds names it."""
    return join(
        dataset_dir(data_dir), f"{P2cFaces.name}-{split}.tfrecord-{index:05d}-of-{count:05d}"
    )


def write_shard(path: str | os.PathLike, examples: Iterable[tuple[str, bytes]]) -> int:
    """Write the (name, PNG bytes) `examples` in order as one local TFRecord file, each the
    example the builder stores; returns their count."""
    count = 0
    with tf.io.TFRecordWriter(os.fspath(path)) as writer:
        for name, png in examples:
            writer.write(encode_example(name, png))
            count += 1
    return count


def info_files(shard_lengths: dict[str, list[int]], num_bytes: dict[str, int]) -> dict[str, bytes]:
    """The metadata files (`dataset_info.json`, `features.json`: name -> bytes) of a dataset
    whose shards, named by `shard_path`, were written by others: the records in each shard of
    each split, the bytes of each split. The builder writes them in a local folder."""
    with tempfile.TemporaryDirectory() as tmp:
        builder = P2cFaces(data_dir=tmp)
        builder.info.set_splits(
            tfds.core.SplitDict(
                [
                    tfds.core.SplitInfo(
                        name=split,
                        shard_lengths=lengths,
                        num_bytes=num_bytes[split],
                        filename_template=tfds.core.ShardedFileTemplate(
                            data_dir=builder.data_dir,
                            template=TEMPLATE,
                            dataset_name=builder.name,
                            split=split,
                            filetype_suffix="tfrecord",
                        ),
                    )
                    for split, lengths in shard_lengths.items()
                ]
            )
        )
        Path(builder.data_dir).mkdir(parents=True)
        builder.info.write_to_directory(builder.data_dir)
        return {path.name: path.read_bytes() for path in Path(builder.data_dir).iterdir()}


def write_dataset(
    source_dir: str | Path,
    data_dir: str | os.PathLike,
    splits: Sequence[str] = SPLITS,
    *,
    num_shards: int | None = None,
) -> dict[str, int]:
    """Write `source_dir/<split>/**.png` as TFRecord shards under `data_dir`; returns examples per split.

    `data_dir` may be remote (`gs://...`). `num_shards` files per split (tfds's choice by
    size if None; at most the smallest split's size): a multiple of the number of training
    hosts lets each read its own files.
    A dataset already there is replaced, so the shards always match the folders.
    """
    if num_shards is not None:
        counts = {split: len(list((Path(source_dir) / split).rglob("*.png"))) for split in splits}
        if num_shards > min(counts.values()):
            raise ValueError(
                f"num_shards {num_shards}: every split needs as many images ({counts})"
            )
    builder = P2cFaces(source_dir=source_dir, splits=splits, data_dir=os.fspath(data_dir))
    if tf.io.gfile.exists(os.fspath(builder.data_dir)):
        tf.io.gfile.rmtree(os.fspath(builder.data_dir))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False, num_shards=num_shards)
    )
    return {split: builder.info.splits[split].num_examples for split in splits}

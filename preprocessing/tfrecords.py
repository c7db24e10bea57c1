"""The preprocessed dataset as TFRecord shards, through a local tensorflow-datasets builder.

Each example holds the image as PNG bytes and its source name (relative to its
split folder). Needs the `preprocess` extra (tensorflow-cpu, tensorflow-datasets);
nothing is downloaded.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from .io import load_rgb_bytes
from .splits import SPLITS


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

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(self._source_dir / split) for split in self._splits}

    def _generate_examples(self, folder: Path):
        for path in sorted(folder.rglob("*.png")):
            name = path.relative_to(folder).as_posix()
            yield name, {"image": path.read_bytes(), "name": name}


def write_dataset(
    source_dir: str | Path, data_dir: str | Path, splits: Sequence[str] = SPLITS
) -> dict[str, int]:
    """Write `source_dir/<split>/**.png` as TFRecord shards under `data_dir`; returns examples per split.

    A dataset already there is replaced, so the shards always match the folders.
    """
    builder = P2cFaces(source_dir=source_dir, splits=splits, data_dir=str(data_dir))
    if Path(builder.data_dir).exists():
        shutil.rmtree(builder.data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
    return {split: builder.info.splits[split].num_examples for split in splits}


def _version_dir(data_dir: Path) -> Path:
    if (data_dir / "dataset_info.json").is_file():
        return data_dir
    found = sorted(data_dir.glob(f"{P2cFaces.name}/*/dataset_info.json"))
    if not found:
        raise FileNotFoundError(f"no {P2cFaces.name} dataset under {data_dir}")
    return found[-1].parent


def read_tfrecord_images(data_dir: str | Path, split: str) -> Iterator[tuple[str, np.ndarray]]:
    """(name, RGB uint8 image) of one split, sorted by name, decoded losslessly from the PNG bytes."""
    builder = tfds.builder_from_directory(str(_version_dir(Path(data_dir))))
    ds = builder.as_dataset(
        split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()}
    )
    records = sorted((ex["name"].decode(), ex["image"]) for ex in tfds.as_numpy(ds))
    for name, data in records:
        yield name, load_rgb_bytes(data)

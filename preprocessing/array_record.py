"""The preprocessed dataset as ArrayRecord shards, for random access by Grain on JAX pods.

`<out>/<split>.array_record-XXXXX-of-YYYYY`: each record is the serialized `tf.train.Example`
the TFRecord writer stores (`image`: the PNG bytes, `name`: its path relative to the split
folder), so one record format serves both readers. `write_dataset` puts the records in the
training reader's order (`files.walk_key`: by folder, then name) and cuts that order into
consecutive runs, so the record key across a split's shards is the image's index in the split;
`p2c-preprocess` (`shards`) writes one shard per hash shard, in that order within each.
Needs the `grain` extra (array-record, and tensorflow-datasets' copy of the Example proto;
not tensorflow). This module writes and parses; `p2c_jax.data.grain_input` reads.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from .extras import needs
from .files import is_url, walk_key
from .splits import SPLITS

FOLDER = "array_record"  # the shards' folder in a dataset folder
SHARD_BYTES = 256 << 20  # default shard size: a few for the original's splits, more as they grow
WRITER_OPTIONS = "group_size:1"  # one record per chunk: Grain's random access reads one


def _example_proto():
    with needs("grain", "ArrayRecord datasets"):
        from tensorflow_datasets.proto import tf_example_pb2
    return tf_example_pb2


def encode_example(name: str, png: bytes) -> bytes:
    """The serialized `tf.train.Example` of one image, as in the TFRecords."""
    ex = _example_proto().Example()
    ex.features.feature["image"].bytes_list.value.append(png)
    ex.features.feature["name"].bytes_list.value.append(name.encode())
    return ex.SerializeToString()


def decode_example(record: bytes) -> tuple[str, bytes]:
    """(name, PNG bytes) of a record written by `encode_example` or the TFRecord writer."""
    feature = _example_proto().Example.FromString(record).features.feature
    return feature["name"].bytes_list.value[0].decode(), feature["image"].bytes_list.value[0]


def shard_path(folder: str | os.PathLike, split: str, index: int, count: int) -> str:
    return os.path.join(os.fspath(folder), f"{split}.{FOLDER}-{index:05d}-of-{count:05d}")


def split_shards(folder: str | os.PathLike, split: str) -> list[str]:
    """The shard files of `split` in `folder`, in order: local paths, or the URIs of a
    `gs://` folder (listed by etils.epath; array_record reads them itself)."""
    pattern = f"{split}.{FOLDER}-[0-9]*-of-[0-9]*"
    text = os.fspath(folder)
    if is_url(text):
        from etils import epath  # gcsfs, or tf.io.gfile when TensorFlow is installed

        return sorted(str(p) for p in epath.Path(text.rstrip("/")).glob(pattern))
    return sorted(glob.glob(os.path.join(glob.escape(text), pattern)))


def write_shard(path: str | os.PathLike, examples: Iterable[tuple[str, bytes]]) -> int:
    """Write the (name, PNG bytes) `examples` in order as one ArrayRecord file; returns their count.

    The unit of work of a writer: any pipeline that cuts a split into consecutive runs of
    its sorted images may call it once per shard."""
    with needs("grain", "ArrayRecord datasets"):
        from array_record.python.array_record_module import ArrayRecordWriter
    writer = ArrayRecordWriter(os.fspath(path), WRITER_OPTIONS)
    count = 0
    try:
        for name, png in examples:
            writer.write(encode_example(name, png))
            count += 1
    finally:
        writer.close()
    return count


def _sorted_pngs(folder: Path) -> list[Path]:
    """The PNGs under `folder` in the training reader's order."""
    return sorted(folder.rglob("*.png"), key=lambda p: walk_key(p.relative_to(folder).as_posix()))


def write_dataset(
    source_dir: str | Path,
    out_dir: str | os.PathLike,
    splits: Sequence[str] = SPLITS,
    *,
    num_shards: int | None = None,
) -> dict[str, int]:
    """Write `source_dir/<split>/**.png` as ArrayRecord shards in `out_dir` (local; copy it to a
    bucket afterwards); returns examples per split. `num_shards` per split (by default one per
    `SHARD_BYTES` of PNGs); any number suits any number of hosts. Old shards of a split
    written are removed first."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in splits:
        files = _sorted_pngs(Path(source_dir) / split)
        if not files:
            raise ValueError(f"{Path(source_dir) / split}: no PNG images")
        size = sum(f.stat().st_size for f in files)
        n = num_shards or max(1, -(-size // SHARD_BYTES))
        if n > len(files):
            raise ValueError(f"num_shards {n}: {split} has {len(files)} images")
        for old in split_shards(out, split):
            os.remove(old)
        bounds = [len(files) * i // n for i in range(n + 1)]
        counts[split] = sum(
            write_shard(
                shard_path(out, split, i, n),
                (
                    (f.relative_to(Path(source_dir) / split).as_posix(), f.read_bytes())
                    for f in files[bounds[i] : bounds[i + 1]]
                ),
            )
            for i in range(n)
        )
    return counts

"""One shard of a ``p2c-preprocess`` run, with no Beam in it (``beam_pipeline`` runs the shards).

A run's photos are keyed to ``num_shards`` shards by a stable hash of their output name. A
shard writes each photo's PNGs atomically, streams the records of each split to one file per
split (dataset mode: ``tfrecords.shard_path`` / ``array_record.shard_path``, index ``i`` of
``num_shards``), and writes its commit marker last: ``<save_path>/.shards/SSSSS-of-NNNNN.json``,
holding its inputs' names, their report lines and its record counts. A rerun skips a shard
whose marker lists the same inputs, and the report and the dataset metadata are made from the
markers.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from .files import as_file, atomic_output, join, walk_key, write_atomic
from .pipeline import Processor, output_stems, write_outputs
from .report import REPORT_NAME, done_record, failed_record

MARKERS = ".shards"  # the commit markers' folder in the save path
FORMATS = {"tfrecord": "tfrecords", "array_record": "array_record"}  # format: folder and module


@dataclass(frozen=True)
class Photo:
    """One input of a run: its split (output folder under the save path, "" outside dataset
    mode), name (relative to its input folder: the report's key), path (local or gs://) and
    output stem (relative to the split folder)."""

    split: str
    name: str
    path: str
    stem: str


@dataclass(frozen=True)
class RunSpec:
    """Where and how a run writes: plain values only, so that a DoFn holding it pickles small.

    ``record_format``: "tfrecord" or "array_record" in dataset mode (records of each of
    ``record_splits``), None for PNGs alone."""

    save_path: str
    num_shards: int
    record_format: str | None = None
    record_splits: tuple[str, ...] = ()
    save_meta: bool = False

    def folder(self, split: str) -> str:
        return join(self.save_path, split) if split else self.save_path

    def marker(self, index: int) -> str:
        return join(self.save_path, MARKERS, f"{index:05d}-of-{self.num_shards:05d}.json")

    def records_folder(self) -> str:
        return join(self.save_path, FORMATS[self.record_format])

    def record_path(self, split: str, index: int) -> str:
        return record_module(self.record_format).shard_path(
            self.records_folder(), split, index, self.num_shards
        )


@dataclass
class ShardResult:
    """What a shard did (its marker's content): its inputs as (split, name), its report lines as
    (split, line), its record count and bytes per split."""

    index: int
    inputs: list[list[str]]
    rows: list[tuple[str, dict]] = field(default_factory=list)
    records: dict[str, list[int]] = field(default_factory=dict)

    def to_json(self) -> bytes:
        fields = {"inputs": self.inputs, "rows": self.rows, "records": self.records}
        return json.dumps(fields).encode()


def shard_of(split: str, stem: str, num_shards: int) -> int:
    """The shard of an output name: the same on every machine and Python run."""
    digest = hashlib.sha256(f"{split}/{stem}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % num_shards


def plan(inputs: dict[str, Sequence[tuple[object, str]]], num_shards: int) -> list[list[Photo]]:
    """The photos of each shard from the (path, relative name) pairs of each split."""
    shards: list[list[Photo]] = [[] for _ in range(num_shards)]
    for split, items in inputs.items():
        stems = output_stems([rel for _, rel in items])
        for path, rel in items:
            photo = Photo(split, rel, str(path), stems[rel])
            shards[shard_of(split, photo.stem, num_shards)].append(photo)
    return shards


def _inputs(photos: Sequence[Photo]) -> list[list[str]]:
    return sorted([p.split, p.name] for p in photos)


def committed(spec: RunSpec, index: int, photos: Sequence[Photo]) -> ShardResult | None:
    """The result a previous run committed for this shard with these inputs, or None."""
    path = as_file(spec.marker(index))
    if not path.is_file():
        return None
    saved = json.loads(path.read_bytes())
    if saved["inputs"] != _inputs(photos):
        return None
    rows = [(split, row) for split, row in saved["rows"]]
    return ShardResult(index, saved["inputs"], rows, saved["records"])


def write_shard(
    spec: RunSpec, index: int, photos: Sequence[Photo], processor: Callable[[str], Processor]
) -> ShardResult:
    """Process the shard's photos (``processor(split)`` for each split), write its records
    and its marker last; a shard already committed is returned as it was, nothing written."""
    previous = committed(spec, index, photos)
    if previous is not None:
        return previous
    result = ShardResult(index, _inputs(photos))
    splits = spec.record_splits or sorted({p.split for p in photos})
    for split in splits:
        group = sorted((p for p in photos if p.split == split), key=lambda p: walk_key(p.stem))
        examples = _examples(spec, group, processor(split), result)
        if spec.record_format is None:
            for _ in examples:
                pass
            continue
        with atomic_output(spec.record_path(split, index)) as tmp:
            count = record_module(spec.record_format).write_shard(tmp, examples)
            result.records[split] = [count, os.path.getsize(tmp)]
    write_atomic(spec.marker(index), result.to_json())
    return result


def _examples(
    spec: RunSpec, photos: Sequence[Photo], process: Processor, result: ShardResult
) -> Iterator[tuple[str, bytes]]:
    """The (name, PNG) records of the photos as each is written; its report line added to
    ``result``, a bad photo's too (then it has no record)."""
    for photo in photos:
        folder = spec.folder(photo.split)
        try:
            outputs = write_outputs(
                photo.path, photo.stem, folder, process, save_meta=spec.save_meta
            )
        except Exception as exc:  # noqa: BLE001 - a bad photo goes to the report, never stops the run
            result.rows.append((photo.split, failed_record(photo.name, photo.path, exc)))
            continue
        names = [name for name, _ in outputs]
        result.rows.append((photo.split, done_record(photo.name, photo.path, names)))
        yield from outputs


def write_report(spec: RunSpec, split: str, rows: Sequence[dict]) -> None:
    """The split's ``report.jsonl``: every input's line, sorted by name; not rewritten when the
    file holds them already (a rerun)."""
    text = "".join(json.dumps(row) + "\n" for row in sorted(rows, key=lambda r: r["name"]))
    write_if_changed(join(spec.folder(split), REPORT_NAME), text.encode())


def write_metadata(spec: RunSpec, results: Sequence[ShardResult]) -> None:
    """The metadata the training reader reads: ``dataset_info.json`` of the TFRecords (the
    ArrayRecord reader finds its shards by name and needs none)."""
    if spec.record_format != "tfrecord":
        return
    tfrecords = record_module("tfrecord")
    by_index = sorted(results, key=lambda r: r.index)
    lengths = {s: [r.records[s][0] for r in by_index] for s in spec.record_splits}
    sizes = {s: sum(r.records[s][1] for r in by_index) for s in spec.record_splits}
    folder = tfrecords.dataset_dir(spec.records_folder())
    for name, data in tfrecords.info_files(lengths, sizes).items():
        write_if_changed(join(folder, name), data)


def write_if_changed(path: str, data: bytes) -> None:
    """``write_atomic`` unless the file holds ``data`` already."""
    file = as_file(path)
    if not (file.is_file() and file.read_bytes() == data):
        write_atomic(path, data)


def record_module(record_format: str):
    """The writer module of a record format (imported when records are written: TensorFlow for
    TFRecords; ``MissingExtraError`` naming the extra when it is absent)."""
    return importlib.import_module(f".{FORMATS[record_format]}", __package__)

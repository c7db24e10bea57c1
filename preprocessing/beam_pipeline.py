"""``p2c-preprocess`` as an Apache Beam pipeline: one DoFn call per shard (``shards``), a
dead-letter output for the bad photos, then the report and the dataset metadata.

The driver keys the photos' names (never their bytes) to shards; each worker builds the
detector once (``setup``) and writes whole shards. Needs the ``beam`` extra.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence

from .extras import needs
from .flags import preprocessor_from_flags
from .pipeline import Processor, as_is
from .shards import Photo, RunSpec, ShardResult, write_metadata, write_report, write_shard

with needs("beam", "p2c-preprocess (an Apache Beam pipeline)"):
    import apache_beam as beam

FAILED = "failed"  # the dead-letter output: (split, report line) of each bad photo
RESULTS = "results"  # one ShardResult per shard


class WriteShard(beam.DoFn):
    """Writes the shard of each element (index, photos); the splits ``copy_splits`` are stored
    as they are (cartoons), the others aligned by the backend of the ``backend`` flags."""

    def __init__(self, spec: RunSpec, backend: dict, copy_splits: Sequence[str] = ()):
        self._spec = spec
        self._backend = backend
        self._copy_splits = tuple(copy_splits)
        self._preprocessor: Processor | None = None

    def setup(self) -> None:
        flags = argparse.Namespace(**self._backend)
        self._preprocessor = preprocessor_from_flags(flags, all_faces=flags.all_faces)

    def _processor(self, split: str) -> Processor:
        return as_is if split in self._copy_splits else self._preprocessor

    def process(self, element: tuple[int, Sequence[Photo]]) -> Iterable:
        index, photos = element
        result = write_shard(self._spec, index, photos, self._processor)
        for split, row in result.rows:
            if row["status"] == "failed":
                yield beam.pvalue.TaggedOutput(FAILED, (split, row))
            else:
                yield split, row
        yield beam.pvalue.TaggedOutput(RESULTS, result)


def _write_report(split_rows: tuple[str, Iterable[dict]], spec: RunSpec) -> None:
    split, rows = split_rows
    write_report(spec, split, list(rows))


def _write_metadata(results: list[ShardResult], spec: RunSpec) -> None:
    write_metadata(spec, results)


def build(
    pipeline: beam.Pipeline,
    spec: RunSpec,
    shards: Sequence[Sequence[Photo]],
    backend: dict,
    copy_splits: Sequence[str] = (),
) -> beam.pvalue.DoOutputsTuple:
    """Add the run to ``pipeline``: the shards, then each split's report (its done lines and
    the dead-letter ones) and the dataset metadata. Returns the shards' outputs: ``done`` and
    ``FAILED`` (split, report line), ``RESULTS`` (ShardResult)."""
    written = (
        pipeline
        | "shards" >> beam.Create([(i, list(photos)) for i, photos in enumerate(shards)])
        | "write shards"
        >> beam.ParDo(WriteShard(spec, backend, copy_splits)).with_outputs(
            FAILED, RESULTS, main="done"
        )
    )
    (
        (written.done, written[FAILED])
        | "report lines" >> beam.Flatten()
        | "by split" >> beam.GroupByKey()
        | "write reports" >> beam.Map(_write_report, spec)
    )
    (
        written[RESULTS]
        | "all shards" >> beam.combiners.ToList()
        | "write metadata" >> beam.Map(_write_metadata, spec)
    )
    return written


def run(
    spec: RunSpec,
    shards: Sequence[Sequence[Photo]],
    backend: dict,
    copy_splits: Sequence[str],
    options,
) -> None:
    """Run the pipeline with these ``PipelineOptions`` and wait for it."""
    with beam.Pipeline(options=options) as pipeline:
        build(pipeline, spec, shards, backend, copy_splits)

"""``p2c-infer --runner NAME``: the batch job of ``cartoonize.run`` as an Apache Beam pipeline.

The inputs' names are reshuffled over the workers; each worker prepares its photos, runs
``RunInference`` with ``GeneratorHandler`` (the generator loaded once per worker, batches of one
fixed size, the last one padded: one compiled shape), writes each cartoon atomically and appends
its report line, as ``cartoonize.run`` does. Only names and paths are grouped, never images.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from p2c_jax import paths
from p2c_jax.cartoonize import Preparer, output_names, start_report, write_cartoon
from p2c_jax.inference import BatchedGenerator, load_generator
from preprocessing.extras import needs
from preprocessing.generator_io import Prepared
from preprocessing.pipeline import Preprocessor
from preprocessing.report import ReportWriter, Summary, last_records, read_report, reason_of

with needs("beam", "p2c-infer --runner"):
    import apache_beam as beam
    from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference
    from apache_beam.options.pipeline_options import PipelineOptions

FAILED = "failed"

#: An input to do: (its path, its relative name, its output's relative name).
Job = tuple[str, str, str]


@dataclass
class Photo:
    """A prepared input on its way through ``RunInference``."""

    path: str
    rel: str
    output: str
    prepared: Prepared


class GeneratorHandler(ModelHandler[Photo, PredictionResult, BatchedGenerator]):
    """The generator of ``weights`` on batches of ``batch_size`` photos (Beam batches exactly
    that many; the last, shorter batch is padded by ``BatchedGenerator``). Holds settings only:
    it pickles small, and each worker loads the weights once (``load_model``), after
    ``worker_setup`` (the compile cache)."""

    def __init__(
        self,
        weights: str,
        batch_size: int,
        *,
        net: str = "genA2B",
        precision: str = "float32",
        img_size: int | None = None,
        worker_setup: Callable[[], None] | None = None,
    ):
        super().__init__(min_batch_size=batch_size, max_batch_size=batch_size)
        self.weights, self.batch_size, self.net = weights, batch_size, net
        self.precision, self.img_size, self.worker_setup = precision, img_size, worker_setup

    def load_model(self) -> BatchedGenerator:
        if self.worker_setup is not None:
            self.worker_setup()
        gen = load_generator(self.weights, self.net, self.precision, self.img_size)
        return BatchedGenerator(gen, self.batch_size)

    def run_inference(
        self, batch: Sequence[Photo], model: BatchedGenerator, inference_args: dict | None = None
    ) -> Iterable[PredictionResult]:
        ys = model(np.stack([p.prepared.x for p in batch]))
        return [PredictionResult(p, y) for p, y in zip(batch, ys)]

    def get_num_bytes(self, batch: Sequence[Photo]) -> int:
        return sum(p.prepared.x.nbytes for p in batch)  # the default pickles the batch

    def get_metrics_namespace(self) -> str:
        return "p2c_jax"


class Prepare(beam.DoFn):
    """``Job -> Photo``, or ``(path, rel, reason)`` to the ``FAILED`` output; one ``Preparer``
    per DoFn instance (``make_preprocessor`` None: aligned faces, ``--no_preprocess``)."""

    def __init__(self, make_preprocessor: Callable[[], Preprocessor] | None, size: int):
        self.make_preprocessor, self.size = make_preprocessor, size

    def setup(self) -> None:
        self.prepare = Preparer(self.make_preprocessor, self.size)

    def process(self, job: Job):
        path, rel, output = job
        try:
            yield Photo(path, rel, output, self.prepare(paths.as_path(path)))
        except Exception as exc:  # noqa: BLE001 - a bad file must never stop the run
            yield beam.pvalue.TaggedOutput(FAILED, (path, rel, reason_of(exc)))


class _Reporting(beam.DoFn):
    """A DoFn that appends report lines to ``output``'s report, a writer per bundle."""

    def __init__(self, output: str):
        self.output = output

    def start_bundle(self) -> None:
        self.report = ReportWriter(self.output)

    def finish_bundle(self) -> None:
        self.report.close()


class WriteCartoon(_Reporting):
    """A generator image -> its cartoon (with ``side_by_side``, beside the face it saw) written
    whole to ``output``, then its report line."""

    def __init__(self, output: str, side_by_side: bool):
        super().__init__(output)
        self.side_by_side = side_by_side

    def process(self, result: PredictionResult) -> None:
        photo = result.example
        path = f"{self.output}/{photo.output}"
        try:
            write_cartoon(path, result.inference, photo.prepared, self.side_by_side)
        except Exception as exc:  # noqa: BLE001 - e.g. a full disk: report it, go on
            self.report.failed(photo.rel, photo.path, exc)
            return
        self.report.done(photo.rel, photo.path, [photo.output])


class ReportFailure(_Reporting):
    """An input that could not be prepared: its report line."""

    def process(self, failure: tuple[str, str, str]) -> None:
        path, rel, reason = failure
        self.report.failed(rel, path, reason)


def run(
    items: Sequence[tuple[Path, str]],
    output: str | os.PathLike,
    handler: GeneratorHandler,
    prepare: Prepare,
    options: PipelineOptions,
    *,
    side_by_side: bool = False,
    overwrite: bool = False,
) -> Summary:
    """``cartoonize.run`` on the runner of ``options``: the inputs a previous run did are
    skipped unless ``overwrite``, the others' cartoons and report lines written to ``output``.
    Returns the summary, this run's part of it read back from the report."""
    output = paths.as_path(output)
    names = output_names(rel for _, rel in items)
    report, todo = start_report(output, list(items), overwrite)
    report.close()
    if todo:
        _pipeline(
            [(str(path), rel, names[rel]) for path, rel in todo],
            os.fspath(output),
            handler,
            prepare,
            options,
            side_by_side,
        )
    written = last_records(read_report(output))
    for _, rel in todo:
        report.summary.count(written[rel])
    return report.summary


def _pipeline(
    jobs: list[Job],
    output: str,
    handler: GeneratorHandler,
    prepare: Prepare,
    options: PipelineOptions,
    side_by_side: bool,
) -> None:
    with beam.Pipeline(options=options) as p:
        photos = (
            p
            | "jobs" >> beam.Create(jobs)
            | "spread over the workers" >> beam.Reshuffle()
            | "prepare" >> beam.ParDo(prepare).with_outputs(FAILED, main="photos")
        )
        (
            photos.photos
            | "generator" >> RunInference(handler)
            | "write" >> beam.ParDo(WriteCartoon(output, side_by_side))
        )
        _ = photos[FAILED] | "report failures" >> beam.ParDo(ReportFailure(output))

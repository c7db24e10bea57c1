"""`python -m preprocessing --data_path IN --save_path OUT` (console script `p2c-preprocess`).

An Apache Beam pipeline (`beam_pipeline`; the `beam` extra): flags it does not know are Beam's
pipeline options (`--runner DataflowRunner --project ...`), by default one local worker
process per core. Exit status: 0 when every input was done, 1 when some failed, 2 when none
was or the command line is wrong.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .extras import MissingExtraError
from .files import as_file, discover, is_url, join, remove_stale_temporaries, report_missing
from .flags import BACKEND_FLAGS, Parser, add_backend_flags, number, preprocessor_from_flags
from .report import Summary
from .shards import FORMATS, Photo, RunSpec, committed, plan, record_module
from .splits import CARTOON_SPLITS, SPLITS


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="p2c-preprocess", description=__doc__.split("\n")[0])
    p.add_argument(
        "--data_path",
        nargs="+",
        required=True,
        help="photo files, folders or globs (with --tfrecords: the dataset folder holding trainA/trainB/testA/testB)",
    )
    p.add_argument("--save_path", required=True, help="output folder (local or gs://)")
    add_backend_flags(p)
    p.add_argument(
        "--all_faces",
        action="store_true",
        help="write every face as NAME_0.png, NAME_1.png, ... (largest first) instead of the largest only",
    )
    p.add_argument(
        "--save_meta",
        action="store_true",
        help="write NAME.json (landmarks, angle_degrees, crop_box) beside each PNG",
    )
    p.add_argument(
        "--tfrecords",
        action="store_true",
        help="dataset mode: process trainA/testA, store trainB/testB, then write TFRecords to SAVE_PATH/tfrecords",
    )
    p.add_argument(
        "--format",
        choices=("tfrecord", "array_record"),
        default="tfrecord",
        help="dataset mode: TFRecords (SAVE_PATH/tfrecords, tf.data) or ArrayRecord shards for Grain on pods (SAVE_PATH/array_record; the grain extra)",
    )
    p.add_argument(
        "--cartoons",
        choices=("copy", "process"),
        default="copy",
        help="dataset mode: store cartoons as they are, or align them like photos",
    )
    p.add_argument(
        "--num_shards",
        type=number(int, minimum=1),
        default=8,
        help="shards of the run: the unit of work of a worker and of a rerun (a committed shard is skipped), and the record files per split",
    )
    p.add_argument(
        "--no_progress",
        action="store_true",
        help="accepted for older command lines: the pipeline shows no progress bar",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        from . import beam_pipeline, beam_runner
    except MissingExtraError as e:
        parser.parse_args(argv)
        print(f"error: {e}", file=sys.stderr)
        return 2
    args, pipeline_flags = parser.parse_args_passing(argv, beam_runner.unknown_flags)
    if args.format != "tfrecord" and not args.tfrecords:
        parser.error(f"--format {args.format}: only with --tfrecords (dataset mode)")
    # the inputs, then the extras, before anything is written
    root = args.data_path[0]
    if args.tfrecords:
        splits = [s for s in SPLITS if as_file(join(root, s)).is_dir()]
        if not splits:
            print(
                f"error: --data_path {root}: no trainA/trainB/testA/testB folders", file=sys.stderr
            )
            return 2
        inputs = {split: discover([join(root, split)]) for split in splits}
    else:
        inputs = {"": discover(args.data_path)}
        if report_missing(inputs[""], args.data_path):
            return 2
    try:
        preprocessor_from_flags(args, all_faces=args.all_faces)  # the models load, or say why not
    except MissingExtraError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.tfrecords:
        try:
            record_module(args.format)
        except ModuleNotFoundError as e:
            print(f"error: --tfrecords: {e}", file=sys.stderr)
            return 2
    spec = RunSpec(
        save_path=args.save_path,
        num_shards=args.num_shards,
        record_format=args.format if args.tfrecords else None,
        record_splits=tuple(inputs) if args.tfrecords else (),
        save_meta=args.save_meta,
    )
    shards = plan(inputs, args.num_shards)
    before = {i for i, photos in enumerate(shards) if committed(spec, i, photos)}
    if not is_url(args.save_path) and os.path.isdir(args.save_path):
        remove_stale_temporaries(args.save_path)  # a killed worker's
    backend = {k: getattr(args, k) for k in (*BACKEND_FLAGS, "all_faces")}
    copy = CARTOON_SPLITS if args.tfrecords and args.cartoons == "copy" else ()
    beam_pipeline.run(spec, shards, backend, copy, beam_runner.pipeline_options(pipeline_flags))
    return _summarize(spec, shards, before, list(inputs), dataset=args.tfrecords)


def _summarize(
    spec: RunSpec, shards: list[list[Photo]], before: set[int], splits: list[str], dataset: bool
) -> int:
    """Print each split's summary line (and the records written), from the shards' markers;
    returns the exit status."""
    results = [committed(spec, i, photos) for i, photos in enumerate(shards)]
    total = Summary()
    for split in splits:
        summary = Summary()
        rows = [(row, r.index in before) for r in results for s, row in r.rows if s == split]
        for row, already in sorted(rows, key=lambda x: x[0]["name"]):
            summary.count(row, already=already)
        print(f"{split}: {summary.line()}" if dataset else summary.line(), file=sys.stderr)
        total.add(summary)
    if spec.record_format is not None:
        counts = {s: sum(r.records[s][0] for r in results) for s in splits}
        print(
            f"{FORMATS[spec.record_format]}: " + ", ".join(f"{k}: {v}" for k, v in counts.items()),
            file=sys.stderr,
        )
    return total.exit_code


if __name__ == "__main__":
    sys.exit(main())

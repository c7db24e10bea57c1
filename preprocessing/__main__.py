"""`python -m preprocessing --data_path IN --save_path OUT` (console script `p2c-preprocess`).

Exit status: 0 when every input was done, 1 when some failed, 2 when none was.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .extras import MissingExtraError
from .files import discover, is_url, report_missing
from .flags import Parser, add_backend_flags, preprocessor_from_flags
from .pipeline import as_is, run
from .report import Summary
from .splits import PHOTO_SPLITS, SPLITS


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="p2c-preprocess", description=__doc__.split("\n")[0])
    p.add_argument(
        "--data_path",
        nargs="+",
        required=True,
        help="photo files, folders or globs (with --tfrecords: the dataset folder holding trainA/trainB/testA/testB)",
    )
    p.add_argument("--save_path", required=True, help="output folder")
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
    p.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if is_url(args.save_path):  # pathlib would make gs://b/x the local folder gs:/b/x
        parser.error(
            f"--save_path {args.save_path}: a local folder is needed (write locally, then copy "
            "it, e.g. gcloud storage cp -r)"
        )
    if args.format != "tfrecord" and not args.tfrecords:
        parser.error(f"--format {args.format}: only with --tfrecords (dataset mode)")
    # the inputs, then the extras, before anything is written
    root = Path(args.data_path[0])
    if args.tfrecords:
        splits = [s for s in SPLITS if (root / s).is_dir()]
        if not splits:
            print(
                f"error: --data_path {root}: no trainA/trainB/testA/testB folders", file=sys.stderr
            )
            return 2
    else:
        items = discover(args.data_path)
        if report_missing(items, args.data_path):
            return 2
    try:
        pre = preprocessor_from_flags(args, all_faces=args.all_faces)
    except MissingExtraError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.tfrecords:
        try:
            if args.format == "array_record":
                from .array_record import write_dataset
            else:
                from .tfrecords import write_dataset
        except ModuleNotFoundError as e:
            print(f"error: --tfrecords: {e}", file=sys.stderr)
            return 2
    save_path = Path(args.save_path)
    common = dict(save_meta=args.save_meta, progress=not args.no_progress)

    if not args.tfrecords:
        summary = run(items, save_path, pre, **common)
        print(summary.line(), file=sys.stderr)
        return summary.exit_code

    total = Summary()
    for split in splits:
        process = pre if split in PHOTO_SPLITS or args.cartoons == "process" else as_is
        s = run(discover([str(root / split)]), save_path / split, process, **common)
        print(f"{split}: {s.line()}", file=sys.stderr)
        total.add(s)
    folder = "tfrecords" if args.format == "tfrecord" else "array_record"
    counts = write_dataset(save_path, save_path / folder, splits)
    print(f"{folder}: " + ", ".join(f"{k}: {v}" for k, v in counts.items()), file=sys.stderr)
    return total.exit_code


if __name__ == "__main__":
    sys.exit(main())

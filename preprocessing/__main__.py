"""`python -m preprocessing --data_path IN --save_path OUT` (console script `p2c-preprocess`).

Exit status: 0 when every input was done, 1 when some failed, 2 when none was.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from .io import discover
from .landmarks import BACKENDS as LANDMARK_BACKENDS
from .landmarks import make_landmarker
from .pipeline import Preprocessor, Summary, as_is, run
from .segmentation import BACKENDS as SEG_BACKENDS
from .segmentation import make_segmenter

PHOTO_SPLITS = ("trainA", "testA")
CARTOON_SPLITS = ("trainB", "testB")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="p2c-preprocess", description=__doc__.split("\n")[0])
    p.add_argument("--data_path", nargs="+", required=True, help="photo files, folders or globs (with --tfrecords: the dataset folder holding trainA/trainB/testA/testB)")
    p.add_argument("--save_path", required=True, help="output folder")
    p.add_argument("--landmarks", choices=LANDMARK_BACKENDS, default="dlib", help="landmark backend (default: dlib, offline)")
    p.add_argument("--device", default="cpu", help="device for the face-alignment backend")
    p.add_argument("--segmentation", choices=SEG_BACKENDS, default=None, help="segmentation backend (default: pb when --seg_model is given, else grabcut)")
    p.add_argument("--seg_model", default=None, help="path to the original's seg_model_384.pb")
    p.add_argument("--all_faces", action="store_true", help="write every face as NAME_0.png, NAME_1.png, ... (largest first) instead of the largest only")
    p.add_argument("--save_meta", action="store_true", help="write NAME.json (landmarks, angle_degrees, crop_box) beside each PNG")
    p.add_argument("--tfrecords", action="store_true", help="dataset mode: process trainA/testA, store trainB/testB, then write TFRecords to SAVE_PATH/tfrecords")
    p.add_argument("--cartoons", choices=("copy", "process"), default="copy", help="dataset mode: store cartoons as they are, or align them like photos")
    p.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    seg_name = args.segmentation or ("pb" if args.seg_model else "grabcut")
    pre = Preprocessor(make_landmarker(args.landmarks, args.device), make_segmenter(seg_name, args.seg_model), all_faces=args.all_faces)
    save_path = Path(args.save_path)
    common = dict(save_meta=args.save_meta, progress=not args.no_progress)

    if not args.tfrecords:
        summary = run(discover(args.data_path), save_path, pre, **common)
        print(summary.line(), file=sys.stderr)
        return summary.exit_code

    root = Path(args.data_path[0])
    total = Summary()
    splits = [s for s in PHOTO_SPLITS + CARTOON_SPLITS if (root / s).is_dir()]
    if not splits:
        print(f"no trainA/trainB/testA/testB folders in {root}", file=sys.stderr)
        return 2
    for split in splits:
        process = pre if split in PHOTO_SPLITS or args.cartoons == "process" else as_is
        s = run(discover([str(root / split)]), save_path / split, process, **common)
        print(f"{split}: {s.line()}", file=sys.stderr)
        total.done, total.skipped, total.failed = total.done + s.done, total.skipped + s.skipped, total.failed + s.failed
    from .tfrecords import write_dataset

    counts = write_dataset(save_path, save_path / "tfrecords", splits)
    print("tfrecords: " + ", ".join(f"{k}: {v}" for k, v in counts.items()), file=sys.stderr)
    return total.exit_code


if __name__ == "__main__":
    sys.exit(main())

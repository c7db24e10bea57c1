"""The preprocessing backend flags, shared by every command that aligns photos."""

from __future__ import annotations

import argparse

from .landmarks import BACKENDS as LANDMARK_BACKENDS
from .landmarks import make_landmarker
from .pipeline import Preprocessor
from .segmentation import BACKENDS as SEG_BACKENDS
from .segmentation import make_segmenter


def add_backend_flags(p: argparse.ArgumentParser) -> None:
    """``--landmarks --device --segmentation --seg_model``."""
    p.add_argument(
        "--landmarks",
        choices=LANDMARK_BACKENDS,
        default="dlib",
        help="landmark backend (default: dlib, offline)",
    )
    p.add_argument("--device", default="cpu", help="device of the face-alignment backend")
    p.add_argument(
        "--segmentation",
        choices=SEG_BACKENDS,
        default=None,
        help="segmentation backend (default: pb when --seg_model is given, else grabcut)",
    )
    p.add_argument("--seg_model", default=None, help="the original's seg_model_384.pb")


def preprocessor_from_flags(args: argparse.Namespace, all_faces: bool = False) -> Preprocessor:
    """The Preprocessor of the backend flags (loads the models)."""
    seg = args.segmentation or ("pb" if args.seg_model else "grabcut")
    return Preprocessor(
        make_landmarker(args.landmarks, args.device),
        make_segmenter(seg, args.seg_model),
        all_faces=all_faces,
    )

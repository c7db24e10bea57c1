"""Export a generator for deployment: ``p2c-export --weights W --format F --dst D``.

Writes ONNX (the original's interface: ``input`` NCHW [N,3,256,256] -> ``output``), a StableHLO
file (``p2c_jax.load_exported``, or plain ``jax.export.deserialize``), a TensorFlow SavedModel
or a TFLite file, after running it in its runtime against our JAX generator.

Exit status: 0 written and within the tolerance; 1 the file was not within it (nothing
written); 2 bad input (net, weights, format / precision / batch combination, destination).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from p2c_jax.cli.common import (
    add_compile_cache_flag,
    img_size,
    setup_logging,
    unusable_weights,
    use_compile_cache,
)
from p2c_jax.export.common import FORMATS, PRECISIONS
from p2c_jax.nn.models import GENERATORS
from preprocessing.extras import quiet_tensorflow
from preprocessing.flags import number


def _batch(v: str) -> int | str:
    return v if v == "dynamic" else number(int, minimum=1)(v)


def build_parser() -> argparse.ArgumentParser:
    from preprocessing.flags import Parser

    p = Parser(prog="p2c-export", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--weights",
        required=True,
        help="the original photo2cartoon_weights.pt, our checkpoint directory or a "
        "training workdir (its newest step that restores)",
    )
    p.add_argument("--net", default="genA2B", choices=GENERATORS, help="default: %(default)s")
    p.add_argument("--format", required=True, choices=FORMATS, dest="fmt")
    p.add_argument(
        "--dst",
        required=True,
        help="the file to write (a directory for savedmodel); must not exist unless --force",
    )
    p.add_argument(
        "--batch",
        type=_batch,
        default=None,
        help="images per call: N, or dynamic (any N; onnx, stablehlo, savedmodel). "
        "Default: dynamic, 1 for tflite",
    )
    p.add_argument(
        "--precision",
        default="float32",
        choices=PRECISIONS,
        help="bfloat16: weights and activations in bfloat16, stablehlo only (default: %(default)s)",
    )
    p.add_argument(
        "--img_size",
        type=img_size,
        default=None,
        help="image side of the file: a light generator takes any multiple of 16 (default: "
        "256, the original's interface); a full generator only its own (its default)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing --dst")
    p.add_argument(
        "--no_check",
        action="store_true",
        help="skip running the file against our JAX generator",
    )
    add_compile_cache_flag(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    args = build_parser().parse_args(argv)
    if args.batch is None:
        args.batch = 1 if args.fmt == "tflite" else "dynamic"
    batch = None if args.batch == "dynamic" else args.batch
    quiet_tensorflow()
    use_compile_cache(args.compile_cache)
    from p2c_jax.export import ExportError, NotEqualError, Request, export, validate
    from p2c_jax.inference import FACE_SIZE
    from p2c_jax.paths import as_path
    from p2c_jax.weights.checkpoint import CheckpointError, resolve
    from p2c_jax.weights.convert import load_any

    req = Request(args.fmt, Path(args.dst), batch, args.precision, args.img_size, args.force)
    try:
        validate(req)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    weights = args.weights
    try:  # loaded once before export loads it: a damaged file fails in many ways, not export's
        if as_path(weights).is_dir():  # a workdir's step chosen once (a damaged one said once)
            weights = str(resolve(weights))
        load_any(weights, [args.net])
    except Exception as e:  # noqa: BLE001
        print(unusable_weights(args.weights, e), file=sys.stderr)
        return 2
    then = "" if args.no_check else ", then checking it against our JAX generator"
    print(f"writing the {args.fmt} file{then}", flush=True)
    try:
        report = export(weights, args.net, req, check=not args.no_check)
    except CheckpointError as e:
        print(f"error: unusable weights: {e}", file=sys.stderr)
        return 2
    except NotEqualError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:
        print(
            f"error: --format {args.fmt} needs {e.name or e}: pip install 'p2c-jax[export]'",
            file=sys.stderr,
        )
        return 2
    s = report.spec.img_size
    if args.fmt == "onnx" and s != FACE_SIZE:
        print(
            f"warning: this file takes [N,3,{s},{s}], not the original's [N,3,256,256]: "
            "the original's test_onnx.py and the ports built on it will not run it",
            file=sys.stderr,
        )
    batches = "dynamic batch" if batch is None else f"batch {batch}"
    print(
        f"wrote {report.dst}: {args.net} (ngf {report.spec.ch}, {s}x{s}, {batches}, "
        f"{args.precision}) as {args.fmt}"
        + (f"; checked: {report.check.line()}" if report.check else "; not checked")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

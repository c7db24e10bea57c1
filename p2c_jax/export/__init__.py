"""A generator as a deployable file: ONNX, StableHLO, SavedModel or TFLite, checked equal.

``export(weights, net, Request(fmt, dst, ...))`` loads ``net`` from an original ``.pt``, our
checkpoint or a training workdir (``weights.convert.load_any``), writes the file and runs it in
its own runtime against our JAX generator (``inference.forward``) on probe faces; only a file
within the tolerance (float32: 1e-4 max abs) reaches ``dst``. The command line is
``p2c_jax.cli.export`` (``p2c-export``); which format suits which runtime is in docs/export.md.

Each format's module imports its toolchain (torch + onnx, tensorflow) only when called.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from flax import nnx

    from p2c_jax.nn.models import NetSpec

from p2c_jax.export.common import (
    DYNAMIC_BATCH,
    FORMATS,
    PRECISIONS,
    SUPPORTED_PRECISIONS,
    Check,
    ExportError,
    NotEqualError,
    Request,
    validate,
)
from p2c_jax.export.stablehlo import load_exported

__all__ = [
    "DYNAMIC_BATCH",
    "FORMATS",
    "PRECISIONS",
    "SUPPORTED_PRECISIONS",
    "Check",
    "ExportError",
    "NotEqualError",
    "Report",
    "Request",
    "export",
    "export_state",
    "load_exported",
    "runner",
    "validate",
]


@dataclasses.dataclass
class Report:
    """What was written: the file, the generator's spec, and the check (None: not run)."""

    dst: Path
    spec: NetSpec
    check: Check | None


def runner(fmt: str, path: str | Path) -> Callable[[np.ndarray], np.ndarray]:
    """The exported file ``path`` in its runtime as ``x [N,S,S,3] -> image [N,S,S,3]`` (NHWC
    numpy whatever the file's layout): onnxruntime, jax, TensorFlow, LiteRT."""
    path = Path(path)
    if fmt == "onnx":
        from p2c_jax.export.onnx import runner as make
    elif fmt == "stablehlo":
        from p2c_jax.export.stablehlo import runner as make
    elif fmt == "savedmodel":
        from p2c_jax.export.tflite import savedmodel_runner as make
    elif fmt == "tflite":
        from p2c_jax.export.tflite import tflite_runner as make
    else:
        raise ExportError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
    return make(path)


def _write(spec: NetSpec, state: nnx.State, req: Request, net: str, path: Path) -> None:
    if req.fmt == "onnx":
        from p2c_jax.export import onnx

        onnx.export(spec, state, path, req.batch, net)
    elif req.fmt == "stablehlo":
        from p2c_jax.export import stablehlo

        stablehlo.export(spec, state, path, req.batch, req.precision)
    elif req.fmt == "savedmodel":
        from p2c_jax.export import tflite

        tflite.export_savedmodel(spec, state, path, req.batch)
    else:
        from p2c_jax.export import tflite

        tflite.export_tflite(spec, state, path, req.batch)


def export_state(
    spec: NetSpec, state: nnx.State, req: Request, net: str = "genA2B", check: bool = True
) -> Report:
    """Write generator ``spec``/``state`` as ``req`` asks; with ``check``, run the file against
    our JAX generator first (batch 1 and 3, or the fixed batch) and raise ``ExportError``,
    leaving nothing at ``req.dst``, when it is not within the tolerance."""
    from p2c_jax.export.common import check as run_check
    from p2c_jax.export.common import staged
    from p2c_jax.inference import output_spec
    from p2c_jax.weights.checkpoint import CheckpointError

    validate(req)
    if spec.kind != "generator":
        raise ExportError(f"{net} is a {spec.kind}, not a generator")
    if req.img_size is not None:
        try:
            spec = output_spec(spec, req.img_size)
        except CheckpointError as e:
            raise ExportError(f"--img_size: {e}") from None
    result = None
    with staged(req.dst, req.force) as path:
        _write(spec, state, req, net, path)
        if check:
            batches = (1, 3) if req.batch is None else (req.batch,)
            result = run_check(runner(req.fmt, path), spec, state, batches, req.precision)
            if not result.ok:
                raise NotEqualError(
                    f"the {req.fmt} file does not equal our JAX generator: {result.line()}; "
                    "nothing written"
                )
    return Report(req.dst, spec, result)


def export(weights: str | Path, net: str, req: Request, check: bool = True) -> Report:
    """``net`` (genA2B or genB2A) of ``weights`` (an original ``.pt``, our checkpoint or a
    training workdir) exported as ``req`` asks; see ``export_state``. Raises ``ExportError``
    or ``CheckpointError`` (unusable weights) before anything is written."""
    from p2c_jax.inference import output_spec
    from p2c_jax.nn.models import GENERATORS
    from p2c_jax.weights.checkpoint import CheckpointError
    from p2c_jax.weights.convert import load_any

    if net not in GENERATORS:
        raise ExportError(f"unknown net {net!r}: expected one of {', '.join(GENERATORS)}")
    validate(req)
    spec, state = load_any(weights, [net])[net]
    if spec.kind == "generator":  # the inference size rule: 256 unless req.img_size says
        try:
            spec = output_spec(spec, req.img_size, f"{weights}: {net}: ")
        except CheckpointError as e:
            raise ExportError(f"--img_size: {e}") from None
    return export_state(spec, state, req, net, check)

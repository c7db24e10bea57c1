"""Exported generators in their runtimes beside our JAX generator: images/s, same weights.

    python bench/export.py [--ngf 32] [--size 256] [--batches 1 8] [--repeats 3]

A light generator with random weights is exported to every format (TFLite once per batch, its
files having a fixed batch), then each runs the same faces: our JAX generator
(``inference.forward``, this backend's plan, as ``p2c-infer``), the ONNX file in onnxruntime,
the StableHLO file through ``p2c_jax.load_exported`` (jax), the SavedModel in TensorFlow and
the TFLite file in LiteRT. The table (markdown, on stdout) gives images/s at each batch, the
first call's seconds, the export's seconds and the max |diff| against our generator.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def _timed(step, repeats: int) -> tuple[float, float, np.ndarray]:
    """(first call's seconds, best seconds of ``repeats`` more calls, the last output)."""
    t = time.perf_counter()
    y = step()
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        y = step()
        times.append(time.perf_counter() - t)
    return first, min(times), np.asarray(y)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ngf", type=int, default=32)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    import jax
    from flax import nnx

    from p2c_jax.export import Request, export_state, runner
    from p2c_jax.export.common import probe_images, reference
    from p2c_jax.nn.models import NetSpec, build

    spec = NetSpec("generator", args.ngf, img_size=args.size, light=True)
    state = nnx.state(build(spec, nnx.Rngs(0)))
    x = probe_images(max(args.batches), args.size)
    want = reference(spec, state, x)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files: dict[tuple[str, int | None], tuple[Path, float]] = {}
        for fmt in ("onnx", "stablehlo", "savedmodel", "tflite"):
            for batch in args.batches if fmt == "tflite" else [None]:
                dst = Path(tmp) / f"g{batch}.{fmt}"
                t = time.perf_counter()
                export_state(spec, state, Request(fmt, dst, batch=batch), check=False)
                files[fmt, batch] = dst, time.perf_counter() - t

        def ours(xb):
            from p2c_jax.inference import forward

            return np.asarray(jax.block_until_ready(forward(spec)(state, xb)[0]))

        impls = [("JAX generator (p2c-infer's pass)", "jax", lambda b: ours, "-")]
        names = {
            "onnx": "ONNX in onnxruntime",
            "stablehlo": "StableHLO via load_exported (jax)",
            "savedmodel": "SavedModel in TensorFlow",
            "tflite": "TFLite in LiteRT (one file per batch)",
        }
        for fmt in ("onnx", "stablehlo", "savedmodel", "tflite"):
            if fmt == "tflite":
                runs = {b: runner(fmt, files[fmt, b][0]) for b in args.batches}
                secs = "+".join(f"{files[fmt, b][1]:.0f}" for b in args.batches)
                impls.append((names[fmt], fmt, runs.__getitem__, secs))
            else:
                run = runner(fmt, files[fmt, None][0])
                impls.append(
                    (names[fmt], fmt, lambda b, run=run: run, f"{files[fmt, None][1]:.0f}")
                )
        for name, _, run_for, export_s in impls:
            cells, diff = [], 0.0
            for b in args.batches:
                run, xb = run_for(b), x[:b]
                first, best, y = _timed(lambda: run(xb), args.repeats)
                diff = max(diff, float(np.abs(y - want[:b]).max()))
                cells += [f"{b / best:.2f}", f"{first:.1f}"]
            rows.append([name, *cells, export_s, f"{diff:.1e}"])
    head = ["runtime"]
    for b in args.batches:
        head += [f"images/s, batch {b}", f"first call s (b{b})"]
    head += ["export s", "max abs diff vs JAX"]
    print(
        f"light ngf {args.ngf}, {args.size} x {args.size}, random weights, "
        f"best of {args.repeats}, {jax.device_count()} {jax.default_backend()} device(s)\n"
    )
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()

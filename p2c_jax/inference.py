"""Batch inference: photos -> cartoons, as the original ``test.py`` does one photo, but pipelined.

Per image, exactly as the original: the aligned face crop and its segmentation mask (or, with
``--no_preprocess``, the already aligned face) are resized to 256 with INTER_AREA; the face is
put on white by the mask and scaled to [-1, 1]; the generator's output becomes
``(y + 1) * 127.5``, is put on white by the same mask and truncated to uint8.

Decoding and preprocessing run in a thread pool feeding a bounded window of pending images; the
main thread runs the generator on fixed-size batches (the last one padded, so it is compiled
once), sharded over all local devices, and writes PNGs while the next batch computes.

Exit status: 0 when every input was done, 1 when some failed, 2 when none could be done or the
weights (or a preprocessing backend) are unusable.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm import tqdm

from p2c_jax import CheckpointError, CompiledNet, load_generator
from p2c_jax.models import NetSpec, abstract
from preprocessing.generator_io import (Prepared, face_and_mask, postprocess,
                                        prepare_aligned, prepare_face)
from preprocessing.io import ImageError, discover, encode_png, load_rgb, write_atomic
from preprocessing.pipeline import REPORT_NAME, Preprocessor, output_stems

NET = "genA2B"


class Preparer:
    """``path -> Prepared`` for the worker threads; each thread builds its own Preprocessor."""

    def __init__(self, make_preprocessor: Callable[[], Preprocessor] | None, size: int = 256):
        self.size = size
        self._make = make_preprocessor
        self._local = threading.local()
        if make_preprocessor is not None:
            self._local.pre = make_preprocessor()  # fail now if a backend is unusable

    def __call__(self, path: Path) -> Prepared:
        image = load_rgb(path)
        if self._make is None:
            return prepare_aligned(image, self.size)
        if not hasattr(self._local, "pre"):
            self._local.pre = self._make()
        return prepare_face(*face_and_mask(self._local.pre, image), self.size)


@partial(jax.jit, static_argnums=(0, 1))
def forward(spec: NetSpec, out: NamedSharding, state: nnx.State, x: jax.Array) -> jax.Array:
    """The generator's image, sharded like ``out``; compiled once per spec, batch and sharding."""
    y = nnx.merge(nnx.graphdef(abstract(spec)), state)(x)[0]
    return jax.lax.with_sharding_constraint(y, out)


def default_batch_size() -> int:
    """8 per accelerator; 1 per CPU device, where bigger batches measured slower per image."""
    per_device = 1 if jax.default_backend() == "cpu" else 8
    return per_device * len(jax.local_devices())


class BatchedGenerator:
    """The generator on fixed-size batches sharded over ``devices`` (default: all local ones).

    The batch size is rounded up to a multiple of the device count; shorter batches are padded,
    so the forward pass compiles once. Parameters are replicated on every device.
    """

    def __init__(self, gen: CompiledNet, batch_size: int, devices: Sequence | None = None):
        devices = list(devices or jax.local_devices())
        mesh = Mesh(np.array(devices), ("data",))
        self.batch_size = math.ceil(max(1, batch_size) / len(devices)) * len(devices)
        self.spec, self.size = gen.spec, gen.spec.img_size
        self.state = jax.device_put(gen.state, NamedSharding(mesh, P()))
        self._data = NamedSharding(mesh, P("data"))

    def dispatch(self, x: np.ndarray) -> jax.Array:
        """Start the forward pass of ``x`` [n <= batch_size, S, S, 3]; returns without waiting."""
        pad = np.zeros((self.batch_size - len(x), *x.shape[1:]), np.float32)
        batch = jax.device_put(np.concatenate([x, pad]), self._data)
        return forward(self.spec, self._data, self.state, batch)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.dispatch(x))[: len(x)]


def torch_twin(gen: BatchedGenerator) -> Callable[[np.ndarray], np.ndarray]:
    """Our PyTorch port with the same weights: ``x [n, S, S, 3] -> image [n, S, S, 3]``."""
    import torch

    from p2c_jax import torch_port
    from p2c_jax.convert import state_to_torch

    spec = gen.spec
    model = torch_port.ResnetGenerator(spec.ch, spec.img_size, spec.light)
    model.load_state_dict({k: torch.from_numpy(np.array(v))
                           for k, v in state_to_torch(gen.state).items()})
    return torch_port.nhwc_images(model)


def psnr(mse: float) -> float:
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


@dataclass
class Summary:
    """Counts, failure reasons and, with --compare_torch, the overall difference."""

    done: int = 0
    failed: int = 0
    reasons: Counter = field(default_factory=Counter)
    max_abs_diff: int = 0
    sq_err: float = 0.0
    pixels: int = 0

    @property
    def exit_code(self) -> int:
        """0: every input done; 1: some failed; 2: none done."""
        return 2 if self.done == 0 else int(self.failed > 0)

    def line(self) -> str:
        text = f"{self.done + self.failed} inputs: {self.done} done, {self.failed} failed"
        if self.reasons:
            text += " [" + ", ".join(f"{r}: {n}" for r, n in self.reasons.most_common()) + "]"
        if self.pixels:
            text += (f"; vs torch: max |diff| {self.max_abs_diff}, "
                     f"PSNR {psnr(self.sq_err / self.pixels):.2f} dB")
        return text


def output_names(names: Sequence[str]) -> dict[str, str]:
    """Relative PNG name per input: preprocessing's output stem + .png."""
    return {n: s + ".png" for n, s in output_stems(names).items()}


def reason_of(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, ImageError) else f"{type(exc).__name__}: {exc}"


def run(
    items: Iterable[tuple[Path, str]],
    output: str | Path,
    generator: BatchedGenerator,
    prepare: Callable[[Path], Prepared],
    *,
    side_by_side: bool = False,
    reference: Callable[[np.ndarray], np.ndarray] | None = None,
    workers: int = 2,
    progress: bool = True,
) -> Summary:
    """Cartoonize every (path, relative name) into ``output``; a bad input never stops the run.

    Each input gets a line in ``output/report.jsonl``: done (with its output and, given a
    ``reference`` generator, max |diff| and PSNR against it) or failed with the reason.
    """
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    items = list(items)
    names = output_names([rel for _, rel in items])
    summary, records = Summary(), {}
    bar = tqdm(total=len(items), disable=not progress, unit="img", file=sys.stderr)

    def fail(path: Path, rel: str, exc: BaseException) -> None:
        reason = reason_of(exc)
        summary.failed += 1
        summary.reasons[reason.split(" (")[0]] += 1
        records[rel] = {"name": rel, "input": str(path), "status": "failed", "reason": reason}
        bar.update()

    def finish(batch: list[tuple[Path, str, Prepared]], y: jax.Array) -> None:
        ys = np.asarray(y)[: len(batch)]
        refs = reference(np.stack([p.x for *_, p in batch])) if reference is not None else None
        for i, (path, rel, prep) in enumerate(batch):
            try:
                cartoon = postprocess(ys[i], prep.mask)
                image = np.concatenate([prep.photo, cartoon], axis=1) if side_by_side else cartoon
                write_atomic(output / names[rel], encode_png(image))
            except Exception as exc:  # noqa: BLE001 - e.g. a full disk: report it, go on
                fail(path, rel, exc)
                continue
            rec = {"name": rel, "input": str(path), "status": "done", "outputs": [names[rel]]}
            if refs is not None:
                diff = np.abs(cartoon.astype(np.int32) - postprocess(refs[i], prep.mask))
                sq = float(np.sum(diff.astype(np.float64) ** 2))
                rec.update(max_abs_diff=int(diff.max()), psnr=round(psnr(sq / diff.size), 2))
                summary.max_abs_diff = max(summary.max_abs_diff, rec["max_abs_diff"])
                summary.sq_err, summary.pixels = summary.sq_err + sq, summary.pixels + diff.size
                tqdm.write(f"{rel}: max |diff| {rec['max_abs_diff']}, PSNR {rec['psnr']} dB",
                           file=sys.stderr)
            summary.done += 1
            records[rel] = rec
            bar.update()

    window = 2 * generator.batch_size + workers  # images decoded ahead of the device
    pending: deque[tuple[Path, str, Future]] = deque()
    todo = iter(items)
    batch: list[tuple[Path, str, Prepared]] = []
    in_flight: tuple[list, jax.Array] | None = None
    try:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            while True:
                while len(pending) < window and (item := next(todo, None)) is not None:
                    pending.append((*item, pool.submit(prepare, item[0])))
                if pending:
                    path, rel, future = pending.popleft()
                    try:
                        batch.append((path, rel, future.result()))
                    except Exception as exc:  # noqa: BLE001 - a bad file must never stop the run
                        fail(path, rel, exc)
                if batch and (len(batch) == generator.batch_size or not pending):
                    y = generator.dispatch(np.stack([p.x for *_, p in batch]))
                    if in_flight is not None:
                        finish(*in_flight)  # while the new batch computes
                    in_flight, batch = (batch, y), []
                if not pending:
                    break
            if in_flight is not None:
                finish(*in_flight)
    finally:
        bar.close()
        lines = [json.dumps(records[rel]) + "\n" for _, rel in items if rel in records]
        write_atomic(output / REPORT_NAME, "".join(lines).encode())
    return summary


def build_parser() -> argparse.ArgumentParser:
    from preprocessing.landmarks import BACKENDS as LANDMARKS
    from preprocessing.segmentation import BACKENDS as SEGMENTATION

    p = argparse.ArgumentParser(prog="p2c-infer", description=__doc__.split("\n")[0])
    p.add_argument("inputs", nargs="+", help="photo files, folders (recursive) or globs")
    p.add_argument("--output", "-o", required=True,
                   help="output folder: NAME.png per input (relative names kept), report.jsonl")
    p.add_argument("--weights", required=True,
                   help="the original photo2cartoon_weights.pt or our checkpoint directory")
    p.add_argument("--batch_size", type=int, default=None,
                   help="images per forward pass, rounded up to a multiple of the device count "
                        "(default: 8 per accelerator, 1 per CPU device)")
    p.add_argument("--no_preprocess", action="store_true",
                   help="inputs are aligned faces: only resized to 256 (INTER_AREA), no mask")
    p.add_argument("--side_by_side", action="store_true",
                   help="write the face the generator saw and its cartoon side by side")
    p.add_argument("--compare_torch", action="store_true",
                   help="also run our PyTorch port; report max |diff| and PSNR per image and "
                        "overall")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="decoding/preprocessing threads")
    p.add_argument("--landmarks", choices=LANDMARKS, default="dlib", help="landmark backend")
    p.add_argument("--segmentation", choices=SEGMENTATION, default=None,
                   help="segmentation backend (default: pb with --seg_model, else grabcut)")
    p.add_argument("--seg_model", default=None, help="the original's seg_model_384.pb")
    p.add_argument("--device", default="cpu", help="device of the face-alignment backend")
    p.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    p.add_argument("--compile_cache", default=default_compile_cache(),
                   help="folder where the compiled generator is kept for later commands, which "
                        "then start seconds sooner (default: %(default)s); none: no cache")
    return p


def default_compile_cache() -> str:
    """``$JAX_COMPILATION_CACHE_DIR``, else ``p2c-jax/xla`` in the user's cache folder."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "p2c-jax", "xla")


def make_preprocessor(args: argparse.Namespace) -> Preprocessor:
    """The Preprocessor of the CLI's backend options."""
    from preprocessing.landmarks import make_landmarker
    from preprocessing.segmentation import make_segmenter

    seg = args.segmentation or ("pb" if args.seg_model else "grabcut")
    return Preprocessor(make_landmarker(args.landmarks, args.device),
                        make_segmenter(seg, args.seg_model))


def main(argv: Sequence[str] | None = None) -> int:
    """``infer.py INPUTS... --output DIR --weights PATH`` (console script ``p2c-infer``)."""
    args = build_parser().parse_args(argv)
    if args.compile_cache != "none":
        jax.config.update("jax_compilation_cache_dir", args.compile_cache)
    output = Path(args.output).absolute()
    items = [(p, rel) for p, rel in discover(args.inputs) if output not in p.absolute().parents]
    try:
        generator = BatchedGenerator(load_generator(args.weights, NET),
                                     args.batch_size or default_batch_size())
        reference = torch_twin(generator) if args.compare_torch else None
    except CheckpointError as e:
        print(f"error: unusable weights: {e}", file=sys.stderr)
        return 2
    except ImportError as e:
        print(f"error: --compare_torch needs torch ({e}): pip install 'p2c-jax[torch]'",
              file=sys.stderr)
        return 2
    make = None if args.no_preprocess else partial(make_preprocessor, args)
    try:
        prepare = Preparer(make, generator.size)
    except Exception as e:  # noqa: BLE001 - a missing backend or model file
        print(f"error: preprocessing backend unusable ({type(e).__name__}: {e}); install "
              "pip install -e '.[preprocess]' or use --no_preprocess for aligned faces",
              file=sys.stderr)
        return 2
    summary = run(items, output, generator, prepare, side_by_side=args.side_by_side,
                  reference=reference, workers=args.workers, progress=not args.no_progress)
    print(summary.line(), file=sys.stderr)
    return summary.exit_code

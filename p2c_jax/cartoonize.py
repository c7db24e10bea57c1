"""Folders of photos -> cartoons on disk, as the original ``test.py`` does one photo, pipelined.

Per image, exactly as the original: the aligned face crop and its segmentation mask (or, with
``--no_preprocess``, the already aligned face) are resized to 256 with INTER_AREA; the face is
put on white by the mask and scaled to [-1, 1]; the generator's output becomes
``(y + 1) * 127.5``, is put on white by the same mask and truncated to uint8.

Decoding and preprocessing run in a thread pool feeding a bounded window of pending images; the
main thread runs the generator on fixed-size batches and writes PNGs while the next batch
computes. Every input gets a line in ``report.jsonl`` as it finishes, after its outputs, which
are written whole or not at all (``write_atomic``): a re-run after a kill skips the inputs the
report names as done whose outputs exist, and does the rest.
"""

from __future__ import annotations

import math
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
from etils import epath
from tqdm import tqdm

from p2c_jax import paths
from p2c_jax.inference import BatchedGenerator
from preprocessing.files import remove_stale_temporaries, write_atomic
from preprocessing.generator_io import (
    Prepared,
    face_and_mask,
    postprocess,
    prepare_aligned,
    prepare_face,
)
from preprocessing.io import encode_png, load_rgb
from preprocessing.pipeline import Preprocessor, output_stems
from preprocessing.report import Report, Summary


class Preparer:
    """``path -> Prepared`` for the worker threads, each with its own Preprocessor.

    The first Preprocessor is built at once, so that an unusable backend fails here rather
    than on every input, and is handed to the first worker.
    """

    def __init__(self, make_preprocessor: Callable[[], Preprocessor] | None, size: int = 256):
        self.size = size
        self._make = make_preprocessor
        self._local = threading.local()
        self._lock = threading.Lock()
        self._spare = make_preprocessor() if make_preprocessor is not None else None

    def _preprocessor(self) -> Preprocessor:
        if not hasattr(self._local, "pre"):
            with self._lock:
                spare, self._spare = self._spare, None
            self._local.pre = spare if spare is not None else self._make()
        return self._local.pre

    def __call__(self, path: Path) -> Prepared:
        image = load_rgb(path)
        if self._make is None:
            return prepare_aligned(image, self.size)
        return prepare_face(*face_and_mask(self._preprocessor(), image), self.size)


def torch_twin(gen: BatchedGenerator) -> Callable[[np.ndarray], np.ndarray]:
    """Our PyTorch port with the same weights: ``x [n, S, S, 3] -> image [n, S, S, 3]``."""
    from p2c_jax.pytorch import bridge, nets

    return nets.nhwc_images(bridge.from_state(gen.spec, gen.state))


def psnr(mse: float) -> float:
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


@dataclass
class TorchDiff:
    """With ``--compare_torch``: the largest difference and the squared error over all images."""

    max_abs_diff: int = 0
    sq_err: float = 0.0
    pixels: int = 0

    def add(self, diff: np.ndarray) -> dict:
        """Accumulate one image's ``diff``; returns its own max |diff| and PSNR."""
        sq = float(np.sum(diff.astype(np.float64) ** 2))
        self.max_abs_diff = max(self.max_abs_diff, int(diff.max()))
        self.sq_err, self.pixels = self.sq_err + sq, self.pixels + diff.size
        return {"max_abs_diff": int(diff.max()), "psnr": round(psnr(sq / diff.size), 2)}

    def line(self) -> str:
        return (
            f"vs torch: max |diff| {self.max_abs_diff}, "
            f"PSNR {psnr(self.sq_err / self.pixels):.2f} dB"
        )


def output_names(names: Iterable[str]) -> dict[str, str]:
    """Relative PNG name per input: preprocessing's output stem + .png."""
    return {n: s + ".png" for n, s in output_stems(list(names)).items()}


def write_cartoon(
    path: str | os.PathLike, y: np.ndarray, prep: Prepared, side_by_side: bool
) -> np.ndarray:
    """Write the cartoon of the generator's image ``y`` of ``prep`` (with ``side_by_side``,
    beside the face the generator saw) whole to ``path``; returns the cartoon."""
    cartoon = postprocess(y, prep.mask)
    image = np.concatenate([prep.photo, cartoon], axis=1) if side_by_side else cartoon
    write_atomic(path, encode_png(image))
    return cartoon


def progress_bar(items: list, todo: list, progress: bool) -> tqdm:
    """The progress bar of a run over ``items``, the skipped ones (not in ``todo``) counted as
    done."""
    return tqdm(
        total=len(items),
        initial=len(items) - len(todo),
        disable=not progress,
        unit="img",
        file=sys.stderr,
    )


def start_report(
    output: epath.Path, items: list[tuple[Path, str]], overwrite: bool
) -> tuple[Report, list[tuple[Path, str]]]:
    """The report of a run into ``output`` and the inputs it has to do.

    Unless ``overwrite``, the report of a previous run is appended to, and its inputs that are
    done (their outputs exist) are counted as skipped rather than done again. Temporary files
    that a killed run left in a local ``output`` are removed.
    """
    if not paths.is_remote(output):
        remove_stale_temporaries(output)
    report = Report(output, resume=not overwrite)
    todo = []
    for path, rel in items:
        if not report.already_done(rel):
            todo.append((path, rel))
        else:
            report.skipped()
    return report, todo


def run_pipelined(
    items: Iterable[tuple[Path, str]],
    prepare: Callable[[Path], Any],
    generator: BatchedGenerator,
    *,
    workers: int,
    expand: Callable[[Path, str, Any], list[tuple[Any, np.ndarray]]],
    collect: Callable[[list, jax.Array], None],
    failed: Callable[[Path, str, BaseException], None],
) -> None:
    """Inputs through ``prepare`` in a thread pool, their generator inputs through the device.

    ``expand(path, rel, prepared)`` gives an input's (key, x) pairs (one per face); they are
    batched in input order, and ``collect(keys, images)`` runs for each batch while the next one
    computes. An input whose ``prepare`` raised goes to ``failed``; the run goes on. At most
    ``2 * batch_size + workers`` inputs are prepared ahead of the device.
    """
    size = generator.batch_size
    window = 2 * size + workers
    pending: deque[tuple[Path, str, Future]] = deque()
    todo = iter(items)
    queue: list[tuple[Any, np.ndarray]] = []
    in_flight: tuple[list, jax.Array] | None = None
    with ThreadPoolExecutor(max(1, workers)) as pool:
        while True:
            while len(pending) < window and (item := next(todo, None)) is not None:
                pending.append((*item, pool.submit(prepare, item[0])))
            if pending:
                path, rel, future = pending.popleft()
                try:
                    prepared = future.result()
                except Exception as exc:  # noqa: BLE001 - a bad file must never stop the run
                    failed(path, rel, exc)
                else:
                    queue.extend(expand(path, rel, prepared))
            while len(queue) >= size or (queue and not pending):
                batch, queue = queue[:size], queue[size:]
                y = generator.dispatch(np.stack([x for _, x in batch]))
                if in_flight is not None:
                    collect(*in_flight)  # while the new batch computes
                in_flight = ([key for key, _ in batch], y)
            if not pending:
                break
        if in_flight is not None:
            collect(*in_flight)


def run(
    items: Iterable[tuple[Path, str]],
    output: str | os.PathLike,
    generator: BatchedGenerator,
    prepare: Callable[[Path], Prepared],
    *,
    side_by_side: bool = False,
    reference: Callable[[np.ndarray], np.ndarray] | None = None,
    workers: int = 2,
    progress: bool = True,
    overwrite: bool = False,
) -> tuple[Summary, TorchDiff | None]:
    """Cartoonize every (path, relative name) into ``output``; a bad input never stops the run.

    Inputs a previous run did are skipped unless ``overwrite`` (``start_report``). Returns the
    summary and, given a ``reference`` generator, the difference against it.
    """
    output = paths.as_path(output)  # local, or gs:// (an object per file)
    items = list(items)
    names = output_names(rel for _, rel in items)
    diff_total = TorchDiff() if reference is not None else None
    report, todo = start_report(output, items, overwrite)
    bar = progress_bar(items, todo, progress)

    def finish(batch: list[tuple[Path, str, Prepared]], y: jax.Array) -> None:
        ys = np.asarray(y)[: len(batch)]
        refs = reference(np.stack([p.x for *_, p in batch])) if reference is not None else None
        for i, (path, rel, prep) in enumerate(batch):
            bar.update()
            try:
                cartoon = write_cartoon(output / names[rel], ys[i], prep, side_by_side)
            except Exception as exc:  # noqa: BLE001 - e.g. a full disk: report it, go on
                report.failed(rel, path, exc)
                continue
            extra = {}
            if refs is not None:
                diff = np.abs(cartoon.astype(np.int32) - postprocess(refs[i], prep.mask))
                extra = diff_total.add(diff)
                tqdm.write(
                    f"{rel}: max |diff| {extra['max_abs_diff']}, PSNR {extra['psnr']} dB",
                    file=sys.stderr,
                )
            report.done(rel, path, [names[rel]], **extra)

    def failed(path: Path, rel: str, exc: BaseException) -> None:
        report.failed(rel, path, exc)
        bar.update()

    try:
        run_pipelined(
            todo,
            prepare,
            generator,
            workers=workers,
            expand=lambda path, rel, prep: [((path, rel, prep), prep.x)],
            collect=finish,
            failed=failed,
        )
    finally:
        bar.close()
        report.close()
    return report.summary, diff_total

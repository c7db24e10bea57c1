"""Photo -> aligned, cropped, background-whitened face; batch runs with a report."""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import geometry
from .files import join, write_atomic
from .io import ImageError, encode_png, load_rgb
from .landmarks import Landmarker
from .report import Report, Summary
from .segmentation import Segmenter


class NoFaceError(ImageError):
    """No face was found in the photo."""


@dataclass
class Output:
    """One image to write for an input: name suffix, RGB pixels, optional metadata."""

    suffix: str
    image: np.ndarray
    meta: dict | None = None


Processor = Callable[[np.ndarray], list[Output]]


def face_meta(alignment: geometry.Alignment) -> dict:
    """The `--save_meta` record: landmarks in photo pixels, rotation, crop box on the canvas."""
    return {
        "landmarks": [[float(x), float(y)] for x, y in alignment.landmarks],
        "angle_degrees": alignment.rotation.degrees,
        "crop_box": [int(v) for v in alignment.box],
    }


@dataclass
class Preprocessor:
    """The original's `Preprocess.process` + white background, with pluggable backends.

    Keeps the largest face, or every face (largest first) with `all_faces`.
    `timings` accumulates seconds per stage.
    """

    landmarker: Landmarker
    segmenter: Segmenter
    all_faces: bool = False
    timings: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def _timed(self, stage: str, fn, *args):
        t = time.perf_counter()
        out = fn(*args)
        self.timings[stage] += time.perf_counter() - t
        return out

    def align(self, image: np.ndarray) -> list[geometry.Alignment]:
        """Alignments of the faces kept, largest first."""
        faces = self._timed("landmarks", self.landmarker, image)
        if not faces:
            raise NoFaceError("no face found")
        order = sorted(range(len(faces)), key=lambda i: -geometry.landmark_box_area(faces[i]))
        order = order if self.all_faces else [geometry.largest_face(faces)]
        scale = getattr(self.landmarker, "box_height_scale", 1.0)
        return [geometry.align(image.shape, faces[i], scale) for i in order]

    def crop_and_mask(
        self, image: np.ndarray, alignment: geometry.Alignment
    ) -> tuple[np.ndarray, np.ndarray]:
        """The aligned crop of one face (not whitened) and its uint8 portrait mask."""
        crop = self._timed("rotate_crop", geometry.aligned_crop, image, alignment)
        left, top = alignment.box[:2]
        mask = self._timed(
            "segment", self.segmenter, crop, alignment.canvas_landmarks - (left, top)
        )
        return crop, mask

    def face(self, image: np.ndarray, alignment: geometry.Alignment) -> np.ndarray:
        """The aligned crop of one face, composited on white by its mask."""
        return self._timed(
            "composite", geometry.composite_on_white, *self.crop_and_mask(image, alignment)
        )

    def __call__(self, image: np.ndarray) -> list[Output]:
        alignments = self.align(image)
        suffixes = [f"_{i}" for i in range(len(alignments))] if self.all_faces else [""]
        return [Output(s, self.face(image, a), face_meta(a)) for s, a in zip(suffixes, alignments)]


def as_is(image: np.ndarray) -> list[Output]:
    """Store the decoded image unchanged (e.g. cartoons that are already aligned)."""
    return [Output("", image)]


def output_stems(names: Sequence[str]) -> dict[str, str]:
    """Relative output stem per input name: the name without its suffix, unless two collide."""
    stems = {n: str(Path(n).with_suffix("")) for n in names}
    count = Counter(stems.values())
    return {n: (s if count[s] == 1 else n) for n, s in stems.items()}


def write_outputs(
    path: str | os.PathLike,
    stem: str,
    folder: str | os.PathLike,
    process: Processor,
    *,
    save_meta: bool = False,
    timings: dict[str, float] | None = None,
) -> list[tuple[str, bytes]]:
    """Decode one input, process it and write each output atomically as ``folder/STEM.png``
    (and ``STEM.json`` with ``save_meta``); returns (PNG name relative to ``folder``, PNG
    bytes) per output. Raises on a bad input (``ImageError``, ``NoFaceError``, ...)."""
    timings = timings if timings is not None else defaultdict(float)
    t = time.perf_counter()
    image = load_rgb(path)
    timings["decode"] += time.perf_counter() - t
    outputs = process(image)
    t = time.perf_counter()
    written = []
    for out in outputs:
        name = stem + out.suffix
        if save_meta and out.meta is not None:
            write_atomic(join(folder, f"{name}.json"), json.dumps(out.meta).encode())
        png = encode_png(out.image)
        write_atomic(join(folder, f"{name}.png"), png)
        written.append((f"{name}.png", png))
    timings["write"] += time.perf_counter() - t
    return written


def run(
    inputs: Iterable[tuple[Path, str]],
    save_path: str | Path,
    process: Processor,
    *,
    save_meta: bool = False,
    progress: bool = True,
    timings: dict[str, float] | None = None,
) -> Summary:
    """Process every (path, relative name) into ``save_path``, never stopping on a bad file.

    Each input gets a line in ``save_path/report.jsonl`` (done, or the reason it failed), appended
    as it finishes; inputs whose outputs from a previous run exist are skipped. The serial
    engine: ``p2c-preprocess`` runs the same work per shard on Beam (``beam_pipeline``).
    """
    save_path = Path(save_path)
    items = list(inputs)
    stems = output_stems([rel for _, rel in items])
    timings = timings if timings is not None else defaultdict(float)
    with Report(save_path) as report:
        for path, rel in tqdm(items, disable=not progress, unit="img", file=sys.stderr):
            if report.already_done(rel):
                report.skipped()
                continue
            try:
                outputs = write_outputs(
                    path, stems[rel], save_path, process, save_meta=save_meta, timings=timings
                )
            except Exception as exc:  # noqa: BLE001 - a bad file must never stop the run
                report.failed(rel, path, exc)
                continue
            report.done(rel, path, [name for name, _ in outputs])
    return report.summary

"""Every face of a photo cartoonized and pasted back into the whole photo (``--whole_photo``).

Each face is found, aligned, segmented and made into the generator's input exactly as for a
single face (``preprocessing.generator_io.prepare_face``); the faces of many photos go through
the generator together in fixed-size batches. Each face's generator image (not put on white)
is then warped back through the inverse of its crop and rotation and blended into the
full-resolution photo by its mask, feathered at the edges (``preprocessing.paste``).

Order where faces overlap: the smallest face is pasted first and the largest last, so the
largest (usually the nearest) face is on top.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import jax
import numpy as np

from p2c_jax import paths
from p2c_jax.cartoonize import (
    Preparer,
    output_names,
    progress_bar,
    run_pipelined,
    start_report,
)
from p2c_jax.inference import BatchedGenerator
from preprocessing.files import write_atomic
from preprocessing.generator_io import Prepared, postprocess, prepare_face
from preprocessing.geometry import Alignment
from preprocessing.io import encode_png, load_rgb
from preprocessing.paste import paste_all
from preprocessing.pipeline import NoFaceError, Preprocessor
from preprocessing.report import Summary

MAX_FACES = 10
MIN_FACE = 40  # pixels: the longer side of a face's landmark box in the photo


@dataclass
class Face:
    """One face of a photo: where it is and its generator input."""

    alignment: Alignment
    prepared: Prepared


@dataclass
class Photo:
    """A decoded photo and the faces used from it, largest first."""

    image: np.ndarray
    faces: list[Face]
    found: int  # faces detected, before --min_face and --max_faces

    @property
    def x(self) -> np.ndarray:
        """The generator inputs of its faces [n, S, S, 3]."""
        return np.stack([f.prepared.x for f in self.faces])


def face_size(alignment: Alignment) -> float:
    """A face's size in photo pixels: the longer side of its landmarks' bounding box."""
    span = alignment.landmarks.max(axis=0) - alignment.landmarks.min(axis=0)
    return float(span.max())


def find_faces(
    pre: Preprocessor,
    image: np.ndarray,
    *,
    size: int = 256,
    max_faces: int = MAX_FACES,
    min_face: float = MIN_FACE,
) -> Photo:
    """The ``max_faces`` largest faces of at least ``min_face`` pixels, prepared for the
    generator. Raises NoFaceError (the report's "no face found") when none is left."""
    if not pre.all_faces:
        raise ValueError("find_faces needs a Preprocessor with all_faces=True")
    alignments = pre.align(image)
    kept = [a for a in alignments if face_size(a) >= min_face][: max(0, max_faces)]
    if not kept:
        raise NoFaceError(f"no face found ({len(alignments)} smaller than {min_face:g} px)")
    faces = [Face(a, prepare_face(*pre.crop_and_mask(image, a), size)) for a in kept]
    return Photo(image, faces, len(alignments))


def face_cartoons(photo: Photo, ys: np.ndarray) -> list[np.ndarray]:
    """Each face's cartoon on white, as ``infer.py`` writes a single face (``--save_faces``)."""
    return [postprocess(y, f.prepared.mask) for f, y in zip(photo.faces, ys, strict=True)]


def paste_back(photo: Photo, ys: np.ndarray) -> np.ndarray:
    """The whole photo with each face's generator image [n, S, S, 3] in [-1, 1] pasted back,
    smallest first so that the largest ends on top."""
    order = list(range(len(photo.faces)))[::-1]
    return paste_all(
        photo.image,
        [postprocess(ys[i], None) for i in order],
        [photo.faces[i].prepared.mask for i in order],
        [photo.faces[i].alignment for i in order],
    )


def render(photo: Photo, ys: np.ndarray, side_by_side: bool = False) -> np.ndarray:
    """The output image: the pasted-back photo, after the input with ``side_by_side``."""
    out = paste_back(photo, ys)
    return np.concatenate([photo.image, out], axis=1) if side_by_side else out


class PhotoPreparer(Preparer):
    """``path -> Photo`` for the worker threads (each with its own Preprocessor)."""

    def __init__(
        self,
        make_preprocessor: Callable[[], Preprocessor],
        size: int = 256,
        max_faces: int = MAX_FACES,
        min_face: float = MIN_FACE,
    ):
        super().__init__(make_preprocessor, size)
        self.max_faces, self.min_face = max_faces, min_face

    def __call__(self, path: Path) -> Photo:
        return find_faces(
            self._preprocessor(),
            load_rgb(path),
            size=self.size,
            max_faces=self.max_faces,
            min_face=self.min_face,
        )


@dataclass
class FaceCount:
    """Faces found and used over a run."""

    found: int = 0
    used: int = 0

    def line(self) -> str:
        return f"faces: {self.found} found, {self.used} used"


@dataclass
class _Pending:
    """A prepared photo waiting for the generator's images of its faces."""

    path: Path
    rel: str
    photo: Photo
    ys: list = field(default_factory=list)
    left: int = 0


def run(
    items: Iterable[tuple[Path, str]],
    output: str | os.PathLike,
    generator: BatchedGenerator,
    prepare: Callable[[Path], Photo],
    *,
    side_by_side: bool = False,
    save_faces: bool = False,
    workers: int = 2,
    progress: bool = True,
    overwrite: bool = False,
) -> tuple[Summary, FaceCount]:
    """Cartoonize every face of every (path, relative name) into ``output``: NAME.png the whole
    photo, with ``save_faces`` also NAME_face{i}.png each face's cartoon (largest first).

    The report line of a photo names the faces found and used; a bad input never stops the run.
    Photos a previous run did are skipped unless ``overwrite`` (``cartoonize.start_report``);
    the face counts are of this run's photos.
    """
    output = paths.as_path(output)  # local, or gs:// (an object per file)
    items = list(items)
    names = output_names(rel for _, rel in items)
    counts = FaceCount()
    report, todo = start_report(output, items, overwrite)
    bar = progress_bar(items, todo, progress)

    def finish(p: _Pending) -> None:
        bar.update()
        ys = np.stack(p.ys)
        try:
            written = [names[p.rel]]
            write_atomic(output / written[0], encode_png(render(p.photo, ys, side_by_side)))
            if save_faces:
                stem = written[0].removesuffix(".png")
                for i, cartoon in enumerate(face_cartoons(p.photo, ys)):
                    write_atomic(output / f"{stem}_face{i}.png", encode_png(cartoon))
                    written.append(f"{stem}_face{i}.png")
        except Exception as exc:  # noqa: BLE001 - e.g. a full disk: report it, go on
            report.failed(p.rel, p.path, exc)
            return
        counts.found, counts.used = counts.found + p.photo.found, counts.used + len(p.ys)
        report.done(
            p.rel, p.path, written, faces_found=p.photo.found, faces_used=len(p.photo.faces)
        )

    def collect(slots: list[tuple[_Pending, int]], y: jax.Array) -> None:
        ys = np.asarray(y)[: len(slots)]
        for (p, i), yi in zip(slots, ys):
            p.ys[i] = yi
            p.left -= 1
            if p.left == 0:
                finish(p)

    def expand(path: Path, rel: str, photo) -> list[tuple[tuple[_Pending, int], np.ndarray]]:
        p = _Pending(path, rel, photo, [None] * len(photo.faces), len(photo.faces))
        return [((p, i), face.prepared.x) for i, face in enumerate(photo.faces)]

    def failed(path: Path, rel: str, exc: BaseException) -> None:
        report.failed(rel, path, exc)
        bar.update()

    try:
        run_pipelined(
            todo,
            prepare,
            generator,
            workers=workers,
            expand=expand,
            collect=collect,
            failed=failed,
        )
    finally:
        bar.close()
        report.close()
    return report.summary, counts

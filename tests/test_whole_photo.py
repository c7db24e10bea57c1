"""--whole_photo: every face cartoonized and pasted back into the photo. The output has the
input's size and orientation; pixels outside every face's crop are the input's; inside each
face, away from the feathered edge, it equals the face's generator image warped back through
a transform built here independently (cartoon -> crop -> inverse rotation); where faces
overlap the largest is on top; no face gives the report's reason and exit status."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import ci_required
from helpers.faces import (
    StubLandmarker,
    astronaut_canvas,
    default_preprocessor,
    face_points,
    soft_mask,
    synthetic_photo,
)
from PIL import Image

from p2c_jax import whole_photo
from p2c_jax.cli.infer import main
from p2c_jax.inference import BatchedGenerator, load_generator
from preprocessing import paste
from preprocessing.generator_io import Prepared, postprocess, prepare_face
from preprocessing.geometry import align
from preprocessing.io import load_rgb
from preprocessing.pipeline import Preprocessor

needs_dlib = ci_required.needs_dlib()
TOLERANCE = 3  # grey levels: two bilinear warps of the same cartoon, computed differently
ARGS = ["--whole_photo", "--save_faces", "--batch_size", "2", "--workers", "1", "--no_progress"]


@pytest.fixture(scope="module")
def generator(weights) -> BatchedGenerator:
    return BatchedGenerator(load_generator(weights), batch_size=2)


def report(out: Path) -> dict[str, dict]:
    return {r["name"]: r for r in map(json.loads, (out / "report.jsonl").read_text().splitlines())}


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


# ------------------------------------------------- the expectation, built independently


def cartoon_to_photo(alignment, size: int) -> np.ndarray:
    """2 x 3: cartoon pixel -> photo pixel (INTER_AREA's pixel centres, crop offset, the
    inverse of the rotation)."""
    left, top, right, _ = alignment.box
    k = (right - left + 1) / size
    to_canvas = np.array(
        [[k, 0, left + 0.5 * k - 0.5], [0, k, top + 0.5 * k - 0.5], [0, 0, 1]], np.float64
    )
    rotation = np.vstack([alignment.rotation.matrix, [0, 0, 1]])
    return (np.linalg.inv(rotation) @ to_canvas)[:2]


def expected(image: np.ndarray, faces: list[whole_photo.Face], ys: np.ndarray):
    """(each face's cartoon warped into the photo, where that must hold, where the photo must be
    untouched)."""
    h, w = image.shape[:2]
    size = ys.shape[1]
    margin = int(np.ceil(paste.EDGE_RAMP * size)) + 4
    wants, insides = [], []
    touched = np.zeros((h, w), bool)
    for face, y in zip(faces, ys):
        f = cartoon_to_photo(face.alignment, size)
        wants.append(cv2.warpAffine(postprocess(y, None), f, (w, h), flags=cv2.INTER_LINEAR))
        full = (face.prepared.mask[:, :, 0] >= 254 / 255).astype(np.uint8)  # GrabCut: 254
        inner = cv2.erode(full, np.ones((9, 9), np.uint8))
        inner[:margin], inner[-margin:], inner[:, :margin], inner[:, -margin:] = 0, 0, 0, 0
        insides.append(cv2.warpAffine(inner, f, (w, h), flags=cv2.INTER_NEAREST) == 1)
        square = cv2.warpAffine(np.ones((size, size), np.uint8), f, (w, h), flags=cv2.INTER_NEAREST)
        touched |= cv2.dilate(square, np.ones((7, 7), np.uint8)) > 0
    return wants, insides, ~touched


def check_pasted(image, out, faces, ys, min_inside: int = 500) -> None:
    assert out.shape == image.shape and out.dtype == np.uint8
    wants, insides, far = expected(image, faces, ys)
    assert far.mean() > 0.1
    np.testing.assert_array_equal(out[far], image[far])
    for want, inside in zip(wants, insides):
        assert inside.sum() > min_inside
        diff = np.abs(out[inside].astype(int) - want[inside].astype(int))
        assert diff.max() <= TOLERANCE, diff.max()
        # and it is not the photo: the cartoon of a random generator differs from it
        assert np.abs(out[inside].astype(int) - image[inside].astype(int)).mean() > 10


# ------------------------------------------------- two faces in one canvas, stand-in backends


class PlacedFaces:
    """The faces of ``face_points`` for copies of a (h, w) face placed at (x, y) scaled by s;
    none in a dark photo."""

    box_height_scale = 1.0

    def __init__(self, face_shape: tuple[int, int], placements: list[tuple[int, int, float]]):
        self.face_shape, self.placements = face_shape, placements

    def __call__(self, image: np.ndarray) -> list[np.ndarray]:
        if image.mean() < 20:
            return []
        pts = face_points(np.zeros((*self.face_shape, 3)))
        return [pts * s + (x, y) for x, y, s in self.placements]


def two_face_canvas(placements) -> tuple[np.ndarray, tuple[int, int]]:
    face = synthetic_photo(300, 260, 7)
    canvas = synthetic_photo(900, 1300, 8) // 2 + 40
    for x, y, s in placements:
        copy = cv2.resize(face, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
        canvas[y : y + copy.shape[0], x : x + copy.shape[1]] = copy
    return canvas, face.shape[:2]


def test_two_generated_faces(tmp_path, generator):
    placements = [(60, 120, 1.0), (640, 280, 1.7)]
    canvas, face_shape = two_face_canvas(placements)
    src = tmp_path / "two.png"
    Image.fromarray(canvas).save(src)
    make = lambda: Preprocessor(PlacedFaces(face_shape, placements), soft_mask, all_faces=True)  # noqa: E731
    summary, counts = whole_photo.run(
        [(src, "two.png")],
        tmp_path / "out",
        generator,
        whole_photo.PhotoPreparer(make, generator.size),
        save_faces=True,
        progress=False,
    )
    assert (summary.done, summary.exit_code) == (1, 0)
    assert (counts.found, counts.used) == (2, 2)
    rec = report(tmp_path / "out")["two.png"]
    assert (rec["faces_found"], rec["faces_used"]) == (2, 2)
    assert rec["outputs"] == ["two.png", "two_face0.png", "two_face1.png"]

    # the faces again, by the single-face path, and the generator on each alone
    pre = make()
    alignments = pre.align(canvas)
    sizes = [whole_photo.face_size(a) for a in alignments]
    assert sizes == pytest.approx([1.7 * 126, 126], abs=1)  # largest first
    faces = [whole_photo.Face(a, prepare_face(*pre.crop_and_mask(canvas, a))) for a in alignments]
    ys = np.concatenate([generator(f.prepared.x[None]) for f in faces])
    check_pasted(canvas, png(tmp_path / "out" / "two.png"), faces, ys, min_inside=5000)
    for i, (face, y) in enumerate(zip(faces, ys)):
        got = png(tmp_path / "out" / f"two_face{i}.png")  # infer.py's single-face cartoon
        assert np.abs(got.astype(int) - postprocess(y, face.prepared.mask)).max() <= 1


def test_overlapping_faces_largest_on_top():
    """Two crops overlapping: the larger face's cartoon is what shows in the overlap."""
    image = synthetic_photo(500, 700, 3)
    small_pts = face_points(np.zeros((200, 180, 3))) + np.array([300, 150])
    big_pts = face_points(np.zeros((360, 320, 3))) + np.array([80, 60])
    faces = []
    for pts in (big_pts, small_pts):  # largest first, as find_faces keeps them
        a = align(image.shape, pts)
        faces.append(whole_photo.Face(a, Prepared(np.zeros((64, 64, 3), np.uint8), None, None)))
    ys = np.stack([np.full((64, 64, 3), 0.9, np.float32), np.full((64, 64, 3), -0.9, np.float32)])
    photo = whole_photo.Photo(image, faces, 2)
    out = whole_photo.paste_back(photo, ys)
    big, small = (
        paste.warp_back(paste.weight(None, 64), f.alignment, 64, image.shape) for f in faces
    )
    both = np.zeros(image.shape[:2], bool)
    (bx0, by0, bx1, by1), (sx0, sy0, sx1, sy1) = big[1], small[1]
    bw = np.zeros(image.shape[:2], np.float32)
    sw = np.zeros(image.shape[:2], np.float32)
    bw[by0:by1, bx0:bx1], sw[sy0:sy1, sx0:sx1] = big[0], small[0]
    both = (bw == 1) & (sw == 1)
    assert both.sum() > 1000
    np.testing.assert_array_equal(out[both], np.full_like(out[both], int(1.9 * 127.5)))
    only_small = (sw == 1) & (bw == 0)
    assert only_small.sum() > 1000
    np.testing.assert_array_equal(out[only_small], np.full_like(out[only_small], int(0.1 * 127.5)))


def test_exif_orientation_and_no_face(tmp_path, generator):
    """A photo stored sideways with an EXIF orientation comes back upright, at its upright
    size; a dark photo fails with "no face found" (exit status 1 with one done, 2 with none);
    faces under --min_face are not used."""
    upright = synthetic_photo(360, 280, 11)  # portrait
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(np.ascontiguousarray(np.rot90(upright, 1))).save(
        tmp_path / "sideways.jpg", exif=exif, quality=95
    )
    Image.new("RGB", (300, 300), (5, 5, 5)).save(tmp_path / "dark.png")
    make = lambda: Preprocessor(StubLandmarker(), soft_mask, all_faces=True)  # noqa: E731
    prepare = whole_photo.PhotoPreparer(make, generator.size)
    items = [(tmp_path / "sideways.jpg", "sideways.jpg"), (tmp_path / "dark.png", "dark.png")]
    summary, _ = whole_photo.run(items, tmp_path / "out", generator, prepare, progress=False)
    assert (summary.done, summary.failed, summary.exit_code) == (1, 1, 1)
    rep = report(tmp_path / "out")
    assert rep["dark.png"]["reason"] == "no face found"
    assert rep["sideways.jpg"]["outputs"] == ["sideways.png"]  # no faces without --save_faces
    image = load_rgb(tmp_path / "sideways.jpg")
    assert image.shape == (360, 280, 3)
    photo = prepare(tmp_path / "sideways.jpg")
    ys = generator(photo.x)
    check_pasted(image, png(tmp_path / "out" / "sideways.png"), photo.faces, ys)

    none, _ = whole_photo.run(items[1:], tmp_path / "none", generator, prepare, progress=False)
    assert (none.done, none.exit_code) == (0, 2)
    small = whole_photo.PhotoPreparer(make, generator.size, min_face=400)
    few, _ = whole_photo.run(items[:1], tmp_path / "few", generator, small, progress=False)
    assert few.exit_code == 2
    assert report(tmp_path / "few")["sideways.jpg"]["reason"] == (
        "no face found (1 smaller than 400 px)"
    )


def test_side_by_side_and_flags(tmp_path, generator):
    make = lambda: Preprocessor(StubLandmarker(), soft_mask, all_faces=True)  # noqa: E731
    Image.fromarray(synthetic_photo(300, 400, 2)).save(tmp_path / "a.png")
    prepare = whole_photo.PhotoPreparer(make, generator.size)
    items = [(tmp_path / "a.png", "a.png")]
    whole_photo.run(items, tmp_path / "one", generator, prepare, progress=False)
    whole_photo.run(items, tmp_path / "two", generator, prepare, side_by_side=True, progress=False)
    both = png(tmp_path / "two" / "a.png")
    assert both.shape == (300, 800, 3)
    np.testing.assert_array_equal(both[:, :400], png(tmp_path / "a.png"))
    np.testing.assert_array_equal(both[:, 400:], png(tmp_path / "one" / "a.png"))
    with pytest.raises(SystemExit) as e:
        main(["a.png", "-o", "out", "--weights", "w.pt", "--whole_photo", "--no_preprocess"])
    assert e.value.code == 2


# ------------------------------------------------- the default backends (dlib, GrabCut)


def check_cli_output(src: Path, out: Path, generator, faces: int) -> None:
    image = load_rgb(src)
    stem = src.with_suffix("").name
    rec = report(out)[src.name]
    assert (rec["status"], rec["faces_found"], rec["faces_used"]) == ("done", faces, faces)
    assert rec["outputs"] == [f"{stem}.png"] + [f"{stem}_face{i}.png" for i in range(faces)]
    photo = whole_photo.find_faces(default_preprocessor(), image, size=generator.size)
    check_pasted(image, png(out / f"{stem}.png"), photo.faces, generator(photo.x))


@needs_dlib
def test_infer_whole_photo_two_astronauts(tmp_path, weights, generator):
    Image.fromarray(astronaut_canvas()).save(tmp_path / "two.jpg", quality=95)
    Image.new("RGB", (300, 300), (5, 5, 5)).save(tmp_path / "dark.png")
    out = tmp_path / "out"
    rc = main([str(tmp_path / "two.jpg"), "-o", str(out), "--weights", str(weights), *ARGS])
    assert rc == 0
    check_cli_output(tmp_path / "two.jpg", out, generator, faces=2)
    rc = main([str(tmp_path / "dark.png"), "-o", str(out), "--weights", str(weights), *ARGS])
    assert rc == 2
    assert report(out)["dark.png"]["reason"] == "no face found"


@needs_dlib
def test_infer_whole_photo_test_photo(data_dir, tmp_path, weights, generator):
    src = data_dir / "images" / "photo_test.jpg"
    out = tmp_path / "out"
    assert main([str(src), "-o", str(out), "--weights", str(weights), *ARGS]) == 0
    assert png(out / "photo_test.png").shape == load_rgb(src).shape
    check_cli_output(src, out, generator, faces=1)

"""preprocessing: the original's geometry on hand-computed cases, decoding of bad
inputs, and batch runs (report, skip-done, atomic outputs, metadata, exit codes)
with stand-in backends."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from preprocessing import geometry
from preprocessing.files import discover, write_atomic
from preprocessing.io import ImageError, encode_png, load_rgb
from preprocessing.pipeline import Preprocessor, as_is, run


def face_points(
    x0: float, y0: float, x1: float, y1: float, left_eye=None, right_eye=None
) -> np.ndarray:
    """68 points inside the box, the box's corners among them, eye corners where given."""
    pts = np.tile([(x0 + x1) / 2, (y0 + y1) / 2], (68, 1)).astype(np.float64)
    pts[0], pts[16], pts[19], pts[8] = (
        (x0, (y0 + y1) / 2),
        (x1, (y0 + y1) / 2),
        ((x0 + x1) / 2, y0),
        ((x0 + x1) / 2, y1),
    )
    pts[36] = left_eye if left_eye is not None else (x0 + 0.25 * (x1 - x0), y0 + 0.3 * (y1 - y0))
    pts[45] = right_eye if right_eye is not None else (x0 + 0.75 * (x1 - x0), y0 + 0.3 * (y1 - y0))
    return pts


# ---------------------------------------------------------------- geometry


def test_eye_angle_hand_computed():
    pts = face_points(0, 0, 300, 300, left_eye=(50, 60), right_eye=(150, 40))
    # dx = 50 - 150 = -100, dy = 60 - 40 = 20: atan(20 / -100) = atan(-0.2)
    assert geometry.eye_angle(pts) == pytest.approx(-0.19739555984988078, abs=1e-15)
    vertical = face_points(0, 0, 300, 300, left_eye=(100, 50), right_eye=(100, 150))
    assert geometry.eye_angle(vertical) == pytest.approx(-math.pi / 2)


def test_rotation_canvas_and_matrix_hand_computed():
    rot = geometry.rotation_for((100, 200, 3), math.atan(-0.2))
    cos, sin = 0.9805806756909202, -0.19611613513818404
    # new_w = int(200 cos + 100 |sin|) = int(215.72) ; new_h = int(200 |sin| + 100 cos) = int(137.28)
    assert rot.size == (215, 137)
    # Tx = 215 // 2 - 100 = 7 ; Ty = 137 // 2 - 50 = 18
    expected = np.array(
        [[cos, sin, (1 - cos) * 100 - sin * 50 + 7], [-sin, cos, sin * 100 + (1 - cos) * 50 + 18]]
    )
    np.testing.assert_allclose(rot.matrix, expected, rtol=0, atol=1e-12)
    assert rot.degrees == pytest.approx(-11.309932474020215)


def test_rotation_levels_the_eyes_and_moves_landmarks_like_the_matrix():
    pts = face_points(20, 20, 180, 90, left_eye=(50, 60), right_eye=(150, 40))
    a = geometry.align((100, 200, 3), pts)
    c = a.canvas_landmarks
    assert c[36, 1] == pytest.approx(c[45, 1], abs=1e-9)
    # the image centre (100, 50) goes to the canvas centre shifted by (Tx, Ty) = (7, 18)
    np.testing.assert_allclose(
        a.rotation.apply(np.array([[100.0, 50.0]])), [[107.0, 68.0]], atol=1e-9
    )


def test_rotate_90_degrees_pixels():
    img = np.arange(100 * 200 * 3, dtype=np.uint32).reshape(100, 200, 3).astype(np.uint8)
    rot = geometry.rotation_for(img.shape, math.pi / 2)
    assert rot.size == (100, 200)
    out = geometry.rotate(img, rot)
    # (x, y) -> (y, 200 - x): canvas row 0 comes from x = 200, outside the photo: white
    assert (out[0] == 255).all()
    np.testing.assert_array_equal(out[1:], np.rot90(img)[:-1])


@pytest.mark.parametrize(
    "box, expected",
    [
        # h = 80, w = 100: top int(20 - 64) = -44, bottom int(124) = 124, left -20, right 140;
        # 168 > 160 so left -= 4, right = left + 168
        ((10, 20, 110, 100), (-24, -44, 144, 124)),
        # int() truncates toward zero: int(20.5 - 64) = -43 ; 167 > 160: left -= 3
        ((10, 20.5, 110, 100.5), (-23, -43, 144, 124)),
        # w = 200, h = 50: top 10, bottom 115, left -60, right 260; 105 < 320 so top -= 107
        ((0, 50, 200, 100), (-60, -97, 260, 223)),
    ],
)
def test_crop_box_hand_computed(box, expected):
    assert geometry.crop_box(face_points(*box)) == expected


def test_crop_box_height_scale_moves_only_the_chin():
    # h = 80 scaled to 72: top int(20 - 57.6) = -37, bottom int(92 + 21.6) = 113, left -20, right 140
    # 150 < 160 so top -= 5, bottom = top + 160
    assert geometry.crop_box(face_points(10, 20, 110, 100), height_scale=0.9) == (
        -20,
        -42,
        140,
        118,
    )


def test_crop_is_white_outside_the_image():
    img = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    out = geometry.crop(img, (-2, -1, 3, 4))
    assert out.shape == (6, 6, 3)
    np.testing.assert_array_equal(out[1:5, 2:6], img[0:4, 0:4])
    assert (out[0] == 255).all() and (out[5] == 255).all() and (out[:, :2] == 255).all()
    inside = geometry.crop(img, (1, 1, 2, 2))
    np.testing.assert_array_equal(inside, img[1:3, 1:3])


def test_composite_on_white_truncates_like_the_original():
    face = np.full((1, 4, 3), 100, np.uint8)
    mask = np.array([[255, 128, 1, 0]], np.uint8)
    out = geometry.composite_on_white(face, mask)
    # 100 m + 255 (1 - m): m = 128/255 -> 177.196 ; m = 1/255 -> 254.39
    np.testing.assert_array_equal(out[0, :, 0], [100, 177, 254, 255])


def test_largest_face_by_landmark_box():
    faces = [face_points(0, 0, 10, 50), face_points(0, 0, 30, 20), face_points(5, 5, 25, 30)]
    assert geometry.largest_face(faces) == 1  # areas 500, 600, 500


# ---------------------------------------------------------------- decoding


def save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


def test_decode_modes(tmp_path):
    gray = load_rgb(save(Image.new("L", (40, 40), 77), tmp_path / "g.png"))
    assert gray.shape == (40, 40, 3) and gray.dtype == np.uint8 and (gray == 77).all()

    g16 = Image.fromarray(np.full((40, 40), 0x1234, np.uint16))
    assert (load_rgb(save(g16, tmp_path / "g16.png")) == 0x12).all()

    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., :3] = (10, 20, 30)
    rgba[:, :10, 3], rgba[:, 10:20, 3], rgba[:, 20:, 3] = 255, 128, 0
    out = load_rgb(save(Image.fromarray(rgba, "RGBA"), tmp_path / "a.png"))
    # the original's load_test_data: only fully opaque pixels are kept, the rest is white
    assert (out[:, :10] == (10, 20, 30)).all() and (out[:, 10:] == 255).all()

    cmyk = load_rgb(save(Image.new("CMYK", (40, 40), (0, 0, 0, 0)), tmp_path / "c.jpg", quality=95))
    assert (cmyk >= 250).all()


def test_decode_applies_exif_orientation(tmp_path):
    arr = np.zeros((40, 60, 3), np.uint8)
    arr[:, :30] = (255, 0, 0)  # left half red, right half blue
    arr[:, 30:] = (0, 0, 255)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = load_rgb(save(img, tmp_path / "o.png", exif=exif))
    assert out.shape == (60, 40, 3)
    assert tuple(out[5, 20]) == (255, 0, 0) and tuple(out[55, 20]) == (0, 0, 255)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: p.write_bytes(b"hello, not an image"), "not an image"),
        (lambda p: p.write_bytes(b""), "not an image"),
        (
            lambda p: p.write_bytes(encode_png(np.zeros((64, 64, 3), np.uint8))[:80]),
            "corrupt image",
        ),
        (lambda p: save(Image.new("RGB", (20, 50)), p), "image too small (20x50)"),
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: None, "file not found"),
    ],
)
def test_decode_errors(tmp_path, make, reason):
    path = tmp_path / "x.png"
    make(path)
    with pytest.raises(ImageError) as err:
        load_rgb(path)
    assert str(err.value).startswith(reason)


def test_write_atomic_leaves_no_partial_file(tmp_path):
    write_atomic(tmp_path / "a" / "f.bin", b"abc")
    assert (tmp_path / "a" / "f.bin").read_bytes() == b"abc"
    with pytest.raises(TypeError):
        write_atomic(tmp_path / "a" / "g.bin", "not bytes")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["f.bin"]


def test_discover_folders_files_and_globs(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/b.jpg", "d/sub/a.png", "d/.hidden.png", "x1.jpg", "x2.jpg"):
        (tmp_path / name).write_bytes(b"")
    found = discover([str(tmp_path / "d"), str(tmp_path / "x*.jpg"), str(tmp_path / "missing.png")])
    assert [rel for _, rel in found] == ["b.jpg", "missing.png", "sub/a.png", "x1.jpg", "x2.jpg"]


# ---------------------------------------------------------------- batch runs with stand-ins


class StubLandmarker:
    """Faces given as landmark boxes in the oriented photo's pixels."""

    box_height_scale = 1.0

    def __init__(self, *faces):
        self.faces = [face_points(*f) for f in faces]

    def __call__(self, image):
        return [f.copy() for f in self.faces]


def full_mask(face, landmarks):
    return np.full(face.shape[:2], 255, np.uint8)


def half_mask(face, landmarks):
    mask = np.zeros(face.shape[:2], np.uint8)
    mask[:, : face.shape[1] // 2] = 255
    return mask


@pytest.fixture()
def photo(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    path = tmp_path / "in" / "p.jpg"
    path.parent.mkdir()
    Image.fromarray(arr).save(path, quality=100)
    return path


def test_output_is_the_original_crop_on_white(tmp_path, photo):
    pre = Preprocessor(StubLandmarker((40, 40, 120, 100)), half_mask)
    summary = run(
        discover([str(photo.parent)]), tmp_path / "out", pre, progress=False, save_meta=True
    )
    assert (summary.done, summary.failed, summary.exit_code) == (1, 0, 0)
    out = load_rgb(tmp_path / "out" / "p.png")
    # eyes level: no rotation. h = 60, w = 80: top int(40 - 48) = -8, bottom int(118) = 118,
    # left int(16) = 16, right int(144) = 144; 126 < 128 so top -= 1, bottom = 119
    src = load_rgb(photo)
    assert out.shape == (129, 129, 3)
    np.testing.assert_array_equal(
        out[9:, :64], src[0:120, 16:80]
    )  # the kept half, rows 0..119 of the photo
    assert (out[:9] == 255).all() and (
        out[:, 65:] == 255
    ).all()  # above the photo, and the masked half
    meta = json.loads((tmp_path / "out" / "p.json").read_text())
    assert meta["crop_box"] == [16, -9, 144, 119] and meta["angle_degrees"] == 0.0
    np.testing.assert_allclose(meta["landmarks"], face_points(40, 40, 120, 100))


def test_several_faces_keep_the_largest_or_all(tmp_path, photo):
    stub = StubLandmarker((10, 10, 40, 40), (60, 40, 140, 100))
    run(
        [(photo, "p.jpg")],
        tmp_path / "one",
        Preprocessor(stub, full_mask),
        progress=False,
        save_meta=True,
    )
    assert json.loads((tmp_path / "one" / "p.json").read_text())["crop_box"] == [36, -9, 164, 119]
    summary = run(
        [(photo, "p.jpg")],
        tmp_path / "all",
        Preprocessor(stub, full_mask, all_faces=True),
        progress=False,
    )
    assert summary.done == 1
    assert sorted(p.name for p in (tmp_path / "all").glob("*.png")) == ["p_0.png", "p_1.png"]
    assert load_rgb(tmp_path / "all" / "p_0.png").shape == (129, 129, 3)  # largest first
    # w = h = 30: top int(10 - 24) = -14, bottom int(49) = 49, left 1, right 49: side 63 + 1
    assert load_rgb(tmp_path / "all" / "p_1.png").shape == (64, 64, 3)


def test_bad_inputs_never_stop_the_run(tmp_path, photo):
    d = photo.parent
    (d / "notes.txt").write_text("not an image")
    (d / "broken.jpg").write_bytes(photo.read_bytes()[:200])
    Image.new("RGB", (10, 10)).save(d / "tiny.png")
    Image.new("I;16", (64, 64), 3000).save(d / "deep.png")
    Image.new("RGBA", (64, 64), (1, 2, 3, 255)).save(d / "alpha.png")
    Image.new("CMYK", (64, 64), (0, 50, 0, 0)).save(d / "cmyk.jpg")
    pre = Preprocessor(StubLandmarker((10, 10, 50, 50)), full_mask)
    summary = run(discover([str(d)]), tmp_path / "out", pre, progress=False)
    report = {
        r["name"]: r
        for r in map(json.loads, (tmp_path / "out" / "report.jsonl").read_text().splitlines())
    }
    assert {n: r["status"] for n, r in report.items()} == {
        "alpha.png": "done",
        "broken.jpg": "failed",
        "cmyk.jpg": "done",
        "deep.png": "done",
        "notes.txt": "failed",
        "p.jpg": "done",
        "tiny.png": "failed",
    }
    assert report["notes.txt"]["reason"] == "not an image"
    assert report["tiny.png"]["reason"] == "image too small (10x10)"
    assert report["broken.jpg"]["reason"].startswith("corrupt image")
    assert (summary.done, summary.failed, summary.exit_code) == (4, 3, 1)
    assert (
        summary.line()
        == "7 inputs: 4 done, 3 failed [corrupt image: 1, not an image: 1, image too small: 1]"
    )


def test_no_face_and_exit_codes(tmp_path, photo):
    summary = run(
        [(photo, "p.jpg")],
        tmp_path / "out",
        Preprocessor(StubLandmarker(), full_mask),
        progress=False,
    )
    assert (summary.failed, summary.exit_code) == (1, 2)
    rec = json.loads((tmp_path / "out" / "report.jsonl").read_text())
    assert rec == {
        "name": "p.jpg",
        "input": str(photo),
        "status": "failed",
        "reason": "no face found",
    }
    assert not list((tmp_path / "out").glob("*.png"))
    assert run([], tmp_path / "empty", as_is, progress=False).exit_code == 2


def test_tfrecords_without_tensorflow_is_refused_before_any_photo(
    tmp_path, photo, capsys, monkeypatch
):
    """--tfrecords with the preprocess extra's TensorFlow absent: exit 2 naming the extra,
    before a photo is processed."""
    import builtins
    import sys

    from preprocessing.__main__ import main

    real_import = builtins.__import__

    def no_tensorflow(name, *args, **kwargs):
        if name.partition(".")[0] in ("tensorflow", "tensorflow_datasets"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "preprocessing.tfrecords", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_tensorflow)
    (tmp_path / "raw" / "trainA").mkdir(parents=True)
    (tmp_path / "raw" / "trainA" / "a.jpg").write_bytes(photo.read_bytes())
    argv = ["--data_path", str(tmp_path / "raw"), "--save_path", str(tmp_path / "out")]
    assert main([*argv, "--tfrecords", "--no_progress"]) == 2
    err = capsys.readouterr().err
    assert "error: --tfrecords: TFRecords (preprocessing.tfrecords) needs tensorflow-cpu" in err
    assert "pip install 'p2c-jax[preprocess]'" in err
    assert not (tmp_path / "out").exists()


def test_rerun_skips_what_is_done(tmp_path, photo):
    (photo.parent / "bad.jpg").write_bytes(b"x")
    out = tmp_path / "out"
    first = run(discover([str(photo.parent)]), out, as_is, progress=False)
    stamp = (out / "p.png").stat().st_mtime_ns
    second = run(discover([str(photo.parent)]), out, as_is, progress=False)
    assert (first.done, first.skipped, second.done, second.skipped, second.failed) == (
        1,
        0,
        0,
        1,
        1,
    )
    assert (out / "p.png").stat().st_mtime_ns == stamp
    (out / "p.png").unlink()
    assert run(discover([str(photo.parent)]), out, as_is, progress=False).done == 1


def test_name_collisions_keep_both(tmp_path, photo):
    Image.open(photo).save(photo.with_suffix(".png"))
    run(discover([str(photo.parent)]), tmp_path / "out", as_is, progress=False)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["p.jpg.png", "p.png.png"]


def test_report_keeps_what_finished_before_a_crash(tmp_path, photo):
    """report.jsonl is written line by line: a run that dies on its third input (here an
    interrupt the runner does not catch) leaves the first two recorded, and a re-run skips
    them."""
    d = photo.parent
    for i in range(4):
        (d / f"p{i}.png").write_bytes(photo.read_bytes())
    calls = []

    def process(image):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return as_is(image)

    items = discover([str(d / f"p{i}.png") for i in range(4)])
    with pytest.raises(KeyboardInterrupt):
        run(items, tmp_path / "out", process, progress=False)
    lines = [json.loads(x) for x in (tmp_path / "out" / "report.jsonl").read_text().splitlines()]
    assert [(r["name"], r["status"]) for r in lines] == [("p0.png", "done"), ("p1.png", "done")]
    summary = run(items, tmp_path / "out", as_is, progress=False)
    assert (summary.skipped, summary.done) == (2, 2)

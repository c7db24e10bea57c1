"""preprocessing backends: dlib on real faces (framing against the original's aligned
photos), the face-alignment adapter with a stand-in network, GrabCut, the original's
frozen-graph segmenter on a stand-in graph, and the CLI end to end."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
from helpers import DATA, ci_required
from helpers.ci_required import require
from PIL import Image

from preprocessing import geometry
from preprocessing.__main__ import main
from preprocessing.io import load_rgb
from preprocessing.landmarks import FaceAlignmentLandmarker
from preprocessing.pipeline import Preprocessor
from preprocessing.segmentation import GrabCutSegmenter, probability_to_mask

IMAGES = DATA / "images"
needs_dlib = ci_required.needs_dlib()


@pytest.fixture(scope="module")
def dlib_landmarker():
    from preprocessing.landmarks import DlibLandmarker

    return DlibLandmarker()


def astronaut() -> np.ndarray:
    data = require("skimage.data", "the test extra (scikit-image)")
    return data.astronaut()


def assert_one_level_face(landmarker, image: np.ndarray) -> np.ndarray:
    faces = landmarker(image)
    assert len(faces) == 1
    out = Preprocessor(landmarker, GrabCutSegmenter())(image)
    assert len(out) == 1
    again = landmarker(out[0].image)
    assert len(again) == 1
    assert abs(np.degrees(geometry.eye_angle(again[0]))) < 1.0
    return out[0].image


@needs_dlib
def test_astronaut(dlib_landmarker):
    img = astronaut()
    face = assert_one_level_face(dlib_landmarker, img)
    meta = Preprocessor(dlib_landmarker, GrabCutSegmenter())(img)[0].meta
    assert face.shape == (meta["crop_box"][3] - meta["crop_box"][1] + 1,) * 2 + (3,)
    assert 160 <= face.shape[0] <= 185  # about 2.1 x 0.9 x the landmark box height (91 px)
    assert (face[:3, :3] == 255).all()  # background whitened in the top corners


@needs_dlib
def test_photo_test_jpg(dlib_landmarker):
    face = assert_one_level_face(dlib_landmarker, load_rgb(IMAGES / "photo_test.jpg"))
    assert 1100 <= face.shape[0] <= 1250  # about 2.1 x 0.9 x the landmark box height (626 px)


@needs_dlib
@pytest.mark.parametrize("n", [1, 2, 3])
def test_framing_matches_the_originals_aligned_photos(dlib_landmarker, n):
    """Re-aligning an aligned 256 x 256 photo of the original must give back (about) the whole photo."""
    img = load_rgb(IMAGES / f"aligned_photo_{n}.png")
    faces = dlib_landmarker(img)
    assert len(faces) == 1
    a = geometry.align(img.shape, faces[0], dlib_landmarker.box_height_scale)
    left, top, right, bottom = a.box
    assert abs(a.rotation.degrees) < 1.0
    assert abs((right - left + 1) - 256) <= 0.04 * 256  # measured: 252, 252, 264
    assert (
        abs((left + right) / 2 - 127.5) <= 0.03 * 256
        and abs((top + bottom) / 2 - 127.5) <= 0.03 * 256
    )


# ---------------------------------------------------------------- face-alignment adapter


class StandInFAN:
    """Stands in for face_alignment.FaceAlignment (whose network downloads its weights)."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs
        self.preds = None

    def get_landmarks(self, image):
        return self.preds


def test_face_alignment_adapter_builds_the_originals_model(monkeypatch):
    module = types.ModuleType("face_alignment")
    module.LandmarksType = types.SimpleNamespace(TWO_D="2D")
    module.FaceAlignment = StandInFAN
    monkeypatch.setitem(sys.modules, "face_alignment", module)
    lm = FaceAlignmentLandmarker(device="cpu")
    assert lm.fa.args == ("2D",) and lm.fa.kwargs == {"device": "cpu", "face_detector": "dlib"}
    assert lm(np.zeros((64, 64, 3), np.uint8)) == []  # face_alignment answers None for no face
    pts = np.random.default_rng(1).uniform(10, 50, (68, 2)).astype(np.float32)
    lm.fa.preds = [pts]
    (got,) = lm(np.zeros((64, 64, 3), np.uint8))
    assert got.dtype == np.float64 and np.array_equal(got, pts.astype(np.float64))
    lm.fa.preds = [pts[:5]]
    with pytest.raises(ValueError, match="expected 68 landmarks, got 5"):
        lm(np.zeros((64, 64, 3), np.uint8))


def test_face_alignment_adapter_feeds_the_original_geometry():
    fa = StandInFAN()
    pts = np.full((68, 2), 60.0)
    pts[0], pts[16], pts[19], pts[8] = (40, 70), (120, 70), (80, 40), (80, 100)
    pts[36], pts[45] = (60, 55), (100, 55)
    fa.preds = [pts]
    img = np.random.default_rng(2).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    (out,) = Preprocessor(
        FaceAlignmentLandmarker(fa=fa), lambda f, lm: np.full(f.shape[:2], 255, np.uint8)
    )(img)
    assert out.meta["crop_box"] == [16, -9, 144, 119]  # as hand-computed in test_pipeline.py
    np.testing.assert_array_equal(out.image[9:, :], geometry.crop(img, (16, -9, 144, 119))[9:])


# ---------------------------------------------------------------- segmentation


def test_grabcut_separates_a_head_from_the_background():
    h = w = 200
    yy, xx = np.mgrid[:h, :w]
    head = (xx - 100) ** 2 / 45**2 + (yy - 95) ** 2 / 60**2 <= 1
    img = np.where(head[..., None], np.uint8(90), np.uint8(225)).astype(np.uint8)
    img = np.ascontiguousarray(np.broadcast_to(img, (h, w, 3)))
    landmarks = np.array([[70, 80], [130, 80], [100, 140], [100, 70]] * 17, np.float64)
    mask = GrabCutSegmenter()(img, landmarks)
    assert mask.shape == (h, w) and mask.dtype == np.uint8
    assert mask[95, 100] >= 254 and mask[5, 5] == 0 and mask[5, 195] == 0
    assert (mask[head] > 127).mean() > 0.95
    assert (mask[~head & (yy < 120)] > 127).mean() < 0.05


def test_probability_to_mask_is_the_originals_output_transform():
    prob = np.array([[0.0, 1.0], [0.5, 0.25]], np.float32)
    np.testing.assert_array_equal(probability_to_mask(prob, (2, 2, 3)), [[0, 255], [127, 63]])


def test_frozen_graph_segmenter_contract(tmp_path):
    tf = require("tensorflow", "the test extra (tensorflow-cpu)")
    from preprocessing.segmentation import FrozenGraphSegmenter

    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, (None, 384, 384, 3), name="input_1")
        with tf.name_scope("sigmoid"):
            tf.sigmoid(10.0 * (x[..., :1] - 0.5), name="Sigmoid")
    path = tmp_path / "seg_model_384.pb"
    path.write_bytes(graph.as_graph_def().SerializeToString())
    face = np.zeros((300, 300, 3), np.uint8)
    face[:, 150:, 0] = 255
    mask = FrozenGraphSegmenter(path)(face)
    assert mask.shape == (300, 300)
    # sigmoid(-5) * 255 = 1.7 -> 1 ; sigmoid(5) * 255 = 253.3 -> 253
    assert (mask[:, :140] == 1).all() and (mask[:, 160:] == 253).all()


# ---------------------------------------------------------------- CLI


@needs_dlib
def test_cli_end_to_end(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(astronaut()).save(src / "astronaut.jpg", quality=95)
    (src / "empty.jpg").write_bytes(b"")
    out = tmp_path / "out"
    argv = ["--data_path", str(src), "--save_path", str(out), "--save_meta"]
    argv += ["--direct_running_mode", "in_memory"]  # one process (a worker per core: slow tier)
    assert main(argv) == 1
    assert "2 inputs: 1 done, 1 failed [not an image: 1]" in capsys.readouterr().err
    meta = json.loads((out / "astronaut.json").read_text())
    assert len(meta["landmarks"]) == 68 and abs(meta["angle_degrees"]) < 10
    assert load_rgb(out / "astronaut.png").shape[0] == meta["crop_box"][2] - meta["crop_box"][0] + 1

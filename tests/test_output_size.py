"""The output size rule: a generator runs at 256 x 256 (the original's test.py and ONNX file)
whatever file holds it, unless ``img_size`` / ``--img_size`` says otherwise; a full generator
runs only at its own size."""

from __future__ import annotations

import dataclasses
import logging

import cv2
import numpy as np
import pytest

from p2c_jax.cli.infer import main as infer_main
from p2c_jax.inference import FACE_SIZE, load_generator
from p2c_jax.nn.models import NetSpec
from p2c_jax.train.state import fresh_nets
from p2c_jax.weights.checkpoint import CheckpointError, save_nets
from p2c_jax.weights.convert import save_torch

LIGHT_96 = NetSpec("generator", 4, img_size=96, light=True)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """One light generator trained at 96 x 96, as our checkpoint and as an original .pt."""
    root = tmp_path_factory.mktemp("size")
    state = fresh_nets({"genA2B": LIGHT_96}, 0)["genA2B"]
    save_nets(root / "ckpt", {"genA2B": (LIGHT_96, state)})
    save_torch(root / "w.pt", {"genA2B": (LIGHT_96, state)})
    return root


def test_every_file_runs_at_256_by_default(sources, caplog):
    with caplog.at_level(logging.WARNING):
        from_ckpt = load_generator(sources / "ckpt")
    assert "trained at 96 x 96 and runs at 256 x 256" in caplog.text
    assert "--img_size 96" in caplog.text
    caplog.clear()
    from_pt = load_generator(sources / "w.pt")  # a .pt records no training size: no warning
    assert caplog.text == ""
    assert from_ckpt.spec == from_pt.spec == dataclasses.replace(LIGHT_96, img_size=FACE_SIZE)


def test_img_size_runs_it_at_another_size(sources, caplog):
    for src in ("ckpt", "w.pt"):
        assert load_generator(sources / src, img_size=96).spec.img_size == 96
        assert load_generator(sources / src, img_size=128).spec.img_size == 128
    assert "runs at" not in caplog.text
    with pytest.raises(CheckpointError, match="multiple of 16"):
        load_generator(sources / "ckpt", img_size=100)


def test_a_full_generator_runs_at_its_own_size(tmp_path):
    full = NetSpec("generator", 4, img_size=32, light=False)
    save_nets(tmp_path / "full", {"genA2B": (full, fresh_nets({"genA2B": full}, 0)["genA2B"])})
    assert load_generator(tmp_path / "full").spec.img_size == 32
    assert load_generator(tmp_path / "full", img_size=32).spec.img_size == 32
    with pytest.raises(CheckpointError, match="not light: its FC layer fixes img_size 32"):
        load_generator(tmp_path / "full", img_size=64)


def test_infer_gives_one_size_from_either_file(sources, tmp_path):
    """p2c-infer on an aligned face: the checkpoint and the .pt of the same weights write the
    same 256 x 256 cartoon; --img_size 96 writes a 96 x 96 one."""
    face = np.random.default_rng(0).integers(0, 256, (300, 300, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "face.png"), face)
    out = {}
    for name, extra in (("ckpt", []), ("w.pt", []), ("ckpt", ["--img_size", "96"])):
        dst = tmp_path / f"{name}{len(extra)}"
        args = [str(tmp_path / "face.png"), "-o", str(dst), "--weights", str(sources / name)]
        assert infer_main([*args, "--no_preprocess", "--no_progress", *extra]) == 0
        out[dst.name] = cv2.imread(str(dst / "face.png"))
    assert out["ckpt0"].shape == out["w.pt0"].shape == (256, 256, 3)
    np.testing.assert_array_equal(out["ckpt0"], out["w.pt0"])
    assert out["ckpt2"].shape == (96, 96, 3)

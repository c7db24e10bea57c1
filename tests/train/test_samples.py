"""Sample grids against the original's recipe re-done in BGR with OpenCV, and the TensorBoard writer."""

from __future__ import annotations

from io import BytesIO

import cv2
import numpy as np
import pytest
from helpers.events import read_events
from PIL import Image

from p2c_jax.train import samples
from p2c_jax.train.summary import SummaryWriter

S = 16


def _column_inputs(rng: np.random.Generator) -> list[np.ndarray]:
    img = lambda: rng.uniform(-1, 1, (S, S, 3)).astype(np.float32)  # noqa: E731
    heat = lambda: rng.normal(size=(S // 4, S // 4, 1)).astype(np.float32)  # noqa: E731
    return [img(), heat(), img(), heat(), img(), heat(), img()]


def _original_column_bgr(real, h_aa, aa, h_ab, ab, h_aba, aba) -> np.ndarray:
    """The original's recipe: BGR images (x * 0.5 + 0.5) and cam() heatmaps, stacked vertically."""

    def cam(x):
        x = x - np.min(x)
        u8 = np.uint8(255 * (x / np.max(x)))
        return cv2.applyColorMap(cv2.resize(u8, (S, S)), cv2.COLORMAP_JET) / 255.0

    bgr = lambda x: cv2.cvtColor(x * 0.5 + 0.5, cv2.COLOR_RGB2BGR)  # noqa: E731
    return np.concatenate(
        [bgr(real), cam(h_aa), bgr(aa), cam(h_ab), bgr(ab), cam(h_aba), bgr(aba)], 0
    )


def test_grid_matches_the_original_file(tmp_path):
    rng = np.random.default_rng(0)
    inputs = [_column_inputs(rng) for _ in range(3)]
    grid = samples.sample_grid([samples.sample_column(*x) for x in inputs])
    assert grid.shape == (7 * S, 3 * S, 3) and grid.dtype == np.uint8
    original = np.concatenate([_original_column_bgr(*x) for x in inputs], 1)
    cv2.imwrite(str(tmp_path / "original.png"), original * 255.0)  # as the original saves it
    path = samples.sample_path(tmp_path, "demo", "A2B", 1200)
    samples.save_grid(path, grid)
    assert path == tmp_path / "demo" / "img" / "A2B_0001200.png"
    np.testing.assert_array_equal(cv2.imread(str(path)), cv2.imread(str(tmp_path / "original.png")))


def test_known_pixels():
    real = np.full((S, S, 3), 0.2, np.float32)  # denorm 0.6 -> 153
    flat = np.zeros((S // 4, S // 4, 1), np.float32)  # constant map -> JET(0), dark blue
    peak = np.zeros((S // 4, S // 4, 1), np.float32)
    peak[0, 0] = 3.0  # corner peak -> JET(255), dark red, at the upsampled corner
    col = samples.sample_grid([samples.sample_column(real, flat, real, peak, real, flat, real)])
    assert col.shape == (7 * S, S, 3)
    for row in (0, 2, 4, 6):
        assert (col[row * S : (row + 1) * S] == 153).all()
    np.testing.assert_array_equal(col[S : 2 * S].reshape(-1, 3), np.tile([0, 0, 128], (S * S, 1)))
    np.testing.assert_array_equal(col[3 * S, 0], [128, 0, 0])
    np.testing.assert_array_equal(col[4 * S - 1, S - 1], [0, 0, 128])


def test_column_rejects_wrong_image_shapes():
    x = _column_inputs(np.random.default_rng(1))
    x[2] = x[2][:, :-1]
    with pytest.raises(ValueError, match="must be"):
        samples.sample_column(*x)


def test_summary_writer_writes_readable_events(tmp_path):
    image = np.random.default_rng(2).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    writer = SummaryWriter(tmp_path / "logs")
    writer.scalars(5, {"d_loss": np.float32(1.25), "g_loss": 3.5})
    writer.image(5, "A2B", image)
    writer.flush()
    writer.close()
    [path] = list((tmp_path / "logs").glob("events.out.tfevents.*"))
    values = [(e.step, v) for e in read_events(path) for v in e.summary.value]
    scalars = {v.tag: (step, v.simple_value) for step, v in values if v.HasField("simple_value")}
    assert scalars == {"d_loss": (5, 1.25), "g_loss": (5, 3.5)}
    [(step, img)] = [(step, v.image) for step, v in values if v.HasField("image")]
    assert (step, img.height, img.width) == (5, 12, 20)
    np.testing.assert_array_equal(np.asarray(Image.open(BytesIO(img.encoded_image_string))), image)

    off = SummaryWriter(tmp_path / "off", enabled=False)
    off.scalars(1, {"x": 1.0})
    off.close()
    assert not (tmp_path / "off").exists()

"""Our PyTorch port has exactly the original checkpoints' keys, shapes and dtypes."""

from __future__ import annotations

import pytest
import torch

from p2c_jax.pytorch import nets as torch_port


def _read_layout(path, net: str | None = None) -> list[tuple[str, tuple, str]]:
    rows = []
    for line in path.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        cols = line.split("\t")
        if net is not None:
            if cols[0] != net:
                continue
            cols = cols[1:]
        key, shape, dtype = cols
        rows.append((key, tuple(int(s) for s in shape.strip("()").split(",") if s.strip()), dtype))
    return rows


def _layout_of(model: torch.nn.Module) -> list[tuple[str, tuple, str]]:
    return [
        (k, tuple(v.shape), str(v.dtype).removeprefix("torch."))
        for k, v in model.state_dict().items()
    ]


@pytest.mark.parametrize(
    "net,make",
    [
        ("genA2B", lambda: torch_port.ResnetGenerator(32, 256, light=True)),
        ("genB2A", lambda: torch_port.ResnetGenerator(32, 256, light=True)),
        ("disGA", lambda: torch_port.Discriminator(3, 32, 7)),
        ("disGB", lambda: torch_port.Discriminator(3, 32, 7)),
        ("disLA", lambda: torch_port.Discriminator(3, 32, 5)),
        ("disLB", lambda: torch_port.Discriminator(3, 32, 5)),
    ],
)
def test_photo2cartoon_weights_layout(data_dir, net, make):
    want = _read_layout(data_dir / "reference" / "photo2cartoon_weights.layout.tsv", net)
    assert len(want) > 20
    assert _layout_of(make()) == want


def test_full_generator_layout(data_dir):
    want = _read_layout(data_dir / "reference" / "generator_full_ngf32_256.layout.tsv")
    with torch.device("meta"):
        model = torch_port.ResnetGenerator(32, 256, light=False)
    assert _layout_of(model) == want


def test_mobilefacenet_layout(data_dir):
    want = _read_layout(data_dir / "reference" / "model_mobilefacenet.layout.tsv")
    assert _layout_of(torch_port.MobileFaceNet(512)) == want

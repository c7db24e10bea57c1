"""Our PyTorch port of the original photo2cartoon networks (NCHW), the reference we test against.

Written from the original architecture so that ``state_dict()`` keys, shapes and dtypes equal the
original checkpoints' (``tests/pytorch/test_nets.py`` checks them against the layout files). It is
used by the parity tests, the comparison tools (``infer.py --compare_torch``) and the benchmarks.
Needs the ``torch`` extra.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-5


def _pad_conv(cin: int, cout: int, k: int, stride: int = 1) -> list[nn.Module]:
    return [nn.ReflectionPad2d(k // 2), nn.Conv2d(cin, cout, k, stride, 0, bias=False)]


class ConvBlock(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.dim_out = dim_out

        def stage(cin: int, cout: int, k: int) -> nn.Sequential:
            pad = [nn.ReflectionPad2d(1)] if k == 3 else []
            return nn.Sequential(
                nn.InstanceNorm2d(cin), nn.ReLU(), *pad, nn.Conv2d(cin, cout, k, 1, bias=False)
            )

        self.ConvBlock1 = stage(dim_in, dim_out // 2, 3)
        self.ConvBlock2 = stage(dim_out // 2, dim_out // 4, 3)
        self.ConvBlock3 = stage(dim_out // 4, dim_out // 4, 3)
        self.ConvBlock4 = stage(dim_in, dim_out, 1)

    def forward(self, x):
        x1 = self.ConvBlock1(x)
        x2 = self.ConvBlock2(x1)
        x3 = self.ConvBlock3(x2)
        residual = x if x.shape[1] == self.dim_out else self.ConvBlock4(x)
        return residual + torch.cat([x1, x2, x3], 1)


class HourGlassBlock(nn.Module):
    NAMES = ("1_1", "1_2", "2_1", "2_2", "3_1", "3_2", "4_1", "4_2", "5", "6", "7", "8", "9")

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        for name in self.NAMES:
            setattr(
                self, f"ConvBlock{name}", ConvBlock(dim_in if name == "1_1" else dim_out, dim_out)
            )

    def forward(self, x):
        skips, down = [], x
        for level in range(1, 5):
            skips.append(getattr(self, f"ConvBlock{level}_1")(down))
            down = getattr(self, f"ConvBlock{level}_2")(F.avg_pool2d(down, 2))
        up = self.ConvBlock5(down)
        for name, skip in zip(("6", "7", "8", "9"), reversed(skips)):
            up = skip + F.interpolate(
                getattr(self, f"ConvBlock{name}")(up), scale_factor=2, mode="nearest"
            )
        return up


class HourGlass(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, use_res: bool = True):
        super().__init__()
        self.use_res = use_res
        self.HG = nn.Sequential(
            HourGlassBlock(dim_in, dim_out),
            ConvBlock(dim_out, dim_out),
            nn.Conv2d(dim_out, dim_out, 1, bias=False),
            nn.InstanceNorm2d(dim_out),
            nn.ReLU(),
        )
        self.Conv1 = nn.Conv2d(dim_out, 3, 1)
        if use_res:
            self.Conv2 = nn.Conv2d(dim_out, dim_out, 1)
            self.Conv3 = nn.Conv2d(3, dim_out, 1)

    def forward(self, x):
        ll = self.HG(x)
        out = self.Conv1(ll)
        return x + self.Conv2(ll) + self.Conv3(out) if self.use_res else out


def _lin_mix(x, rho):
    in_mean, in_var = x.mean(dim=[2, 3], keepdim=True), x.var(dim=[2, 3], keepdim=True)
    ln_mean, ln_var = x.mean(dim=[1, 2, 3], keepdim=True), x.var(dim=[1, 2, 3], keepdim=True)
    return rho * (x - in_mean) / torch.sqrt(in_var + EPS) + (1 - rho) * (x - ln_mean) / torch.sqrt(
        ln_var + EPS
    )


class adaLIN(nn.Module):  # noqa: N801
    def __init__(self, c: int):
        super().__init__()
        self.rho = nn.Parameter(torch.full((1, c, 1, 1), 0.9))

    def forward(self, x, gamma, beta):
        return _lin_mix(x, self.rho) * gamma[:, :, None, None] + beta[:, :, None, None]


class LIN(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.rho = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.ones(1, c, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, x):
        return _lin_mix(x, self.rho) * self.gamma + self.beta


class SoftAdaLIN(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.norm = adaLIN(c)
        self.w_gamma = nn.Parameter(torch.zeros(1, c))
        self.w_beta = nn.Parameter(torch.zeros(1, c))
        self.c_gamma = nn.Sequential(nn.Linear(c, c), nn.ReLU(), nn.Linear(c, c))
        self.c_beta = nn.Sequential(nn.Linear(c, c), nn.ReLU(), nn.Linear(c, c))
        self.s_gamma = nn.Linear(c, c)
        self.s_beta = nn.Linear(c, c)

    def forward(self, x, content, style):
        gamma = (1 - self.w_gamma) * self.s_gamma(style) + self.w_gamma * self.c_gamma(content)
        beta = (1 - self.w_beta) * self.s_beta(style) + self.w_beta * self.c_beta(content)
        return self.norm(x, gamma, beta)


class ResnetBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            *_pad_conv(dim, dim, 3),
            nn.InstanceNorm2d(dim),
            nn.ReLU(),
            *_pad_conv(dim, dim, 3),
            nn.InstanceNorm2d(dim),
        )

    def forward(self, x):
        return x + self.conv_block(x)


class ResnetSoftAdaLINBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, 1, 0, bias=False)
        self.norm1 = SoftAdaLIN(dim)
        self.conv2 = nn.Conv2d(dim, dim, 3, 1, 0, bias=False)
        self.norm2 = SoftAdaLIN(dim)

    def forward(self, x, content, style):
        out = F.relu(self.norm1(self.conv1(F.pad(x, [1] * 4, mode="reflect")), content, style))
        out = self.norm2(self.conv2(F.pad(out, [1] * 4, mode="reflect")), content, style)
        return out + x


class ResnetGenerator(nn.Module):
    def __init__(self, ngf: int = 64, img_size: int = 256, light: bool = False):
        super().__init__()
        self.light = light
        c = ngf * 4
        self.ConvBlock1 = nn.Sequential(*_pad_conv(3, ngf, 7), nn.InstanceNorm2d(ngf), nn.ReLU())
        self.HourGlass1 = HourGlass(ngf, ngf)
        self.HourGlass2 = HourGlass(ngf, ngf)
        self.DownBlock1 = nn.Sequential(
            *_pad_conv(ngf, ngf * 2, 3, 2), nn.InstanceNorm2d(ngf * 2), nn.ReLU()
        )
        self.DownBlock2 = nn.Sequential(
            *_pad_conv(ngf * 2, c, 3, 2), nn.InstanceNorm2d(c), nn.ReLU()
        )
        for i in range(1, 5):
            setattr(self, f"EncodeBlock{i}", ResnetBlock(c))
        self.gap_fc = nn.Linear(c, 1)
        self.gmp_fc = nn.Linear(c, 1)
        self.conv1x1 = nn.Conv2d(2 * c, c, 1)
        fc_in = c if light else (img_size // 4) ** 2 * c
        self.FC = nn.Sequential(nn.Linear(fc_in, c), nn.ReLU(), nn.Linear(c, c), nn.ReLU())
        for i in range(1, 5):
            setattr(self, f"DecodeBlock{i}", ResnetSoftAdaLINBlock(c))
        self.UpBlock1 = nn.Sequential(
            nn.Upsample(scale_factor=2), *_pad_conv(c, ngf * 2, 3), LIN(ngf * 2), nn.ReLU()
        )
        self.UpBlock2 = nn.Sequential(
            nn.Upsample(scale_factor=2), *_pad_conv(ngf * 2, ngf, 3), LIN(ngf), nn.ReLU()
        )
        self.HourGlass3 = HourGlass(ngf, ngf)
        self.HourGlass4 = HourGlass(ngf, ngf, False)
        self.ConvBlock2 = nn.Sequential(*_pad_conv(3, 3, 7), nn.Tanh())

    def forward(self, x):
        x = self.HourGlass2(self.HourGlass1(self.ConvBlock1(x)))
        x = self.DownBlock2(self.DownBlock1(x))
        content = []
        for i in range(1, 5):
            x = getattr(self, f"EncodeBlock{i}")(x)
            content.append(x.mean(dim=[2, 3]))
        cam_logit = torch.cat([self.gap_fc(x.mean(dim=[2, 3])), self.gmp_fc(x.amax(dim=[2, 3]))], 1)
        x = torch.cat(
            [
                x * self.gap_fc.weight[0][None, :, None, None],
                x * self.gmp_fc.weight[0][None, :, None, None],
            ],
            1,
        )
        x = F.relu(self.conv1x1(x))
        heatmap = x.sum(dim=1, keepdim=True)
        style = self.FC(x.mean(dim=[2, 3]) if self.light else x.flatten(1))
        for i, feats in zip(range(1, 5), reversed(content)):
            x = getattr(self, f"DecodeBlock{i}")(x, feats, style)
        x = self.HourGlass4(self.HourGlass3(self.UpBlock2(self.UpBlock1(x))))
        return self.ConvBlock2(x), cam_logit, heatmap


class Discriminator(nn.Module):
    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 5):
        super().__init__()
        sn = nn.utils.spectral_norm

        def down(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [
                nn.ReflectionPad2d(1),
                sn(nn.Conv2d(cin, cout, 4, stride, 0)),
                nn.LeakyReLU(0.2),
            ]

        model = down(input_nc, ndf, 2)
        for i in range(1, n_layers - 2):
            model += down(ndf * 2 ** (i - 1), ndf * 2**i, 2)
        model += down(ndf * 2 ** (n_layers - 3), ndf * 2 ** (n_layers - 2), 1)
        c = ndf * 2 ** (n_layers - 2)
        self.gap_fc = sn(nn.Linear(c, 1, bias=False))
        self.gmp_fc = sn(nn.Linear(c, 1, bias=False))
        self.conv1x1 = nn.Conv2d(2 * c, c, 1)
        self.pad = nn.ReflectionPad2d(1)
        self.conv = sn(nn.Conv2d(c, 1, 4, 1, 0, bias=False))
        self.model = nn.Sequential(*model)

    def forward(self, x):
        x = self.model(x)
        cam_logit = torch.cat([self.gap_fc(x.mean(dim=[2, 3])), self.gmp_fc(x.amax(dim=[2, 3]))], 1)
        # the CAM weighting reads the raw weight_orig, as the original's parameters()[0] does
        x = torch.cat(
            [
                x * self.gap_fc.weight_orig[0][None, :, None, None],
                x * self.gmp_fc.weight_orig[0][None, :, None, None],
            ],
            1,
        )
        x = F.leaky_relu(self.conv1x1(x), 0.2)
        heatmap = x.sum(dim=1, keepdim=True)
        return self.conv(self.pad(x)), cam_logit, heatmap


class Linear_block(nn.Module):  # noqa: N801
    def __init__(self, cin, cout, kernel=1, stride=1, padding=0, groups=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return self.bn(self.conv(x))


class Conv_block(Linear_block):  # noqa: N801
    def __init__(self, cin, cout, kernel=1, stride=1, padding=0, groups=1):
        super().__init__(cin, cout, kernel, stride, padding, groups)
        self.prelu = nn.PReLU(cout)

    def forward(self, x):
        return self.prelu(super().forward(x))


class Depth_Wise(nn.Module):  # noqa: N801
    def __init__(self, cin, cout, residual=False, stride=2, groups=1):
        super().__init__()
        self.conv = Conv_block(cin, groups)
        self.conv_dw = Conv_block(groups, groups, 3, stride, 1, groups)
        self.project = Linear_block(groups, cout)
        self.residual = residual

    def forward(self, x):
        out = self.project(self.conv_dw(self.conv(x)))
        return x + out if self.residual else out


class Residual(nn.Module):
    def __init__(self, c, num_block, groups):
        super().__init__()
        self.model = nn.Sequential(*[Depth_Wise(c, c, True, 1, groups) for _ in range(num_block)])

    def forward(self, x):
        return self.model(x)


class MobileFaceNet(nn.Module):
    def __init__(self, embedding_size: int = 512):
        super().__init__()
        self.conv1 = Conv_block(3, 64, 3, 2, 1)
        self.conv2_dw = Conv_block(64, 64, 3, 1, 1, groups=64)
        self.conv_23 = Depth_Wise(64, 64, groups=128)
        self.conv_3 = Residual(64, 4, 128)
        self.conv_34 = Depth_Wise(64, 128, groups=256)
        self.conv_4 = Residual(128, 6, 256)
        self.conv_45 = Depth_Wise(128, 128, groups=512)
        self.conv_5 = Residual(128, 2, 256)
        self.conv_6_sep = Conv_block(128, 512)
        self.conv_6_dw = Linear_block(512, 512, 7, groups=512)
        self.linear = nn.Linear(512, embedding_size, bias=False)
        self.bn = nn.BatchNorm1d(embedding_size)

    def forward(self, x):
        for name in (
            "conv1",
            "conv2_dw",
            "conv_23",
            "conv_3",
            "conv_34",
            "conv_4",
            "conv_45",
            "conv_5",
            "conv_6_sep",
            "conv_6_dw",
        ):
            x = getattr(self, name)(x)
        out = self.bn(self.linear(x.flatten(1)))
        return out / out.norm(dim=1, keepdim=True)


def face_crop_112(x: torch.Tensor) -> torch.Tensor:
    """The original FaceFeatures crop of an NCHW batch, resized to 112 x 112 (align_corners)."""
    h, w = x.shape[2:]
    top = int(h / 2.1 * (0.8 - 0.33))
    bottom = int(h - h / 2.1 * 0.3)
    left = int(w / 2 - (bottom - top) / 2)
    x = x[:, :, top:bottom, left : left + bottom - top]
    return F.interpolate(x, size=[112, 112], mode="bilinear", align_corners=True)


def nhwc_images(generator: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """``x [n, S, S, 3] -> image [n, S, S, 3]``, NumPy NHWC, of ``generator`` in eval mode."""
    generator.eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            y = generator(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))[0]
        return y.numpy().transpose(0, 2, 3, 1)

    return run

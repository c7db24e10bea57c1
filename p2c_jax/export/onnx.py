"""ONNX with the interface of the original's released ``photo2cartoon_weights.onnx``.

Input ``input`` NCHW float32 ``[N,3,S,S]`` in [-1,1], output ``output`` NCHW ``[N,3,S,S]``: the
cartoon only, so that the original's ``test_onnx.py`` and the onnxruntime / ncnn / MNN
projects built on it run the file unchanged. It is made by ``torch.onnx.export`` (the
maintained ``torch.export`` route, opset 18) from our PyTorch port holding the converted
weights; ``docs/export.md`` says why this route and not one from the JAX function. The
export's check runs the file in onnxruntime against our JAX generator.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from preprocessing.extras import needs

if TYPE_CHECKING:
    from flax import nnx

    from p2c_jax.nn.models import NetSpec

INPUT, OUTPUT = "input", "output"
OPSET = 18  # the lowest opset torch's exporter writes without a lossy version conversion


def _staged_normalisations(model):
    """``model`` with its instance and layer-instance normalisations computing their statistics
    as means over W, then H (then C): the same function, but onnxruntime's one-pass float32
    reductions over all H x W positions (``InstanceNormalization``) lose up to 1.2e-4 at
    256 x 256, more than the check allows; sums of 256 terms at a time keep the file within."""
    import torch
    from torch import nn

    from p2c_jax.pytorch import nets

    def mean_hw(x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=3, keepdim=True).mean(dim=2, keepdim=True)

    def normalised(x: torch.Tensor, mean: torch.Tensor, square_mean, n: int) -> torch.Tensor:
        d = x - mean
        var = square_mean(d * d) * (n / (n - 1) if n > 1 else 1.0)
        return d / torch.sqrt(var + nets.EPS)

    def lin_mix(x: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
        """``nets._lin_mix``: IN and LN with torch.var's unbiased variance."""
        _, c, h, w = x.shape
        in_mean = mean_hw(x)
        ln_mean = in_mean.mean(dim=1, keepdim=True)
        x_in = normalised(x, in_mean, mean_hw, h * w)
        x_ln = normalised(x, ln_mean, lambda s: mean_hw(s).mean(dim=1, keepdim=True), c * h * w)
        return rho * x_in + (1 - rho) * x_ln

    class InstanceNorm(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            d = x - mean_hw(x)  # biased variance, as nn.InstanceNorm2d
            return d / torch.sqrt(mean_hw(d * d) + nets.EPS)

    class LIN(nn.Module):
        def __init__(self, lin: nets.LIN):
            super().__init__()
            self.lin = lin

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return lin_mix(x, self.lin.rho) * self.lin.gamma + self.lin.beta

    class AdaLIN(nn.Module):
        def __init__(self, ada: nets.adaLIN):
            super().__init__()
            self.ada = ada

        def forward(self, x, gamma, beta):
            return lin_mix(x, self.ada.rho) * gamma[:, :, None, None] + beta[:, :, None, None]

    def replace(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, nn.InstanceNorm2d) and not child.affine:
                setattr(parent, name, InstanceNorm())
            elif isinstance(child, nets.LIN):
                setattr(parent, name, LIN(child))
            elif isinstance(child, nets.adaLIN):
                setattr(parent, name, AdaLIN(child))
            else:
                replace(child)

    replace(model)
    return model


def _image_module(spec: NetSpec, state: nnx.State):
    """Our PyTorch port with ``state``, returning only the image (not cam_logit, heatmap)."""
    import torch

    from p2c_jax.pytorch.bridge import from_state

    class Image(torch.nn.Module):
        def __init__(self, generator: torch.nn.Module):
            super().__init__()
            self.generator = generator

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.generator(x)[0]

    return Image(_staged_normalisations(from_state(spec, state))).eval()


def export(spec: NetSpec, state: nnx.State, dst: Path, batch: int | None, net: str) -> None:
    """Write the ONNX file of ``spec``/``state`` to ``dst`` (one file, weights inside)."""
    import contextlib
    import io
    import logging

    with needs("export", "ONNX export"):
        import onnx
        import onnxscript  # noqa: F401 - torch.onnx.export(dynamo=True) needs it
        import torch

    s = spec.img_size
    # torch.export specialises a dimension of size 1, so a dynamic batch is traced at 2
    x = torch.zeros((2 if batch is None else batch, 3, s, s))
    kwargs = {} if batch else {"dynamic_shapes": {"x": {0: torch.export.Dim("N")}}}
    # the exporter reports each stage on stdout and warns about torchvision's absence
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            program = torch.onnx.export(
                _image_module(spec, state),
                (x,),
                input_names=[INPUT],
                output_names=[OUTPUT],
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
                verbose=False,
                **kwargs,
            )
    finally:
        quiet.setLevel(level)
    model = program.model_proto
    model.producer_name = "p2c-jax"
    model.doc_string = (
        f"photo2cartoon {net}: input NCHW float32 [N,3,{s},{s}] in [-1,1] -> "
        f"output NCHW [N,3,{s},{s}] in [-1,1]"
    )
    onnx.helper.set_model_props(
        model, {"net": net, "layout": "NCHW", "range": "[-1,1]", "img_size": str(s)}
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))


def session(path: Path):
    """An onnxruntime CPU session of ``path``."""
    with needs("export", "running an ONNX file"):
        import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """NHWC numpy in, NHWC numpy out, through the file's NCHW ``input`` and ``output``."""
    sess = session(path)

    def run(x: np.ndarray) -> np.ndarray:
        nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2), np.float32)
        return sess.run([OUTPUT], {INPUT: nchw})[0].transpose(0, 2, 3, 1)

    return run

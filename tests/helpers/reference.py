"""Helpers that make the PyTorch reference nets of the tests non-trivial and move them to JAX,
and write them as the original's weights files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from flax import nnx

from p2c_jax.nn.models import NetSpec, build
from p2c_jax.pytorch import nets as torch_port
from p2c_jax.weights.convert import spec_from_state_dict, state_from_torch


def perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Move the special parameters off their initial values: rho, w_gamma/w_beta, LIN
    gamma/beta, BatchNorm statistics, PReLU slopes; spectral-norm u/v after power iterations."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("rho", "w_gamma", "w_beta"):
                p.copy_(torch.rand(p.shape, generator=g))
            elif leaf == "gamma":
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif leaf == "beta":
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                m.num_batches_tracked.fill_(1234)
            if isinstance(m, torch.nn.PReLU):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g))
    if any(k.endswith("weight_u") for k in model.state_dict()):
        model.train()
        with torch.no_grad():
            for _ in range(3):  # three power iterations
                model(torch.randn(1, 3, 128, 128, generator=g))
    model.eval()
    return model


def numpy_state_dict(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def to_flax(model: torch.nn.Module) -> tuple[NetSpec, nnx.Module]:
    """The same net in Flax, through our conversion."""
    sd = numpy_state_dict(model)
    spec = spec_from_state_dict("net", sd)
    net = build(spec)
    nnx.update(net, state_from_torch(spec, sd))
    return spec, net


def nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1)


def make_weights(path: Path, ngf: int, seed: int = 0) -> torch.nn.Module:
    """A perturbed light generator at 256, saved as the original's photo2cartoon_weights.pt."""
    torch.manual_seed(seed)
    model = perturb(torch_port.ResnetGenerator(ngf, img_size=256, light=True), seed)
    sd = model.state_dict()
    torch.save({"genA2B": sd, "genB2A": sd}, path)
    return model

"""Our weights into our PyTorch port: the torch module of a ``NetSpec`` holding an ``nnx.State``."""

from __future__ import annotations

import numpy as np
import torch
from flax import nnx
from torch import nn

from p2c_jax.nn.models import NetSpec
from p2c_jax.pytorch import nets
from p2c_jax.weights.convert import state_to_torch


def torch_module(spec: NetSpec) -> nn.Module:
    """A fresh torch net of ``spec``."""
    if spec.kind == "generator":
        return nets.ResnetGenerator(spec.ch, spec.img_size, spec.light)
    if spec.kind == "discriminator":
        return nets.Discriminator(3, spec.ch, spec.n_layers)
    return nets.MobileFaceNet(spec.ch)


def from_state(spec: NetSpec, state: nnx.State) -> nn.Module:
    """The torch net of ``spec`` with our weights ``state`` (eval mode)."""
    model = torch_module(spec)
    model.load_state_dict(
        {k: torch.from_numpy(np.array(v)) for k, v in state_to_torch(state).items()}
    )
    return model.eval()

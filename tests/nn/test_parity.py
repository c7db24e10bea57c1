"""Our Flax nets equal our PyTorch port of the original, weights moved through the conversion."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from helpers.reference import nchw, nhwc, perturb, to_flax

from p2c_jax.pytorch import nets as torch_port
from p2c_jax.weights.convert import state_to_torch


def _generator_parity(ngf: int, img_size: int, light: bool, batch: int, seed: int):
    torch.manual_seed(seed)
    ref = perturb(torch_port.ResnetGenerator(ngf, img_size, light), seed)
    _, gen = to_flax(ref)
    x = (
        np.random.default_rng(seed)
        .uniform(-1, 1, (batch, img_size, img_size, 3))
        .astype(np.float32)
    )
    with torch.no_grad():
        want = ref(nchw(x))
    got = nnx.jit(lambda m, x: m(x))(gen, x)
    np.testing.assert_allclose(np.asarray(got[0]), nhwc(want[0]), atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(got[1]), want[1].numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(got[2]), nhwc(want[2]), atol=1e-4, rtol=0)
    assert got[0].shape == (batch, img_size, img_size, 3)
    assert got[2].shape == (batch, img_size // 4, img_size // 4, 1)


@pytest.mark.parametrize("light", [True, False], ids=["light", "full"])
def test_generator_small(light):
    _generator_parity(ngf=8, img_size=64, light=light, batch=2, seed=1)


@pytest.mark.slow
@pytest.mark.parametrize("light", [True, False], ids=["light", "full"])
def test_generator_256(light):
    _generator_parity(ngf=32, img_size=256, light=light, batch=1, seed=2)


@pytest.mark.parametrize("n_layers,size", [(7, 96), (5, 64)])
def test_discriminator_eval_and_train_step(n_layers, size):
    torch.manual_seed(3)
    ref = perturb(torch_port.Discriminator(3, 32, n_layers), seed=3)
    _, dis = to_flax(ref)
    x = np.random.default_rng(3).uniform(-1, 1, (2, size, size, 3)).astype(np.float32)

    with torch.no_grad():
        want = ref(nchw(x))
    got = dis(x)
    for g, w in zip(got, (nhwc(want[0]), want[1].numpy(), nhwc(want[2]))):
        np.testing.assert_allclose(np.asarray(g), w, atol=1e-4, rtol=1e-5)

    # one training-mode call: a power iteration in every spectral-normalised layer
    ref.train()
    with torch.no_grad():
        want = ref(nchw(x))
    got = dis(x, update_stats=True)
    for g, w in zip(got, (nhwc(want[0]), want[1].numpy(), nhwc(want[2]))):
        np.testing.assert_allclose(np.asarray(g), w, atol=1e-4, rtol=1e-5)
    ours = state_to_torch(nnx.state(dis))
    moved = 0
    for k, v in ref.state_dict().items():
        if k.endswith(("weight_u", "weight_v")):
            np.testing.assert_allclose(ours[k], v.numpy(), atol=1e-5, rtol=0, err_msg=k)
            moved += 1
    assert moved == 2 * (n_layers + 2)


def test_mobilefacenet():
    torch.manual_seed(4)
    ref = perturb(torch_port.MobileFaceNet(512), seed=4)
    _, net = to_flax(ref)
    x = np.random.default_rng(4).uniform(-1, 1, (3, 112, 112, 3)).astype(np.float32)
    with torch.no_grad():
        want = ref(nchw(x)).numpy()
    got = np.asarray(jax.jit(lambda s, x: nnx.merge(nnx.graphdef(net), s)(x))(nnx.state(net), x))
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)

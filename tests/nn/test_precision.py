"""bfloat16 against float32: the dtypes inside the traced generator, its images, and ten
training steps from the same weights."""

from __future__ import annotations

import cv2
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers.reference import perturb, to_flax

from p2c_jax import parallel
from p2c_jax.inference import forward
from p2c_jax.nn.models import NetSpec, build, graphdef, training_specs
from p2c_jax.nn.numerics import Numerics
from p2c_jax.pytorch import nets as torch_port
from p2c_jax.train.config import Hparams
from p2c_jax.train.partition import make_step
from p2c_jax.train.state import TrainModel, fresh_nets
from p2c_jax.train.step import TrainStep
from preprocessing.io import load_rgb


def _equations(jaxpr) -> list:
    """Every equation of ``jaxpr`` and of the jaxprs nested in it."""
    out = list(jaxpr.eqns)
    for sub in jax.extend.core.subjaxprs(jaxpr):
        out += _equations(sub)
    return out


def test_bfloat16_products_float32_statistics():
    """In the traced bfloat16 generator every convolution and matrix product takes bfloat16
    operands and returns float32; every reduction (the normalisation statistics, CAM pooling,
    heatmap) runs on float32; the outputs are float32. In float32 the products run at HIGHEST."""
    spec = NetSpec("generator", 4, img_size=32, light=True)
    state = nnx.state(build(spec))
    x = jnp.zeros((1, 32, 32, 3))

    def traced(name: str):
        net = graphdef(spec, Numerics(name))
        return jax.make_jaxpr(lambda state, x: nnx.merge(net, state)(x))(state, x)

    bf16 = traced("bfloat16")
    eqns = _equations(bf16.jaxpr)
    products = [e for e in eqns if e.primitive.name in ("conv_general_dilated", "dot_general")]
    reductions = [e for e in eqns if e.primitive.name.startswith("reduce_")]
    assert len(products) > 50 and len(reductions) > 20
    for e in products:
        assert [v.aval.dtype for v in e.invars] == [jnp.bfloat16] * 2, e
        assert e.outvars[0].aval.dtype == jnp.float32, e
    for e in reductions:
        assert all(v.aval.dtype == jnp.float32 for v in e.invars), e
    assert all(v.aval.dtype == jnp.float32 for v in bf16.jaxpr.outvars)

    f32 = _equations(traced("float32").jaxpr)
    f32_products = [e for e in f32 if e.primitive.name in ("conv_general_dilated", "dot_general")]
    assert len(f32_products) == len(products)
    for e in f32_products:
        assert e.params["precision"] in (
            jax.lax.Precision.HIGHEST,
            (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST),
        ), e


def _bfloat16_psnrs(faces: list[np.ndarray]) -> list[float]:
    """PSNR (dB) of the light ngf-32 generator in bfloat16 against float32 on 256 x 256 RGB
    ``faces`` (uint8), weights moved off their initial values."""
    _, gen = to_flax(perturb(torch_port.ResnetGenerator(32, 256, True), seed=5))
    state = nnx.state(gen)
    spec = NetSpec("generator", 32, img_size=256, light=True)
    x = np.stack(
        [cv2.resize(f, (256, 256), interpolation=cv2.INTER_AREA) / 127.5 - 1 for f in faces]
    ).astype(np.float32)
    f32 = np.asarray(forward(spec, "float32", plan="accelerator")(state, x)[0])
    bf16 = np.asarray(forward(spec, "bfloat16", plan="accelerator")(state, x)[0])
    assert bf16.dtype == np.float32
    return [float(10 * np.log10(4.0 / np.mean((a - b) ** 2))) for a, b in zip(f32, bf16)]


@pytest.mark.slow
def test_bfloat16_generator_psnr_on_faces_and_aligned_photos(data_dir):
    """The astronaut's face (scikit-image), as is and flipped, and the three aligned photos, in
    one batch (one compile per precision): PSNR >= 35 dB each."""
    from skimage import data

    face = np.ascontiguousarray(data.astronaut()[10:300, 110:380])
    paths = sorted((data_dir / "images").glob("aligned_photo_*.png"))
    assert len(paths) == 3
    faces = [face, np.ascontiguousarray(face[:, ::-1]), *(load_rgb(p) for p in paths)]
    psnrs = _bfloat16_psnrs(faces)
    assert len(psnrs) == 5 and min(psnrs) >= 35, psnrs


STEPS = 4  # ten measured the same (below); each step costs CI three staged steps


@pytest.mark.slow
@pytest.mark.xdist_group("trainer")  # on the loop tests' worker: their programs, compiled once
def test_bfloat16_steps_stay_near_float32():
    """``STEPS`` training steps from the same weights and batches, float32 against bfloat16 (the
    staged step with the XLA:CPU convolution forms, Face-ID off), at the training loop tests'
    nets and batch (96 x 96, ch 4, batch 1: ``tests/train/test_loop.py``) and on their worker, so
    that one side's float32 programs come from the session's compilation cache (the learning
    rate is an input of the programs, so their other schedule does not matter).

    Losses: bfloat16's step on each state of the float32 run, so that they differ by the
    precision alone. Along each run's own path the losses also carry the paths' divergence, so
    those are not compared step by step; the paths are compared by each net's total parameter
    update, which should point the same way. The generators' updates differ more for the reason
    float32 runs differ from float64 ones (README, "Comparing runs"): InstanceNorm over the
    hourglasses' tiny centres amplifies rounding, and Adam's first steps (update ~ lr * sign)
    turn it into lr-sized differences; bfloat16 products round more. Measured (jax 0.10.2, CPU),
    4 steps: d_loss within 0.021 %, g_loss within 2.3 % (its CAM terms, weight 1000); cosines of
    the updates: discriminators 0.9936-0.9982, generators 0.62-0.64 (10 steps: 0.021 %, 2.4 %,
    0.9976-0.9990, 0.74-0.75). Bounds: losses 0.5 % and 10 %, cosines 0.99 and 0.5."""
    specs = training_specs(4, 96, True)
    hp = Hparams(iteration=100, faceid_weight=0.0)
    mesh = parallel.make_mesh(jax.devices()[:1])
    start = TrainModel(specs, None).init_state(fresh_nets(specs, 0), hp)
    rng = np.random.default_rng(0)
    batches = [
        tuple(
            parallel.put_batch(rng.uniform(-1, 1, (1, 96, 96, 3)).astype(np.float32), mesh)
            for _ in "AB"
        )
        for _ in range(STEPS)
    ]
    steps = {
        name: make_step(
            TrainStep(TrainModel(specs, None, Numerics(name, conv_forms=True)), hp), mesh, "cpu"
        )
        for name in ("float32", "bfloat16")
    }

    def losses(metrics) -> dict[str, float]:
        return {k: float(metrics[k]) for k in ("d_loss", "g_loss")}

    def run(name: str):
        """The state after the steps, and each step's (state before it, its losses)."""
        state, path = parallel.put_replicated(start, mesh), []
        for a, b in batches:
            before = jax.device_get(state)
            state, m = steps[name](state, None, a, b)
            path.append((before, losses(m)))
        return jax.device_get(state), path

    (s32, path32), (s16, _) = run("float32"), run("bfloat16")
    for i, ((state, l32), (a, b)) in enumerate(zip(path32, batches)):
        _, m = steps["bfloat16"](parallel.put_replicated(state, mesh), None, a, b)
        l16 = losses(m)
        assert l16["d_loss"] == pytest.approx(l32["d_loss"], rel=0.005), (i, l32, l16)
        assert l16["g_loss"] == pytest.approx(l32["g_loss"], rel=0.10), (i, l32, l16)

    def update(end, group: str, net: str) -> np.ndarray:
        pairs = zip(jax.tree.leaves(end[group][net]), jax.tree.leaves(start[group][net]))
        return np.concatenate([np.ravel(x - y) for x, y in pairs])

    cosines = {}
    for group in ("gen", "dis"):
        for net in s32[group]:
            d32, d16 = update(s32, group, net), update(s16, group, net)
            cosines[net] = float(d32 @ d16 / (np.linalg.norm(d32) * np.linalg.norm(d16)))
    assert min(v for k, v in cosines.items() if k.startswith("dis")) >= 0.99, cosines
    assert min(v for k, v in cosines.items() if k.startswith("gen")) >= 0.5, cosines

"""``p2c-train --compile_only``: the step p2c-train runs, compiled for a TPU slice on this CPU
host. A small configuration (light, ch 4, 32 px, the test nets' shallower discriminators,
v5p-8, bfloat16 products, ``--matmul_kernel_grads``) is compiled once and its program checked:
the accelerator plan, one program that fits, the state donated, p2c-train's shardings, and no
cross-chip traffic but the reductions of gradients and metrics, whose bytes are checked
against the PyTorch port's trained parameters.

None of these checks depends on the TPU generation, on how a convolution's kernel gradient is
computed, on the products' precision or on how hard XLA optimises the program's run time, so
the test takes the cheapest compile of those choices: v5p (4 chips, one host), matmul kernel
gradients, bfloat16 products, and ``exec_time_optimization_effort`` -1 (docs/tpu.md has each
one's figures); minutes still, hence the slow tier.
"""

from __future__ import annotations

import dataclasses
import json
import re

import jax
import pytest
from helpers.ci_required import needs_libtpu
from helpers.specs import CH, SIZE, small_specs

from p2c_jax import parallel, topology
from p2c_jax.cli import train
from p2c_jax.train import compile_report
from p2c_jax.train.config import Config
from p2c_jax.train.partition import Fused

pytestmark = [
    pytest.mark.slow,
    pytest.mark.tpu,
    needs_libtpu(),
]

SLICE, BATCH = "v5p-8", 4  # 4 chips: v5p names count TensorCores, 2 a chip
FLAGS = {
    "light": True,
    "ch": CH,
    "img_size": SIZE,
    "batch_size": BATCH,
    "faceid_weight": 0.0,
    "matmul_kernel_grads": True,
    "precision": "bfloat16",
}
CHEAPEST = {"exec_time_optimization_effort": -1.0}
# the discriminators of ``small_specs``: 5 and 3 layers (the original's 7 and 5 need 96 px)
DISCRIMINATOR_LAYERS = (5, 5, 3, 3)
METRICS = 16  # the step's scalar metrics (losses and lr): at most this many float32 reductions


def trained_parameter_bytes(ch: int, img_size: int) -> tuple[int, int]:
    """float32 bytes of the parameters that get a gradient in the PyTorch port: (one light
    generator's, the four discriminators'). The original's ``ConvBlock4`` of a width-keeping
    ConvBlock gets none."""
    import torch

    from p2c_jax.pytorch import nets

    torch.manual_seed(0)
    x = torch.rand(1, 3, img_size, img_size)

    def trained(net) -> int:
        out = net(x)
        (out[0].sum() + out[1].sum()).backward()
        return sum(p.numel() * 4 for p in net.parameters() if p.grad is not None)

    generator = trained(nets.ResnetGenerator(ch, img_size, light=True))
    return generator, sum(trained(nets.Discriminator(3, ch, n)) for n in DISCRIMINATOR_LAYERS)


@pytest.fixture(scope="module")
def compiled():
    cfg = Config.flat(**FLAGS)
    devices = topology.devices(SLICE)
    mesh = parallel.make_mesh(devices)
    built = compile_report.compile_step(cfg, mesh, small_specs(CH, SIZE), CHEAPEST)
    return cfg, devices, mesh, built, compile_report.describe(cfg, SLICE, 1, devices, built)


def test_a_tpu_slice_gets_the_accelerator_plan_on_a_cpu_host(compiled):
    _, devices, _, built, report = compiled
    assert jax.default_backend() == "cpu" and devices[0].platform == "tpu"
    assert isinstance(built.step, Fused)
    assert not parallel.uses_cpu_forms(devices)
    assert (report["chips"], report["hosts"], report["chip"]) == (4, 1, "v5p")
    assert report["batch_per_chip"] == BATCH // 4 and report["programs"] == 1


def _state_shardings(built) -> list:
    """The shardings of the state arguments the program keeps (jit drops unused ones)."""
    (state, _, _, _), _ = built.compiled.input_shardings
    return jax.tree.leaves(state)


def test_it_fits_and_the_state_is_donated(compiled):
    _, _, _, built, report = compiled
    memory = report["memory_bytes"]
    assert report["fits"] and 0 < memory["total"] <= report["hbm_bytes"]
    kept = len(_state_shardings(built))
    assert 0 < kept <= len(jax.tree.leaves(built.args[0]))
    header = built.compiled.as_text().split("\n", 1)[0]
    # "{output}: (parameter, {index in a tupled parameter}, may-alias)"
    pairs = re.findall(r"\}: \((\d+), \{(\d*)\}, (?:may|must)-alias\)", header)
    donated = {int(index) if index else int(param) for param, index in pairs}
    assert donated == set(range(kept))  # every state argument, nothing else
    assert memory["aliased"] >= 0.99 * memory["outputs"]  # the new state over the old


def test_the_shardings_are_p2c_trains(compiled):
    _, _, mesh, built, _ = compiled
    (_, face, real_a, real_b), _ = built.compiled.input_shardings
    rep, dat = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    for got in _state_shardings(built):
        assert got.is_fully_replicated, got
    assert face is None or not jax.tree.leaves(face)
    assert real_a.is_equivalent_to(dat, 4) and real_b.is_equivalent_to(dat, 4)
    assert not real_a.is_fully_replicated
    new_state, metrics = built.compiled.output_shardings
    for got in jax.tree.leaves(new_state) + jax.tree.leaves(metrics):
        assert got.is_fully_replicated
    assert built.step.in_shardings == (rep, rep, dat, dat)


def _reduced_bytes(report: dict) -> int:
    kinds = {c["kind"]: c for c in report["collectives"]}
    assert set(kinds) == {"all-reduce"}, report["collectives"]  # no gather, no permute
    assert report["unknown_loop_trip_counts"] == 0
    return kinds["all-reduce"]["bytes"]


def test_only_gradients_and_metrics_cross_chips_once(compiled):
    """All-reduces only (nothing gathers the batch or the weights), of each trained parameter's
    gradient once and the metrics: ``partition.Fused`` runs the body per device and each
    update takes one mean over devices. Within 5 % of the PyTorch port's trained bytes."""
    generator, discriminators = trained_parameter_bytes(CH, SIZE)
    want = 2 * generator + discriminators
    got = _reduced_bytes(compiled[-1])
    assert want <= got <= want * 1.05 + METRICS * 4, (got, want)


def test_the_cli_writes_the_report(compiled, tmp_path, capsys, monkeypatch):
    """The command's report of the same program (the fixture's, not compiled again: jax
    cannot read a TPU program back from its compile cache without a TPU) has the issue's
    keys."""
    cfg, _, _, built, report = compiled

    def same_program(got_cfg, mesh, specs=None):
        assert dataclasses.replace(got_cfg, workdir="") == cfg and mesh.devices.size == 4
        return built

    monkeypatch.setattr(compile_report, "compile_step", same_program)
    flags = [f"--{k}={v}" for k, v in FLAGS.items()]
    assert (
        train.main([*flags, "--compile_only", "--topology", SLICE, "--workdir", str(tmp_path)]) == 0
    )
    written = json.loads((tmp_path / "compile_report.json").read_text())
    keys = {
        "topology",
        "chips",
        "hosts",
        "chip",
        "hbm_bytes",
        "batch_per_chip",
        "memory_bytes",
        "fits",
        "programs",
        "collectives",
        "flops_per_step",
        "roofline_seconds",
        "images_per_second",
        "compile_seconds",
    }
    assert keys <= set(written)
    assert set(written["memory_bytes"]) >= {
        "arguments",
        "outputs",
        "temporaries",
        "aliased",
        "total",
    }
    for k in ("memory_bytes", "collectives", "flops_per_step", "fits"):
        assert written[k] == report[k]
    out = capsys.readouterr().out
    assert "fits" in out and "all-reduce" in out and str(tmp_path) in out

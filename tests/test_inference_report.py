"""``p2c-infer --compile_only``: the generator's forward pass as p2c-infer runs it, compiled on
this CPU host for a TPU slice (libtpu, ``-m tpu``) and for a GPU machine (the CUDA plugin,
``-m cuda``). A light ch 4 generator at 32 px, 2 images per chip, compiles in about a minute for
v5e-4 and half of that for 8 H100s on 2 cores; its program must fit, cross no chip, keep
BatchedGenerator's shardings and hold the generator's FLOPs (torch's flop counter on the
PyTorch port)."""

from __future__ import annotations

import dataclasses
import json

import jax
import pytest
from helpers.ci_required import needs_cuda_plugin, needs_libtpu
from helpers.specs import CH, SIZE

from p2c_jax import aot, inference_report, parallel, topology
from p2c_jax.cli import infer
from p2c_jax.nn.models import NetSpec

SPEC = NetSpec("generator", CH, img_size=SIZE, light=True)
PER_CHIP = 2
# the compiled programs' convolutions and matmuls hold torch's FLOPs within this: XLA folds the
# upsampling into the next convolution (GPU: -5.8 %) and XLA:TPU computes thin convolutions on
# wider tiles (TPU: +3.6 %; docs/tpu.md)
FLOPS_TOLERANCE = 0.10


def torch_flops(images: int) -> int:
    """FLOPs of the PyTorch port's generator on ``images`` images (torch's flop counter)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from p2c_jax.pytorch import nets

    net = nets.ResnetGenerator(CH, SIZE, light=True).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.rand(images, 3, SIZE, SIZE))
    return counter.get_total_flops()


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("v5e-4", marks=[pytest.mark.tpu, needs_libtpu()]),
        pytest.param("h100-8", marks=[pytest.mark.cuda, needs_cuda_plugin()]),
    ],
)
def compiled(request):
    """The report of the generator on ``request.param``'s chips, the chips and the compiled
    program it read: (name, chips, (program, lowering and compile seconds), report)."""
    name = request.param
    built = []
    compile_generator = inference_report.compile_generator

    def keep(spec, precision, devices, batch_per_chip):
        built.append((devices, compile_generator(spec, precision, devices, batch_per_chip)))
        return built[-1][1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(inference_report, "compile_generator", keep)
        # one image short of PER_CHIP per chip: p2c-infer rounds the batch up
        chips = topology.parse(name).chips
        report = inference_report.report(SPEC, "float32", name, 1, PER_CHIP * chips - 1)
    return name, *built[0], report


def test_it_fits_and_crosses_no_chip(compiled):
    name, devices, (program, _, _), report = compiled
    assert devices[0].platform != "cpu" and not parallel.uses_cpu_forms(devices)
    assert report["chip"] == name.split("-")[0] and report["chips"] == len(devices)
    assert (report["hosts"], report["programs"], report["program_chips"]) == (1, 1, len(devices))
    assert report["batch_per_chip"] == PER_CHIP
    assert report["fits"] and 0 < report["memory_bytes"]["total"] <= report["usable_bytes"]
    assert report["collectives"] == [] and report["max_batch_per_chip"] is None
    assert "while" not in program.as_text()  # the batch at once, not image by image (XLA:CPU)


def test_the_shardings_are_batched_generators(compiled):
    _, devices, (program, _, _), _ = compiled
    mesh = parallel.make_mesh(devices)
    (state, x), _ = program.input_shardings
    for got in jax.tree.leaves(state):
        assert got.is_fully_replicated, got
    assert x.is_equivalent_to(parallel.batch_sharding(mesh), 4) and not x.is_fully_replicated
    image, cam_logit, heatmap = program.output_shardings
    assert image.is_equivalent_to(parallel.batch_sharding(mesh), 4)
    assert cam_logit.is_equivalent_to(parallel.batch_sharding(mesh), 2)
    assert heatmap.is_equivalent_to(parallel.batch_sharding(mesh), 4)


def test_flops_are_the_generators(compiled):
    """The FLOPs of the program's convolutions and matmuls are the generator's; the report's,
    XLA's count where it gives one (TPU), add its elementwise arithmetic."""
    _, _, (program, _, _), report = compiled
    counted = aot.Program(program.as_text()).flops()
    want = torch_flops(PER_CHIP)
    assert counted == pytest.approx(want, rel=FLOPS_TOLERANCE), (counted, want)
    assert report["flops_per_step"] >= counted


# name -> (the name and slices of several hosts of its chips, their chips and hosts)
SEVERAL_HOSTS = {"v5e-4": ("v5e-16", 1, 16, 4), "h100-8": ("h100-8", 2, 16, 2)}


def test_the_cli_reports_several_hosts(compiled, tmp_path, capsys, monkeypatch):
    """p2c-infer runs one program per host: for a slice of several hosts the command compiles
    the program of one (here the fixture's, not compiled again) and the report counts them
    all."""
    name, devices, built, _ = compiled
    slice_name, slices, chips, hosts = SEVERAL_HOSTS[name]

    def same_program(spec, precision, host, batch_per_chip):
        assert (spec, precision, batch_per_chip) == (SPEC, "float32", PER_CHIP)
        assert len(host) == len(devices) and {d.process_index for d in host} == {0}
        return built

    monkeypatch.setattr(inference_report, "compile_generator", same_program)
    flags = ["--ch", str(CH), "--img_size", str(SIZE), "--batch_size", str(PER_CHIP * len(devices))]
    flags += ["--topology", slice_name, "--num_slices", str(slices)]
    out = tmp_path / "out"
    assert infer.main(["--compile_only", "-o", str(out), *flags]) == 0
    written = json.loads((out / "compile_report.json").read_text())
    assert (written["chips"], written["hosts"]) == (chips, hosts)
    assert written["program_chips"] == len(devices) and written["batch_per_chip"] == PER_CHIP
    assert written["global_batch"] == chips * PER_CHIP
    memory = dataclasses.asdict(aot.memory(built[0]))
    assert written["memory_bytes"] == {**memory, "total": aot.memory(built[0]).total}
    # the hosts of a slice run at once: images per second per slice = all its chips' images
    per_slice = chips // slices * PER_CHIP
    assert written["images_per_second"] == pytest.approx(per_slice / written["roofline_seconds"])
    assert written["collectives"] == [] and written["fits"]
    assert f"{chips} {name.split('-')[0]} chips, {hosts} hosts" in capsys.readouterr().out

"""TPU slice names as Cloud TPU spells them, GPU machines, and the devices libtpu and the CUDA
plugin describe for them."""

from __future__ import annotations

import pytest
from helpers.ci_required import needs_cuda_plugin, needs_libtpu

from p2c_jax import topology

# name -> (libtpu's topology, chips, hosts): Cloud TPU's tables (docs/tpu.md); v4 and v5p
# names count TensorCores, two per chip
SLICES = {
    "v4-8": ("v4:2x2x1", 4, 1),
    "v4-32": ("v4:2x2x4", 16, 4),
    "v5e-4": ("v5e:2x2", 4, 1),
    "v5e-8": ("v5e:2x4", 8, 1),
    "v5e-16": ("v5e:4x4", 16, 4),
    "v5litepod-256": ("v5e:16x16", 256, 64),
    "v5p-128": ("v5p:4x4x4", 64, 16),
    "v6e-16": ("v6e:4x4", 16, 4),
    "v6e-64": ("v6e:8x8", 64, 16),
}


@pytest.mark.parametrize("name", SLICES)
def test_names_parse_to_libtpu_topologies(name):
    want, chips, _ = SLICES[name]
    s = topology.parse(name)
    assert (s.topology, s.chips) == (want, chips)
    assert topology.parse(want).chips == chips


@pytest.mark.parametrize("bad", ["v5e-3", "v4-6", "v7-8", "tpu", "v5e:3x3", "v5p-4"])
def test_unknown_name_lists_the_known_ones(bad):
    with pytest.raises(ValueError, match="unknown topology") as e:
        topology.parse(bad)
    assert "v5e-16" in str(e.value) and "v4-8" in str(e.value) and "\n" not in str(e.value)
    assert "h100-8" in str(e.value) and "h200-1" in str(e.value)


@pytest.mark.parametrize("name", ["h100-1", "h100-8", "h200-1", "h200-8"])
def test_gpu_machines_parse(name):
    s = topology.parse(name)
    n = int(name.split("-")[1])
    assert (s.platform, s.chips, s.topology) == ("cuda", n, f"1x1x{n}")


@pytest.mark.parametrize("bad", ["h100-2", "h100-16", "a100-8", "h200"])
def test_unknown_gpu_machines_are_refused(bad):
    with pytest.raises(ValueError, match="unknown topology"):
        topology.parse(bad)


@pytest.mark.tpu
@needs_libtpu()
@pytest.mark.parametrize("name", ["v4-8", "v5e-16", "v5p-128", "v6e-64"])
def test_devices_are_one_per_chip_on_their_hosts(name):
    _, chips, hosts = SLICES[name]
    devices = topology.devices(name)
    assert len(devices) == chips
    assert len({d.process_index for d in devices}) == hosts
    assert len({d.id for d in devices}) == chips
    assert topology.chip(devices).name == name.split("-")[0].replace("v5litepod", "v5e")


@pytest.mark.tpu
@needs_libtpu()
def test_slices_multiply_the_devices():
    devices = topology.devices("v5e-4", num_slices=2)
    assert len(devices) == 8
    assert sorted({d.slice_index for d in devices}) == [0, 1]


@pytest.mark.cuda
@needs_cuda_plugin()
@pytest.mark.parametrize(("name", "slices"), [("h100-8", 1), ("h200-1", 1), ("h100-8", 2)])
def test_gpu_devices_from_the_target_config(name, slices):
    """The CUDA plugin's devices without a GPU: the GPU its target config names, with
    NVIDIA's figures for it, on one host per machine."""
    devices = topology.devices(name, slices)
    gpu, n = name.split("-")
    assert len(devices) == int(n) * slices and devices[0].platform == "gpu"
    assert len({d.process_index for d in devices}) == slices
    chip = topology.chip(devices)
    assert chip.name == gpu and chip.hbm_bytes > 79 * topology.GiB
    assert f"device_memory_size: {chip.hbm_bytes}" in topology.target_config(gpu)

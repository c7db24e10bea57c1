"""TPU slices and GPU machines as a user names them (``v5e-16``, ``v4-32``, ``h100-8``), their
devices without the hardware, and their chips' published figures.

``devices(name)`` asks jax's deviceless topology API
(``jax.experimental.topologies.get_topology_desc``) for the devices: libtpu's for a TPU slice,
the CUDA plugin's (with a target config describing the GPU) for a GPU machine. XLA then compiles
for them on any host. The chips' figures (HBM, peak FLOP/s, HBM bandwidth) and their sources are
in docs/tpu.md.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
from collections.abc import Sequence

import jax

#: the pip requirement that brings libtpu (``jax[tpu]`` of the installed jax)
TPU_EXTRA = f'pip install "jax[tpu]=={jax.__version__}"'
#: the CUDA plugin of the installed jax, without the CUDA libraries: compiling needs none
CUDA_EXTRA = f'pip install "jax-cuda12-plugin=={jax.__version__}"'


@dataclasses.dataclass(frozen=True)
class Chip:
    """One chip's published figures (docs/tpu.md has the sources). ``fp32_flops`` is the rate
    of float32 products at ``Precision.HIGHEST`` (ours); ``usable_bytes`` the HBM a program
    gets: on a TPU what libtpu's compiler says is available (it refuses a program that needs
    more), on a GPU the 75 % that jax's allocator takes by default
    (``XLA_PYTHON_CLIENT_MEM_FRACTION``)."""

    name: str
    hbm_bytes: int
    bf16_flops: float
    hbm_bytes_per_second: float
    fp32_flops: float
    usable_bytes: int

    def peak_flops(self, precision: str) -> float:
        """Peak FLOP/s of the products of ``precision`` (``float32`` or ``bfloat16``)."""
        return self.bf16_flops if precision == "bfloat16" else self.fp32_flops


def _tpu(
    name: str, hbm_bytes: int, available: float, bf16_flops: float, hbm_bytes_per_second: float
) -> Chip:
    """A TPU chip: XLA runs a float32 product at ``Precision.HIGHEST`` as 6 bf16 passes on the
    MXU, so its float32 rate is the bf16 peak / 6 (derived, not published)."""
    return Chip(name, hbm_bytes, bf16_flops, hbm_bytes_per_second, bf16_flops / 6, round(available))


def _gpu(name: str, hbm_bytes: int, bf16_flops: float, hbm_bytes_per_second: float) -> Chip:
    """A GPU: float32 products at HIGHEST run on its CUDA cores (67 TFLOP/s on H100 and H200,
    no TF32); jax's allocator takes 75 % of its memory."""
    return Chip(name, hbm_bytes, bf16_flops, hbm_bytes_per_second, 67e12, hbm_bytes * 3 // 4)


GiB = 1 << 30
MiB = 1 << 20
# device_kind (as libtpu and the CUDA plugin name it) -> figures per chip; a TPU's available
# HBM as libtpu 0.10.2's compiler states it when it refuses a program, a GPU's HBM as
# nvidia-smi reports it
CHIPS = {
    "TPU v4": _tpu("v4", 32 * GiB, 30.75 * GiB, 275e12, 1200e9),
    "TPU v5 lite": _tpu("v5e", 16 * GiB, 15.75 * GiB, 197e12, 819e9),
    "TPU v5": _tpu("v5p", 95 * GiB, 95.74 * GiB, 459e12, 2765e9),
    "TPU v6 lite": _tpu("v6e", 32 * GiB, 31.25 * GiB, 918e12, 1600e9),
    "NVIDIA H100 80GB HBM3": _gpu("h100", 81559 * MiB, 989e12, 3350e9),
    "NVIDIA H200": _gpu("h200", 143771 * MiB, 989e12, 4800e9),
}


@dataclasses.dataclass(frozen=True)
class _Family:
    """A TPU generation: its names' prefixes, whether a name counts TensorCores (2 per chip)
    or chips, the slice shapes by chip count, and the chips per host of multi-host slices."""

    api: str  # the generation in libtpu's topology names
    prefixes: tuple[str, ...]
    cores_per_chip: int
    shapes: dict[int, tuple[int, ...]]
    host_bounds: tuple[int, int, int]
    chip_config: str = "default"


_3D = {
    4: (2, 2, 1),
    8: (2, 2, 2),
    16: (2, 2, 4),
    32: (2, 4, 4),
    64: (4, 4, 4),
    128: (4, 4, 8),
    256: (4, 8, 8),
    512: (8, 8, 8),
    1024: (8, 8, 16),
    2048: (8, 16, 16),
}
_2D = {
    1: (1, 1),
    4: (2, 2),
    8: (2, 4),
    16: (4, 4),
    32: (4, 8),
    64: (8, 8),
    128: (8, 16),
    256: (16, 16),
}
# v4 chips are one device each only in megacore mode (JAX's default on v4)
_FAMILIES = (
    _Family("v4", ("v4",), 2, _3D, (2, 2, 1), "megacore"),
    _Family("v5p", ("v5p",), 2, _3D, (2, 2, 1)),
    _Family("v5e", ("v5e", "v5litepod"), 1, _2D, (2, 2, 1)),
    _Family("v6e", ("v6e",), 1, _2D, (2, 2, 1)),
)
_SINGLE_HOST_CHIPS = 8  # v5e and v6e slices of up to 8 chips are one host


# GPUs as the CUDA plugin's target config describes them: their kind (as CUDA names the
# device), compute capability, SMs, L2 cache and boost clock (NVIDIA's data sheets, docs/tpu.md);
# memory and bandwidth are CHIPS'. Machines hold GPUS_PER_HOST of them.
_GPUS = {
    "h100": ("NVIDIA H100 80GB HBM3", (9, 0), 132, 50 * MiB, 1.98),
    "h200": ("NVIDIA H200", (9, 0), 132, 50 * MiB, 1.98),
}
GPUS_PER_HOST = (1, 8)


@dataclasses.dataclass(frozen=True)
class Slice:
    """A TPU slice or a GPU machine: ``name`` as typed, ``topology`` as the compiler's plugin
    names it (libtpu: ``v5e:4x4``; the CUDA plugin: ``slices x hosts x GPUs``, ``1x1x8``),
    ``chip_config`` libtpu's chip configuration or the GPU (``h100``) of the target config."""

    name: str
    topology: str
    chips: int
    chip_config: str = ""
    host_bounds: tuple[int, int, int] = (1, 1, 1)
    platform: str = "tpu"


def known_names() -> list[str]:
    """Every name ``parse`` accepts (besides libtpu's own ``v5e:4x4`` form)."""
    tpus = [
        f"{prefix}-{chips * fam.cores_per_chip}"
        for fam in _FAMILIES
        for prefix in fam.prefixes
        for chips in fam.shapes
    ]
    return tpus + [f"{gpu}-{n}" for gpu in _GPUS for n in GPUS_PER_HOST]


def parse(name: str) -> Slice:
    """The slice ``name`` names: ``GEN-N`` as Cloud TPU names slices (N counts TensorCores
    for v4 and v5p, chips for v5e and v6e), libtpu's ``GEN:AxB[xC]``, or ``GPU-N``, a machine
    of N GPUs (``h100-8``). A ValueError lists the known names otherwise."""
    for fam in _FAMILIES:
        chips = _chips(name, fam)
        if chips is not None:
            shape = fam.shapes[chips]
            single = fam.cores_per_chip == 1 and chips <= _SINGLE_HOST_CHIPS
            bounds = (*shape, 1) if single else fam.host_bounds
            topology = f"{fam.api}:{'x'.join(map(str, shape))}"
            return Slice(name, topology, chips, fam.chip_config, bounds)
    m = re.fullmatch(r"([a-z0-9]+)-(\d+)", name)
    if m and m[1] in _GPUS and int(m[2]) in GPUS_PER_HOST:
        return Slice(name, f"1x1x{m[2]}", int(m[2]), chip_config=m[1], platform="cuda")
    raise ValueError(f"unknown topology {name!r}: expected one of {', '.join(known_names())}")


def _chips(name: str, fam: _Family) -> int | None:
    """The chip count of ``name`` in ``fam``, None if ``name`` is not one of its slices."""
    m = re.fullmatch(r"([a-z0-9]+)-(\d+)", name)
    if m and m[1] in fam.prefixes and int(m[2]) % fam.cores_per_chip == 0:
        chips = int(m[2]) // fam.cores_per_chip
        return chips if chips in fam.shapes else None
    m = re.fullmatch(r"([a-z0-9]+):(\d+(?:x\d+)*)", name)
    if m and m[1] == fam.api:
        shape = tuple(int(s) for s in m[2].split("x"))
        return math.prod(shape) if shape in fam.shapes.values() else None
    return None


def has_libtpu() -> bool:
    return importlib.util.find_spec("libtpu") is not None


def has_cuda_plugin() -> bool:
    return importlib.util.find_spec("jax_cuda12_plugin") is not None


def missing_extra(name: str) -> str | None:
    """The pip install that brings the compiler for ``name``'s devices, where it is missing."""
    if parse(name).platform == "cuda":
        return None if has_cuda_plugin() else CUDA_EXTRA
    return None if has_libtpu() else TPU_EXTRA


def devices(name: str, num_slices: int = 1) -> Sequence[jax.Device]:
    """The devices of ``num_slices`` slices (or GPU machines) ``name``, from the deviceless
    topology of libtpu or the CUDA plugin; a RuntimeError naming the pip install where that
    is missing."""
    spec = parse(name)
    extra = missing_extra(name)
    if extra:
        raise RuntimeError(f"compiling for {name} needs its compiler: {extra}")
    from jax.experimental import topologies

    if spec.platform == "cuda":
        return _gpu_devices(spec, num_slices)
    # no TPU here to ask the metadata server about, and no TPU for processes to share
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    desc = topologies.get_topology_desc(
        platform="tpu",
        topology_name=spec.topology,
        chip_config_name=spec.chip_config,
        chips_per_host_bounds=spec.host_bounds,
        num_slices=num_slices,
    )
    return desc.devices


def _gpu_devices(spec: Slice, num_slices: int) -> Sequence[jax.Device]:
    """The CUDA plugin's devices for ``num_slices`` machines ``spec`` (one host each). The
    plugin registers only where its check of the CUDA libraries is skipped
    (``JAX_SKIP_CUDA_CONSTRAINTS_CHECK``) before jax starts its backends: compiling needs no
    CUDA library."""
    from jax.experimental import topologies

    try:
        desc = topologies.get_topology_desc(
            platform="cuda",
            topology=f"1x{num_slices}x{spec.chips}",
            target_config=target_config(spec.chip_config),
        )
    except NotImplementedError:
        raise RuntimeError(
            "the CUDA plugin is not registered: set JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 before jax "
            "starts (this host has no CUDA libraries for its check)"
        ) from None
    return desc.devices


def target_config(gpu: str) -> str:
    """The ``GpuTargetConfigProto`` (text) of ``gpu`` (``h100``): what XLA reads off a GPU
    when it has one. The limits per block and per SM are compute capability 9.0's (CUDA C++
    Programming Guide, its table of technical specifications); cuDNN is the CUDA plugin's
    least (9.8)."""
    kind, (major, minor), sms, l2_bytes, clock_ghz = _GPUS[gpu]
    chip = CHIPS[kind]
    return f"""gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: {48 * 1024}
  shared_memory_per_block_optin: {227 * 1024}
  shared_memory_per_core: {228 * 1024}
  threads_per_core_limit: 2048
  core_count: {sms}
  fpus_per_core: 128
  block_dim_limit_x: {2**31 - 1}
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {int(chip.hbm_bytes_per_second)}
  l2_cache_size: {l2_bytes}
  clock_rate_ghz: {clock_ghz}
  device_memory_size: {chip.hbm_bytes}
  cuda_compute_capability {{ major: {major} minor: {minor} }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 8 }}
device_description_str: "{kind}"
"""


def chip(devices: Sequence[jax.Device]) -> Chip:
    """The figures of ``devices``' chip (a KeyError names the kinds known)."""
    kind = devices[0].device_kind
    if kind not in CHIPS:
        raise KeyError(f"no figures for {kind!r}: known chips {', '.join(CHIPS)}")
    return CHIPS[kind]

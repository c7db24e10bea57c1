"""TPU slices as a user names them (``v5e-16``, ``v4-32``, ``v5p-128``), their devices without
the hardware, and their chips' published figures.

``devices(name)`` asks libtpu's deviceless topology API
(``jax.experimental.topologies.get_topology_desc``) for the devices of a slice: the TPU
compiler then compiles for them on any host. The chips' figures (HBM, peak FLOP/s, HBM
bandwidth) and their sources are in docs/tpu.md.
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


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU chip's published figures (docs/tpu.md has the sources). ``fp32_flops`` is the
    rate of float32 products at ``Precision.HIGHEST`` (ours): XLA runs them as 6 bf16 passes
    on the MXU, so it is the bf16 peak / 6, derived, not published."""

    name: str
    hbm_bytes: int
    bf16_flops: float
    hbm_bytes_per_second: float

    @property
    def fp32_flops(self) -> float:
        return self.bf16_flops / 6

    def peak_flops(self, precision: str) -> float:
        """Peak FLOP/s of the products of ``precision`` (``float32`` or ``bfloat16``)."""
        return self.bf16_flops if precision == "bfloat16" else self.fp32_flops


GiB = 1 << 30
# device_kind (as libtpu names it) -> figures per chip
CHIPS = {
    "TPU v4": Chip("v4", 32 * GiB, 275e12, 1200e9),
    "TPU v5 lite": Chip("v5e", 16 * GiB, 197e12, 819e9),
    "TPU v5": Chip("v5p", 95 * GiB, 459e12, 2765e9),
    "TPU v6 lite": Chip("v6e", 32 * GiB, 918e12, 1600e9),
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


@dataclasses.dataclass(frozen=True)
class Slice:
    """A TPU slice: ``name`` as typed, ``topology`` as libtpu names it (``v5e:4x4``)."""

    name: str
    topology: str
    chips: int
    chip_config: str
    host_bounds: tuple[int, int, int]


def known_names() -> list[str]:
    """Every slice name ``parse`` accepts (besides libtpu's own ``v5e:4x4`` form)."""
    return [
        f"{prefix}-{chips * fam.cores_per_chip}"
        for fam in _FAMILIES
        for prefix in fam.prefixes
        for chips in fam.shapes
    ]


def parse(name: str) -> Slice:
    """The slice ``name`` names: ``GEN-N`` as Cloud TPU names slices (N counts TensorCores
    for v4 and v5p, chips for v5e and v6e), or libtpu's ``GEN:AxB[xC]``. A ValueError lists
    the known names otherwise."""
    for fam in _FAMILIES:
        chips = _chips(name, fam)
        if chips is not None:
            shape = fam.shapes[chips]
            single = fam.cores_per_chip == 1 and chips <= _SINGLE_HOST_CHIPS
            bounds = (*shape, 1) if single else fam.host_bounds
            topology = f"{fam.api}:{'x'.join(map(str, shape))}"
            return Slice(name, topology, chips, fam.chip_config, bounds)
    raise ValueError(f"unknown TPU topology {name!r}: expected one of {', '.join(known_names())}")


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


def devices(name: str, num_slices: int = 1) -> Sequence[jax.Device]:
    """The devices of ``num_slices`` slices ``name`` (libtpu's deviceless topology); a
    RuntimeError naming ``TPU_EXTRA`` where libtpu is not installed."""
    spec = parse(name)
    if not has_libtpu():
        raise RuntimeError(f"compiling for a TPU needs libtpu: {TPU_EXTRA}")
    from jax.experimental import topologies

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


def chip(devices: Sequence[jax.Device]) -> Chip:
    """The figures of ``devices``' chip (a KeyError names the kinds known)."""
    kind = devices[0].device_kind
    if kind not in CHIPS:
        raise KeyError(f"no figures for {kind!r}: known chips {', '.join(CHIPS)}")
    return CHIPS[kind]

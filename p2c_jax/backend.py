"""The one place that decides per backend how the nets and the training step are run.

Two plans:

- ``cpu``: the forms measured fastest on XLA:CPU (``docs/benchmarks.md``): convolutions
  picked by shape (``nn.layers.conv2d``), the inference forward mapped image by image, the
  training step as several programs with the G loss part by part, the C heap trimmed after
  each step.
- ``accelerator``: XLA's plain convolutions, batched forward passes, each training step one
  compiled program.

The plan follows ``jax.default_backend()`` and can be forced with ``P2C_PLAN=cpu|accelerator``
(or ``use_plan``), e.g. to run the accelerator plan on CPU in tests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator

import jax

PLAN_ENV = "P2C_PLAN"


@dataclasses.dataclass(frozen=True)
class Plan:
    name: str
    conv_forms: bool  # nn.layers.conv2d picks a CPU-tuned form by shape
    map_images: bool  # inference runs the generator one image at a time
    split_step: bool  # the training step runs as several programs, the G loss part by part
    trim_heap: bool  # malloc_trim after each training step

    @property
    def is_cpu(self) -> bool:
        return self.name == "cpu"


PLANS = {
    "cpu": Plan("cpu", conv_forms=True, map_images=True, split_step=True, trim_heap=True),
    "accelerator": Plan(
        "accelerator", conv_forms=False, map_images=False, split_step=False, trim_heap=False
    ),
}

_forced: list[str] = []


def plan() -> Plan:
    """The plan in force: ``use_plan``, else ``$P2C_PLAN``, else by ``jax.default_backend()``."""
    name = _forced[-1] if _forced else os.environ.get(PLAN_ENV, "")
    if not name:
        name = "cpu" if jax.default_backend() == "cpu" else "accelerator"
    if name not in PLANS:
        raise ValueError(f"{PLAN_ENV}={name!r}: expected one of {', '.join(PLANS)}")
    return PLANS[name]


@contextlib.contextmanager
def use_plan(name: str) -> Iterator[Plan]:
    """Force plan ``name`` while tracing inside the block (already compiled programs keep theirs)."""
    if name not in PLANS:
        raise ValueError(f"unknown plan {name!r}: expected one of {', '.join(PLANS)}")
    _forced.append(name)
    try:
        yield PLANS[name]
    finally:
        _forced.pop()

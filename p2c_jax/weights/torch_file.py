"""``torch.save`` files of tensors read without PyTorch, as NumPy arrays.

Both formats: the zip archive of torch >= 1.6 and the legacy stream of earlier versions (the
original's weights date from torch 1.4). Unpickling builds only dicts, lists, tuples and
tensors; any other global is refused, so a file can never run code.

    obj = read(path)   # e.g. {"genA2B": {"ConvBlock1.1.weight": np.ndarray, ...}, ...}
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

from p2c_jax import paths

_ZIP_MAGIC = b"PK\x03\x04"  # a zip archive's first local file header
_CUT_SHORT = "the file ends early (truncated?)"
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# torch's storage classes by name, as the pickles reference them
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class TorchFileError(ValueError):
    """The file is not a ``torch.save`` file of tensors that this reader can rebuild."""


@dataclass(frozen=True)
class _StorageType:
    dtype: np.dtype


@dataclass(frozen=True)
class _Storage:
    """A storage the pickle refers to; its bytes live elsewhere in the file, its dtype in the
    unpickler's ``storages``."""

    key: str
    offset: int = 0  # elements into the root storage (legacy views)


@dataclass(frozen=True)
class _Tensor:
    """A tensor to build once the storages are read."""

    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage, offset, shape, stride, *_unused) -> _Tensor:
    return _Tensor(storage, offset, tuple(shape), tuple(stride))


def _rebuild_parameter(tensor, *_unused) -> _Tensor:
    return tensor


_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(np.dtype(dtype)) for name, dtype in _STORAGE_DTYPES.items()},
}


class Unpickler(pickle.Unpickler):
    """Unpickles tensors and containers only (any other global is refused); records the dtype
    of every storage it meets in ``storages``."""

    def __init__(self, file: BinaryIO):
        super().__init__(file)
        self.storages: dict[str, np.dtype] = {}  # key -> dtype of every storage referenced

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _GLOBALS[module, name]
        except KeyError:
            raise TorchFileError(
                f"refused to unpickle {module}.{name}: only tensors and containers are read"
            ) from None

    def persistent_load(self, pid: tuple) -> _Storage:
        # zip: ('storage', type, key, location, numel); legacy adds view metadata
        if not (
            isinstance(pid, tuple) and pid[:1] == ("storage",) and isinstance(pid[1], _StorageType)
        ):
            raise TorchFileError(f"unknown persistent id {pid!r:.80}")
        key, dtype = str(pid[2]), pid[1].dtype
        self.storages[key] = dtype
        view = pid[5] if len(pid) > 5 else None
        return _Storage(key, int(view[1]) if view is not None else 0)


def rebuild(obj: Any, storage: Callable[[str], np.ndarray]) -> Any:
    """``obj`` with every ``_Tensor`` replaced by an array of its own memory; ``storage(key)``
    is the flat array of a storage."""
    if isinstance(obj, _Tensor):
        flat = storage(obj.storage.key)[obj.storage.offset + obj.offset :]
        size = int(np.prod(obj.shape))
        end = sum((n - 1) * s for n, s in zip(obj.shape, obj.stride)) + 1 if size else 0
        if end > flat.size:
            raise TorchFileError(f"a tensor of shape {obj.shape} overruns its storage")
        strides = tuple(s * flat.itemsize for s in obj.stride)
        return np.lib.stride_tricks.as_strided(flat, obj.shape, strides).copy()
    if isinstance(obj, dict):
        return type(obj)((k, rebuild(v, storage)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(rebuild(v, storage) for v in obj)
    return obj


def _read_zip(path: BinaryIO) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pkl = next((n for n in names if n.endswith("data.pkl")), None)
        if pkl is None:
            raise TorchFileError("a zip archive without data.pkl")
        prefix = pkl[: -len("data.pkl")]
        if prefix + "byteorder" in names and archive.read(prefix + "byteorder") != b"little":
            raise TorchFileError("big-endian tensors are not supported")
        with archive.open(pkl) as f:
            unpickler = Unpickler(f)
            obj = unpickler.load()
        cache: dict[str, np.ndarray] = {}

        def storage(key: str) -> np.ndarray:
            if key not in cache:
                cache[key] = np.frombuffer(
                    archive.read(f"{prefix}data/{key}"), unpickler.storages[key]
                )
            return cache[key]

        return rebuild(obj, storage)


def _read_legacy(f: BinaryIO) -> Any:
    plain = Unpickler(f)
    if plain.load() != _LEGACY_MAGIC:
        raise TorchFileError("neither a zip archive nor a legacy torch.save stream")
    if plain.load() != _LEGACY_PROTOCOL:
        raise TorchFileError("unsupported legacy protocol version")
    sys_info = plain.load()
    if not sys_info.get("little_endian", True):
        raise TorchFileError("big-endian tensors are not supported")
    main = Unpickler(f)
    obj = main.load()
    storages = {}
    for key in Unpickler(f).load():  # each: int64 element count, then the elements
        head = f.read(8)
        if len(head) != 8:
            raise TorchFileError(_CUT_SHORT)
        count = int(np.frombuffer(head, "<i8")[0])
        dtype = main.storages[str(key)]
        data = f.read(count * dtype.itemsize)
        if len(data) != count * dtype.itemsize:
            raise TorchFileError(_CUT_SHORT)
        storages[str(key)] = np.frombuffer(data, dtype)
    return rebuild(obj, storages.__getitem__)


def read(path: str | Path) -> Any:
    """The object ``torch.save`` wrote to ``path`` (local or ``gs://``), tensors as NumPy arrays.

    Raises ``FileNotFoundError``, or ``TorchFileError`` for anything that is not a file of
    tensors in containers.
    """
    path = paths.as_path(path)
    if path.is_dir():
        raise TorchFileError(f"{path} is a directory")
    try:
        data = io.BytesIO(path.read_bytes())
        if zipfile.is_zipfile(data):
            return _read_zip(data)
        if data.getvalue().startswith(_ZIP_MAGIC):  # no directory at the end: cut short
            raise TorchFileError(_CUT_SHORT)
        data.seek(0)  # is_zipfile read the end
        return _read_legacy(data)
    except (TorchFileError, FileNotFoundError):
        raise
    except EOFError:  # a pickle cut short
        raise TorchFileError(_CUT_SHORT) from None
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file fails in many ways
        raise TorchFileError(f"{type(e).__name__}: {e}") from None

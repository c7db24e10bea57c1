"""The torch-free reader of torch.save files against torch.load, in both formats."""

import subprocess
import sys
from collections import OrderedDict

import jax
import numpy as np
import pytest
import torch

from p2c_jax.pytorch import nets as torch_port
from p2c_jax.weights import torch_file
from p2c_jax.weights.convert import load_torch

FORMATS = pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])


def _save(obj, path, legacy: bool):
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def _bits(t: torch.Tensor) -> tuple:
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    a = t.contiguous().numpy()
    return a.dtype.str, a.shape, a.tobytes()


def _assert_same(ours, ref, where="") -> None:
    if isinstance(ref, torch.Tensor):
        assert isinstance(ours, np.ndarray), where
        a = ours.view(np.int16) if ref.dtype == torch.bfloat16 else ours
        assert (a.dtype.str, a.shape, np.ascontiguousarray(a).tobytes()) == _bits(ref), where
        assert ours.base is None, where  # its own memory, not the file's buffer
    elif isinstance(ref, dict):
        assert type(ours) is type(ref) and list(ours) == list(ref), where
        for k in ref:
            _assert_same(ours[k], ref[k], f"{where}.{k}")
    else:
        assert type(ours) is type(ref) and len(ours) == len(ref), where
        for i, (o, r) in enumerate(zip(ours, ref)):
            _assert_same(o, r, f"{where}[{i}]")


@FORMATS
def test_reads_what_torch_wrote(tmp_path, legacy):
    torch.manual_seed(0)
    base = torch.randn(5, 6)
    obj = {
        "facenet": torch_port.MobileFaceNet(16).state_dict(),  # BatchNorm's int64 counters too
        "views": OrderedDict(
            rows=base[1:4], strided=base[:, ::2], transposed=base.t(), whole=base
        ),  # four tensors over one storage
        "dtypes": [
            torch.randn(3).double(),
            torch.randn(3).half(),
            torch.randn(3).bfloat16(),
            torch.tensor([True, False]),
            torch.arange(4, dtype=torch.int8),
            torch.arange(4, dtype=torch.uint8),
            torch.arange(4, dtype=torch.int32),
            torch.arange(4, dtype=torch.int16),
        ],
        "scalars": (torch.tensor(7), torch.tensor(2.5), torch.zeros(0, 3)),
        "param": torch.nn.Parameter(torch.randn(2, 2)),
    }
    path = _save(obj, tmp_path / "x.pt", legacy)
    ref = torch.load(path, weights_only=True)
    ref["param"] = ref["param"].data
    _assert_same(torch_file.read(path), ref)


class _Payload:
    """Unpickling this would create a directory."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        import os

        return os.makedirs, (self.target,)


@FORMATS
def test_refuses_code(tmp_path, legacy):
    target = tmp_path / "created"
    path = _save({"w": torch.zeros(2), "x": _Payload(target)}, tmp_path / "x.pt", legacy)
    with pytest.raises(
        torch_file.TorchFileError, match=r"refused to unpickle (posix|os)\.makedirs"
    ):
        torch_file.read(path)
    assert not target.exists()


@FORMATS
def test_truncated_and_foreign_files(tmp_path, legacy):
    whole = _save({"w": torch.randn(100)}, tmp_path / "whole.pt", legacy).read_bytes()
    for i, content in enumerate(
        [whole[: len(whole) - 200], whole[:40], b"not a checkpoint", b"PK\x03\x04 looks like a zip"]
    ):
        path = tmp_path / f"bad{i}.pt"
        path.write_bytes(content)
        with pytest.raises(torch_file.TorchFileError):
            torch_file.read(path)
    with pytest.raises(FileNotFoundError):
        torch_file.read(tmp_path / "missing.pt")


def test_legacy_and_zip_load_the_same_weights(tmp_path):
    gen = torch_port.ResnetGenerator(4, 32, light=True)
    with torch.no_grad():
        for p in gen.parameters():
            p.normal_()
    nets = {"genA2B": gen.state_dict(), "disGA": torch_port.Discriminator(3, 4, 7).state_dict()}
    a = load_torch(_save(nets, tmp_path / "zip.pt", legacy=False))
    b = load_torch(_save(nets, tmp_path / "legacy.pt", legacy=True))
    for net in nets:
        assert a[net][0] == b[net][0]
        for x, y in zip(jax.tree.leaves(a[net][1]), jax.tree.leaves(b[net][1]), strict=True):
            assert np.array_equal(x, y)


def test_loading_original_weights_imports_no_torch(tmp_path):
    path = tmp_path / "photo2cartoon_weights.pt"
    torch.save({"genA2B": torch_port.ResnetGenerator(4, 32, light=True).state_dict()}, path)
    code = (
        "import sys, numpy as np, p2c_jax\n"
        f"gen = p2c_jax.load_generator({str(path)!r})\n"
        "image = gen(np.zeros((1, 32, 32, 3), np.float32))[0]\n"
        "assert image.shape == (1, 32, 32, 3)\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

"""Outputs follow the umask as ``open()`` would: the atomic writes (``preprocessing.files.write_atomic``,
``paths.write_bytes_atomic`` / ``write_text_atomic``), the preprocessing run's PNGs and report,
and the demo dataset's folder. The reference is what a plain ``open(path, "w")`` (a plain
``mkdir``) gives under the same umask."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from p2c_jax import paths
from preprocessing.files import write_atomic
from preprocessing.io import encode_png
from preprocessing.pipeline import as_is, run

UMASKS = {0o022: 0o644, 0o077: 0o600, 0o002: 0o664}


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def reference(folder: Path) -> int:
    """The mode of a file made by ``open(path, "w")`` under the current umask."""
    p = folder / "reference.txt"
    with open(p, "w") as f:
        f.write("x")
    m = mode(p)
    p.unlink()
    return m


@pytest.mark.parametrize("mask", sorted(UMASKS))
def test_atomic_writes_follow_the_umask(tmp_path: Path, mask: int) -> None:
    with umask(mask):
        want = reference(tmp_path)
        assert want == UMASKS[mask]
        write_atomic(tmp_path / "io.bin", b"abc")
        write_atomic(tmp_path / "sub" / "fsync.bin", b"abc", fsync=True)
        paths.write_bytes_atomic(tmp_path / "bytes.bin", b"abc")
        paths.write_text_atomic(str(tmp_path / "text.json"), "{}")
        # overwriting makes a new file, of the same mode
        (tmp_path / "old.bin").write_bytes(b"old")
        os.chmod(tmp_path / "old.bin", 0o600 if mask != 0o077 else 0o644)
        write_atomic(tmp_path / "old.bin", b"new")
    for name in ("io.bin", "sub/fsync.bin", "bytes.bin", "text.json", "old.bin"):
        assert mode(tmp_path / name) == want, (name, oct(mode(tmp_path / name)), oct(want))
    assert (tmp_path / "old.bin").read_bytes() == b"new"
    leftovers = [p.name for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers


def test_a_failed_write_leaves_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def fail(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(tmp_path / "f.bin", b"abc")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_preprocessing_outputs_follow_the_umask(tmp_path: Path, mask: int) -> None:
    photo = tmp_path / "in" / "photo.png"
    photo.parent.mkdir()
    photo.write_bytes(encode_png(np.full((40, 40, 3), 128, np.uint8)))
    out = tmp_path / "out"
    with umask(mask):
        want = reference(tmp_path)
        summary = run([(photo, "photo.png")], out, as_is, progress=False)
    assert summary.exit_code == 0
    assert mode(out / "photo.png") == want
    assert mode(out / "report.jsonl") == want


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_demo_dataset_folder_follows_the_umask(tmp_path: Path, mask: int) -> None:
    from p2c_jax.data.demo import build_demo

    with umask(mask):
        ref = tmp_path / "reference"
        ref.mkdir()
        want = mode(ref)
        root = build_demo(tmp_path / "demo", n_train=1, n_test=1, size=32)
    assert mode(root) == want == 0o777 & ~mask
    assert mode(root / "trainA") == want
    assert mode(next((root / "trainA").iterdir())) == 0o666 & ~mask

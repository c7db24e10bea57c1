"""bench/accelerator.py runs as it will on a GPU machine: a copy of this tree with only jax, flax,
optax, orbax, numpy and torch installed (the rest of our dependencies blocked), at smoke sizes
on CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

_ONLY_THE_GPU_MACHINES_PACKAGES = """
import importlib.abc, runpy, sys
BLOCKED = {"cv2", "PIL", "tqdm", "tensorboardX", "tensorflow", "skimage", "dlib",
           "onnx", "onnxruntime", "starlette", "gcsfs"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not on the GPU machine")
sys.meta_path.insert(0, Block())
"""
_BENCH = 'sys.argv = ["bench/accelerator.py", "--smoke", "--budget_s", "900"]\n' + (
    'runpy.run_path("bench/accelerator.py", run_name="__main__")\n'
)
# what the bench imports from us: the nets, inference, the training step, the checkpoint reader
_BENCH_MODULES = ("p2c_jax.inference", "p2c_jax.train.step", "p2c_jax.weights.checkpoint")


def _on_the_gpu_machines_packages(code: str, timeout: float) -> str:
    """Runs ``code`` in a fresh Python with only the GPU machine's packages; its stdout."""
    out = subprocess.run(
        [sys.executable, "-c", _ONLY_THE_GPU_MACHINES_PACKAGES + code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_the_bench_imports_need_only_the_gpu_machines_packages():
    """The fast check of the smoke run's first failure (the core pulling in OpenCV)."""
    _on_the_gpu_machines_packages("".join(f"import {m}\n" for m in _BENCH_MODULES), 300)


@pytest.mark.bench
def test_accelerator_bench_smoke():
    """The whole bench, as before a device run (3-7 min on two cores: not in CI's tiers)."""
    lines = _on_the_gpu_machines_packages(_BENCH, 1500).splitlines()
    generator = [line for line in lines if line.startswith(("| float32 |", "| bfloat16 |"))]
    assert len(generator) == 2 * 2 + 1  # two precisions x two batches, then the float32 step
    for row in generator[:4]:
        ours, torch_eager = (float(c) for c in row.split("|")[3:5])
        assert ours > 0 and torch_eager > 0, row
    steps = generator[4:]
    for row in steps:
        cells = [c.strip() for c in row.split("|")]
        assert float(cells[3]) > 0 and float(cells[4]) > 0, row  # ours and torch s/step

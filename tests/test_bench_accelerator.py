"""bench/accelerator.py runs as it will on a GPU machine: only jax, flax, optax, orbax, numpy
and torch importable (the rest of our dependencies blocked), at smoke sizes on CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_ONLY_THE_GPU_MACHINES_PACKAGES = """
import importlib.abc, runpy, sys
BLOCKED = {"cv2", "PIL", "tqdm", "tensorboardX", "tensorflow", "skimage", "dlib",
           "preprocessing", "onnx", "onnxruntime", "starlette", "gcsfs"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not on the GPU machine")
sys.meta_path.insert(0, Block())
sys.argv = ["bench/accelerator.py", "--smoke", "--budget_s", "900"]
runpy.run_path("bench/accelerator.py", run_name="__main__")
"""


@pytest.mark.slow
def test_accelerator_bench_smoke():
    out = subprocess.run(
        [sys.executable, "-c", _ONLY_THE_GPU_MACHINES_PACKAGES],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=1500,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    generator = [line for line in lines if line.startswith(("| float32 |", "| bfloat16 |"))]
    assert len(generator) == 2 * 2 + 1  # two precisions x two batches, then the float32 step
    for row in generator[:4]:
        ours, torch_eager = (float(c) for c in row.split("|")[3:5])
        assert ours > 0 and torch_eager > 0, row
    steps = generator[4:]
    for row in steps:
        cells = [c.strip() for c in row.split("|")]
        assert float(cells[3]) > 0 and float(cells[4]) > 0, row  # ours and torch s/step

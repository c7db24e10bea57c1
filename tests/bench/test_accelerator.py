"""bench/accelerator.py runs as it will on a GPU machine: a copy of this tree with only jax, flax,
optax, orbax, numpy and torch installed (the rest of our dependencies blocked), at smoke sizes
on CPU."""

from __future__ import annotations

import subprocess
import sys
import time
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


def _table(lines: list[str], header: str) -> list[list[str]]:
    """The cells of each row of the Markdown table whose header line starts with ``header``."""
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:  # after the header and its |---| line
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def _close(printed: str, value: float) -> bool:
    """A figure printed with 3 significant digits (of a ratio of two such figures) is ``value``."""
    return abs(float(printed.rstrip("x")) - value) <= 0.015 * value


@pytest.mark.bench
def test_accelerator_bench_smoke():
    """The whole bench, as before a device run (3-7 min on two cores: not in CI's tiers): the
    tables have the smoke sizes' rows, the ratios are those of the times, and the times fit in
    the run's wall time (each configuration runs once to warm up, then twice timed)."""
    t0 = time.monotonic()
    lines = _on_the_gpu_machines_packages(_BENCH, 1500).splitlines()
    wall = time.monotonic() - t0
    assert lines[0].startswith("# cpu;"), lines[0]
    generator = _table(lines, "| generator |")
    assert [(r[0], r[1]) for r in generator] == [
        (p, b) for p in ("float32", "bfloat16") for b in ("1", "2")
    ]
    busy = 0.0  # seconds the printed figures account for
    for _, batch, ours, eager, compiled, ratio, compile_s in generator:
        ours, eager = float(ours), float(eager)  # img/s
        assert compiled == "-"  # torch.compile is skipped on CPU
        assert _close(ratio, ours / eager)
        assert float(compile_s) > 0  # each batch shape compiles once
        busy += 3 * int(batch) * (1 / ours + 1 / eager)
    (step,) = _table(lines, "| training step |")
    assert not any(c.startswith(("skipped", "failed")) for c in step), step  # e.g. out of time
    precision, batch, ours, torch_s, speed_up, compile_s, ours_gb, torch_gb = step
    assert (precision, batch, ours_gb, torch_gb) == ("float32", "1", "-", "-")  # no GB on CPU
    assert _close(speed_up, float(torch_s) / float(ours))
    assert float(compile_s) > 0
    busy += 3 * (float(ours) + float(torch_s))
    assert 0 < busy < wall, (busy, wall)

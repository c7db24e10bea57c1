"""The package's boundaries: nothing but ``p2c_jax.pytorch`` needs torch, ``preprocessing``
never imports ``p2c_jax``, and the training flags are the config tree's fields."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A finder that makes torch impossible to import, as on an install without the torch extra.
_NO_TORCH = """
import importlib, importlib.abc, pkgutil, sys
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"No module named {name!r} (blocked)")
sys.meta_path.insert(0, NoTorch())
import p2c_jax
failed = []
for info in pkgutil.walk_packages(p2c_jax.__path__, "p2c_jax."):
    if info.name.startswith("p2c_jax.pytorch"):
        continue
    try:
        importlib.import_module(info.name)
    except Exception as e:
        failed.append(f"{info.name}: {type(e).__name__}: {e}")
print("FAILED", failed)
try:
    import p2c_jax.pytorch
except ImportError as e:
    print("PYTORCH", e)
"""


def test_every_module_but_the_pytorch_port_imports_without_torch():
    out = subprocess.run(
        [sys.executable, "-c", _NO_TORCH], capture_output=True, text=True, cwd=ROOT, check=True
    ).stdout
    assert "FAILED []" in out, out
    assert "pip install 'p2c-jax[torch]'" in out.split("PYTORCH", 1)[1], out


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_preprocessing_imports_nothing_of_p2c_jax():
    for path in (ROOT / "preprocessing").glob("*.py"):
        assert not {n for n in _imports(path) if n.split(".")[0] == "p2c_jax"}, path


def test_pytorch_port_is_imported_lazily():
    """Outside ``p2c_jax.pytorch`` no module imports torch or the port at module level."""
    for path in (ROOT / "p2c_jax").rglob("*.py"):
        if "pytorch" in path.parts:
            continue
        top = ast.parse(path.read_text()).body
        for node in top:
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                )
                assert not any(
                    n.split(".")[0] == "torch" or n.startswith("p2c_jax.pytorch") for n in names
                ), (path, names)


def test_training_flags_are_the_config_fields():
    """Every leaf field of the config tree is a train.py flag with its default, and every flag
    but the original's unused ones and the multi-host ones is a config field."""
    from p2c_jax.cli.train import build_parser
    from p2c_jax.train.config import Config, Hparams

    parser = build_parser()
    flags = {a.dest: a.default for a in parser._actions if a.dest != "help"}
    fields = {
        f.name: f.default
        for cls in (Config, Hparams)
        for f in dataclasses.fields(cls)
        if f.name != "hparams"
    }
    assert {k: flags[k] for k in fields} == fields
    cli_only = {"phase", "n_dis", "img_ch", "gpu_ids", "benchmark_flag"}
    cli_only |= {"coordinator_address", "num_processes", "process_id", "compile_cache"}
    assert set(flags) - set(fields) == cli_only
    # the original's defaults
    assert (fields["lr"], fields["cycle_weight"], fields["cam_weight"], fields["ch"]) == (
        1e-4,
        50.0,
        1000.0,
        32,
    )


def test_training_functions_are_short():
    """Each function of the training package fits on a screen (60 lines): the loop is
    ``setup`` and ``run`` made of named parts, the step a sequence of named stages."""
    long = []
    for path in (ROOT / "p2c_jax" / "train").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > 60:
                    long.append(f"{path.name}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long

"""Every module imports without the optional extras (torch, serve, export, eval, preprocess,
gcs, beam), the torch side and the modules that need an extra at module level aside; those raise an
ImportError naming the extra to install."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

BLOCKED = (
    "torch",
    "torchvision",
    "starlette",
    "uvicorn",
    "multipart",
    "python_multipart",
    "onnx",
    "onnxruntime",
    "tensorflow",
    "gcsfs",
    "dlib",
    "matplotlib",
    "apache_beam",
)

# Modules that need an extra at module level, so are not expected to import here:
NEEDS_AN_EXTRA = {
    # the PyTorch port: the torch extra (its own message, tests/test_layout.py)
    "p2c_jax.pytorch": "p2c-jax[torch]",
    # the ASGI app and its uvicorn protocol: Starlette, python-multipart and uvicorn at module
    # level (the serve extra)
    "p2c_jax.serve.app": "p2c-jax[serve]",
    "p2c_jax.serve.connections": "p2c-jax[serve]",
    # the TFRecord writer: its tfds builder class subclasses a tensorflow-datasets class at
    # module level (the preprocess extra); only `python -m preprocessing` imports it, lazily
    "preprocessing.tfrecords": "p2c-jax[preprocess]",
    # p2c-preprocess's pipeline: its DoFn subclasses Beam's at module level (the beam extra);
    # only `python -m preprocessing` imports it, lazily
    "preprocessing.beam_pipeline": "p2c-jax[beam]",
    # p2c-infer --runner: its ModelHandler and DoFns subclass Beam's at module level (the beam
    # extra); only p2c_jax.cli.infer imports it, lazily
    "p2c_jax.beam_inference": "p2c-jax[beam]",
}
# No module imports these two at module level (p2c_jax.cli.serve does in main()).

_SCRIPT = """
import importlib, importlib.abc, json, pkgutil, sys

BLOCKED = {blocked!r}
SKIP = {skip!r}

class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)", name=name)

sys.meta_path.insert(0, Blocked())

import p2c_jax
p2c_jax.load_generator  # the lazy public API
import preprocessing

failed, imported = [], []
for pkg in (p2c_jax, preprocessing):
    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        if any(info.name == s or info.name.startswith(s + ".") for s in SKIP):
            continue
        try:
            importlib.import_module(info.name)
            imported.append(info.name)
        except BaseException as e:
            failed.append(f"{{info.name}}: {{type(e).__name__}}: {{e}}")
errors = {{}}
for name in SKIP:
    try:
        importlib.import_module(name)
        errors[name] = None
    except ImportError as e:
        errors[name] = f"{{type(e).__name__}}: {{e}}"
import contextlib, io
from p2c_jax.cli.serve import main
stderr = io.StringIO()
with contextlib.redirect_stderr(stderr):
    cli = [main(["--weights", "nope.pt"]), stderr.getvalue()]
blocked = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
print(json.dumps({{
    "failed": failed, "imported": imported, "errors": errors, "blocked": blocked, "cli": cli
}}))
"""


def test_every_module_imports_without_the_optional_extras():
    script = _SCRIPT.format(blocked=BLOCKED, skip=tuple(NEEDS_AN_EXTRA))
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["failed"] == [], out["failed"]
    assert not out["blocked"], out["blocked"]
    # the walk found the packages' modules (not an empty walk)
    assert {"p2c_jax.inference", "p2c_jax.cli.serve", "preprocessing.io"} <= set(out["imported"])
    for name, extra in NEEDS_AN_EXTRA.items():
        err = out["errors"][name]
        assert err is not None, f"{name} imported with {BLOCKED} blocked: drop it from the list"
        if extra is not None:
            assert f"pip install '{extra}'" in err, err
    serve = out["errors"]["p2c_jax.serve.app"]
    assert "python-multipart" in serve or "starlette" in serve, serve
    # p2c-serve says so and exits 2 before loading the weights
    rc, stderr = out["cli"]
    assert rc == 2 and "pip install 'p2c-jax[serve]'" in stderr, stderr
    assert "unusable weights" not in stderr, stderr


def test_needs_names_the_package_and_the_extra():
    from preprocessing.extras import MissingExtraError, needs, require

    match = r"pip install 'p2c-jax\[serve\]'"
    with pytest.raises(MissingExtraError, match=match) as e, needs("serve", "the thing"):
        import p2c_absent_package_for_the_test  # noqa: F401
    assert e.value.name == "p2c_absent_package_for_the_test" and e.value.extra == "serve"
    assert str(e.value).startswith("the thing needs p2c_absent_package_for_the_test")
    assert isinstance(e.value, ModuleNotFoundError)
    # a missing module of ours is a bug: left as it is
    with pytest.raises(ModuleNotFoundError) as e:
        require("eval", "p2c_jax.no_such_module")
    assert not isinstance(e.value, MissingExtraError)
    assert require("eval", "json").dumps(1) == "1"

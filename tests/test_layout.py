"""The package's boundaries: nothing but ``p2c_jax.pytorch`` needs torch, ``preprocessing``
never imports ``p2c_jax``, the training flags are the config tree's fields, no import cycle,
and no import from a higher layer (``LAYERS``)."""

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
    cli_only |= {"compile_only", "topology", "num_slices", "max_batch_search"}
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


# ------------------------------------------------------------------ the import graph and its layers

# The package's parts, lowest first: a module imports from its own part or from a lower line,
# never from a higher line nor from another part of its own line. A part is a top-level module
# or sub-package of p2c_jax; ``preprocessing`` is one part, below all of p2c_jax; ``p2c_jax``
# (its __init__, the public API, loaded lazily) is above every part. ``p2c_jax.pytorch``, the
# torch side, is outside the order (its own rules are the tests above).
LAYERS = (
    ("preprocessing",),
    ("paths", "parallel", "topology", "aot"),
    ("aot_report",),
    ("nn",),
    ("weights",),
    ("data",),
    ("inference",),
    ("inference_report",),
    ("eval",),
    ("train",),
    ("export",),
    ("cartoonize",),
    ("whole_photo", "beam_inference"),
    ("serve",),
    ("cli",),
    ("p2c_jax",),
)
OUTSIDE_THE_ORDER = ("pytorch",)


@dataclasses.dataclass(frozen=True)
class Arrow:
    """Module ``source`` imports module ``target`` at ``where`` (file:line)."""

    source: str
    target: str
    where: str


def _modules(root: Path) -> dict[str, Path]:
    """Every module of p2c_jax and preprocessing under ``root`` by dotted name (a package by
    its own name)."""
    found = {}
    for package in ("p2c_jax", "preprocessing"):
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _arrows(root: Path = ROOT) -> list[Arrow]:
    """Every import between those modules, at module level or inside a function: ``from a.b
    import c`` is an arrow to ``a.b.c`` where that is a module, else to ``a.b``; relative
    imports resolved."""
    modules = _modules(root)
    arrows = []
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join([*package[: len(package) - node.level + 1], base]).strip(".")
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                    for a in node.names
                ]
            else:
                continue
            where = f"{path.relative_to(root)}:{node.lineno}"
            arrows += [Arrow(name, t, where) for t in targets if t in modules and t != name]
    return arrows


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[0] if parts[0] != "p2c_jax" or len(parts) == 1 else parts[1]


def _cycles(arrows: list[Arrow]) -> list[str]:
    """A shortest cycle through each module that lies on one (each cycle once), as
    ``a (where a imports b) -> b (where b imports a) -> a``."""
    graph: dict[str, list[Arrow]] = {}
    for a in arrows:
        graph.setdefault(a.source, []).append(a)
    cycles, seen = [], set()
    for start in sorted(graph):
        path_to = {start: []}
        frontier, found = [start], None
        while frontier and found is None:
            reached = []
            for node in frontier:
                for a in graph.get(node, []):
                    if a.target == start:
                        found = found or [*path_to[node], a]
                    elif a.target not in path_to:
                        path_to[a.target] = [*path_to[node], a]
                        reached.append(a.target)
            frontier = reached
        if found and frozenset(a.source for a in found) not in seen:
            seen.add(frozenset(a.source for a in found))
            cycles.append(" -> ".join([*(f"{a.source} ({a.where})" for a in found), start]))
    return cycles


def _upward(arrows: list[Arrow]) -> list[str]:
    """The arrows from a part to another part that is not below it in ``LAYERS``."""
    rank = {part: i for i, line in enumerate(LAYERS) for part in line}
    return [
        f"{a.source} -> {a.target} ({a.where}): {_part(a.source)} is "
        + ("below" if rank[_part(a.source)] < rank[_part(a.target)] else "beside")
        + f" {_part(a.target)}"
        for a in arrows
        if not {_part(a.source), _part(a.target)} & set(OUTSIDE_THE_ORDER)
        and _part(a.source) != _part(a.target)
        and rank[_part(a.source)] <= rank[_part(a.target)]
    ]


def test_every_part_has_its_layer():
    parts = {_part(m) for m in _modules(ROOT)} - set(OUTSIDE_THE_ORDER)
    missing = parts - {p for line in LAYERS for p in line}
    assert not missing, f"parts of the package missing from LAYERS: {sorted(missing)}"


def test_no_import_cycle():
    """No module imports itself through others, counting imports inside functions: neither
    side of a cycle can be read, tested or moved without the other."""
    cycles = _cycles(_arrows())
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_import_from_a_higher_layer():
    upward = _upward(_arrows())
    assert not upward, "imports from a part not below the importer's:\n" + "\n".join(upward)


def test_the_checks_find_cycles_and_upward_imports(tmp_path):
    """On a made-up package: a relative import at module level, an absolute one inside a
    function, a package's ``__init__`` re-exporting a name."""
    files = {
        "p2c_jax/__init__.py": "",
        "p2c_jax/paths.py": "def f():\n    from p2c_jax.nn import layers\n",
        "p2c_jax/nn/__init__.py": "from .layers import g\n",
        "p2c_jax/nn/layers.py": "from ..paths import f\n\ng = f\n",
        "p2c_jax/cli/__init__.py": "from p2c_jax.nn import g\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    arrows = _arrows(tmp_path)
    assert sorted(arrows, key=lambda a: a.where) == [
        Arrow("p2c_jax.cli", "p2c_jax.nn", "p2c_jax/cli/__init__.py:1"),
        Arrow("p2c_jax.nn", "p2c_jax.nn.layers", "p2c_jax/nn/__init__.py:1"),
        Arrow("p2c_jax.nn.layers", "p2c_jax.paths", "p2c_jax/nn/layers.py:1"),
        Arrow("p2c_jax.paths", "p2c_jax.nn.layers", "p2c_jax/paths.py:2"),
    ]
    assert _cycles(arrows) == [
        "p2c_jax.nn.layers (p2c_jax/nn/layers.py:1) -> p2c_jax.paths (p2c_jax/paths.py:2)"
        " -> p2c_jax.nn.layers"
    ]
    assert _upward(arrows) == [
        "p2c_jax.paths -> p2c_jax.nn.layers (p2c_jax/paths.py:2): paths is below nn"
    ]

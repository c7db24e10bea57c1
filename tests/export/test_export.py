"""p2c-export: each format run by its own runtime equals our JAX generator (max abs <= 1e-4)
for weights given as the original .pt, our checkpoint and a training workdir, at batch 1 and 3;
the ONNX file has the original's interface; bad input writes nothing.

The default tier runs no export runtime: bad input, an unknown net or an existing --dst, a
failed check (runtime and reference stubbed), and a StableHLO file of a small perturbed
generator (ngf 8, 64 x 64) loaded by ``p2c_jax.load_exported``. The slow tier has the rest:
the StableHLO file from every source in a fresh jax, and at 256 x 256 (the released file's size)
on the aligned photos through the command line with the export's check: the ONNX interface,
TFLite and SavedModel each from one weights source; bfloat16 StableHLO."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch
from helpers import DATA
from helpers.reference import numpy_state_dict, perturb

import p2c_jax
from p2c_jax.cli.export import main
from p2c_jax.export import ExportError, Request, export_state, runner
from p2c_jax.export.common import probe_images
from p2c_jax.inference import forward
from p2c_jax.nn.models import NetSpec
from p2c_jax.pytorch import nets as torch_port
from p2c_jax.weights.checkpoint import nets_to_tree, save_nets
from p2c_jax.weights.convert import save_torch, spec_from_state_dict, state_from_torch

SIZE = 64
TOL = 1e-4
SOURCES = ("pt", "checkpoint", "workdir")


def generator(ngf: int, size: int, seed: int) -> tuple[NetSpec, object]:
    """A perturbed light generator (rho, w_gamma/w_beta, LIN off their initial values)."""
    torch.manual_seed(seed)
    model = perturb(torch_port.ResnetGenerator(ngf, img_size=size, light=True), seed)
    sd = numpy_state_dict(model)
    spec = NetSpec("generator", ngf, img_size=size, light=True)
    assert spec_from_state_dict("genA2B", sd).ch == ngf
    return spec, state_from_torch(spec, sd)


def write_sources(root: Path, ngf: int, size: int) -> tuple[NetSpec, object, dict[str, Path]]:
    """The same genA2B (genB2A another) as an original .pt, our checkpoint and a training
    workdir whose latest step holds it (an earlier step holds other weights)."""
    spec, state = generator(ngf, size, seed=1)
    other = generator(ngf, size, seed=2)
    weights = {"genA2B": (spec, state), "genB2A": other}
    paths = {"pt": root / "photo2cartoon_weights.pt", "checkpoint": root / "ckpt"}
    save_torch(paths["pt"], weights)
    save_nets(paths["checkpoint"], weights)
    paths["workdir"] = root / "workdir"
    with ocp.CheckpointManager(
        paths["workdir"] / "checkpoints", item_names=("nets", "config")
    ) as manager:
        for step, w in ((10, {"genA2B": other, "genB2A": other}), (20, weights)):
            nets, config = nets_to_tree(w)
            manager.save(
                step,
                args=ocp.args.Composite(
                    nets=ocp.args.StandardSave(nets), config=ocp.args.JsonSave(config)
                ),
            )
        manager.wait_until_finished()
    return spec, state, paths


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[NetSpec, object, dict[str, Path]]:
    return write_sources(tmp_path_factory.mktemp("small"), 8, SIZE)


def faces(n: int, size: int, photos: bool = False) -> np.ndarray:
    """``n`` probe faces, then with ``photos`` the aligned photos of tests/data
    (resized as ``--no_preprocess`` does), NHWC float32 in [-1,1]."""
    x = [probe_images(n, size)]
    for p in sorted((DATA / "images").glob("aligned_photo_*.png")) if photos else []:
        rgb = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
        x.append(cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)[None] / 127.5 - 1)
    return np.concatenate(x).astype(np.float32)


def ours(spec: NetSpec, state, x: np.ndarray) -> np.ndarray:
    return np.asarray(forward(spec)(state, x)[0])


def assert_equal_in_batches(run, spec, state, x: np.ndarray, batches=(1, 3)) -> None:
    want = ours(spec, state, x)
    for n in batches:
        for i in range(0, len(x) - n + 1, n):
            got = run(x[i : i + n])
            assert got.shape == (n, spec.img_size, spec.img_size, 3)
            assert np.abs(got - want[i : i + n]).max() <= TOL


def cli(*args) -> int:
    return main([*map(str, args), "--compile_cache", "none"])


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--net", "genB2A"], "has no genB2A"),
        (["--format", "onnx", "--precision", "bfloat16"], "onnx supports --precision float32"),
        (["--format", "tflite", "--precision", "bfloat16"], "tflite supports --precision float32"),
        (["--format", "savedmodel", "--precision", "bfloat16"], "savedmodel supports"),
        (["--format", "tflite", "--batch", "dynamic"], "tflite needs a fixed --batch N"),
        (["--weights", "missing.pt"], "no such file"),
    ],
)
def test_bad_input_one_error_nothing_written(tmp_path, capsys, args, message):
    spec, state = generator(4, 32, seed=0)
    save_torch(tmp_path / "a2b_only.pt", {"genA2B": (spec, state)})
    before = listing(tmp_path)
    opts = {"--weights": tmp_path / "a2b_only.pt", "--format": "stablehlo"}
    for flag, value in zip(args[::2], args[1::2]):
        opts[flag] = tmp_path / value if flag == "--weights" else value
    assert cli(*[a for kv in opts.items() for a in kv], "--dst", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert listing(tmp_path) == before


def test_unknown_net_and_existing_dst(tmp_path, capsys):
    spec, state = generator(4, 32, seed=0)
    save_torch(tmp_path / "w.pt", {"genA2B": (spec, state)})
    with pytest.raises(SystemExit) as e:
        cli("--weights", tmp_path / "w.pt", "--net", "disGA", "--format", "onnx", "--dst", "x")
    assert e.value.code == 2 and "invalid choice: 'disGA'" in capsys.readouterr().err
    with pytest.raises(ExportError, match="unknown net 'genC2D'"):
        p2c_jax.export.export(tmp_path / "w.pt", "genC2D", Request("onnx", tmp_path / "y"))
    (tmp_path / "taken.onnx").write_text("keep")
    assert (
        cli("--weights", tmp_path / "w.pt", "--format", "onnx", "--dst", tmp_path / "taken.onnx")
        == 2
    )
    assert "already exists (--force replaces it)" in capsys.readouterr().err
    assert (tmp_path / "taken.onnx").read_text() == "keep"
    full = NetSpec("generator", 4, img_size=32, light=False)
    with pytest.raises(ExportError, match="not light"):
        export_state(full, None, Request("stablehlo", tmp_path / "x", img_size=64))


def test_a_file_not_within_the_tolerance_is_not_written(tmp_path, capsys, monkeypatch):
    """The export's check failing: exit 1, the reason, nothing at --dst (runtime and reference
    replaced by constants 1e-3 apart, so nothing compiles)."""
    spec, state = generator(4, 32, seed=0)
    save_torch(tmp_path / "w.pt", {"genA2B": (spec, state)})
    monkeypatch.setattr("p2c_jax.export.runner", lambda fmt, path: lambda x: x * 0 + 1e-3)
    monkeypatch.setattr("p2c_jax.export.common.reference", lambda spec, state, x, p: x * 0)
    dst = tmp_path / "g.stablehlo"
    args = ("--weights", tmp_path / "w.pt", "--format", "stablehlo", "--img_size", 32)
    assert cli(*args, "--dst", dst) == 1
    err = capsys.readouterr().err
    assert "max |diff| 1.00e-03" in err and "NOT within 0.0001" in err
    assert "nothing written" in err and listing(tmp_path) == ["w.pt"]


# ------------------------------------------------------------------------------ StableHLO


FRESH = textwrap.dedent(
    """
    import sys
    import numpy as np
    from jax import export
    exported = export.deserialize(bytearray(open(sys.argv[1], "rb").read()))
    x = np.load(sys.argv[2])
    out = [np.asarray(exported.call(x[i : i + n])) for n in (1, 3) for i in range(0, len(x) - n + 1, n)]
    np.save(sys.argv[3], np.concatenate(out))
    assert "p2c_jax" not in sys.modules and "flax" not in sys.modules, sorted(sys.modules)
    print(exported.in_avals, exported.out_avals, exported.platforms)
    """
)


@pytest.mark.slow
def test_stablehlo_from_each_source_runs_in_a_fresh_jax(small, tmp_path, capsys):
    """Same weights from .pt, checkpoint and workdir: byte-identical files; one deserialised in a
    process that imports only jax and numpy equals our generator at batch 1 and 3."""
    spec, state, paths = small
    files = {}
    for source in SOURCES:
        files[source] = tmp_path / f"{source}.stablehlo"
        check = [] if source == "pt" else ["--no_check"]  # the first runs the export's check
        assert (
            cli(
                "--weights",
                paths[source],
                "--format",
                "stablehlo",
                "--dst",
                files[source],
                "--img_size",
                SIZE,
                *check,
            )
            == 0
        )
    out = capsys.readouterr().out
    assert "checked: batch 1+3" in out and "vs our float32 generator (within 0.0001)" in out
    blobs = {s: f.read_bytes() for s, f in files.items()}
    assert blobs["pt"] == blobs["checkpoint"] == blobs["workdir"]

    x = faces(6, SIZE, photos=True)
    x = x[: len(x) // 3 * 3]
    np.save(tmp_path / "x.npy", x)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", FRESH, files["workdir"], tmp_path / "x.npy", tmp_path / "y.npy"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "float32[N,64,64,3]" in done.stdout and "'cpu', 'cuda', 'tpu'" in done.stdout
    got = np.load(tmp_path / "y.npy")
    want = ours(spec, state, x)
    expected = np.concatenate([want, want])  # batches of 1 then batches of 3
    assert np.abs(got - expected).max() <= TOL


def test_load_exported_needs_only_jax(small, tmp_path):
    spec, state, _ = small
    dst = tmp_path / "g.stablehlo"
    export_state(spec, state, Request("stablehlo", dst), check=False)
    gen = p2c_jax.load_exported(dst)
    assert_equal_in_batches(lambda x: np.asarray(gen(x)), spec, state, faces(3, SIZE))


# ------------------------------------------------------------------------------ ONNX


@pytest.mark.slow
def test_onnx_has_the_original_interface(tmp_path, caplog, capsys):
    """ngf 8 from a checkpoint trained at 96 x 96, exported without --img_size through the
    command line with the export's own check: the names, layout and shapes of the released file
    (256 x 256), run as the original's test_onnx.py runs it (NCHW in, ['output'] fetched), on
    probe faces and the aligned photos."""
    import onnx
    import onnxruntime

    spec, state = generator(8, 256, seed=3)
    save_nets(tmp_path / "ckpt", {"genA2B": (dataclasses.replace(spec, img_size=96), state)})
    dst = tmp_path / "photo2cartoon_weights.onnx"
    assert cli("--weights", tmp_path / "ckpt", "--format", "onnx", "--dst", dst) == 0
    assert "trained at 96 x 96 and runs at 256 x 256" in caplog.text
    out = capsys.readouterr().out
    assert "checked: batch 1+3" in out and "vs our float32 generator (within 0.0001)" in out
    assert listing(tmp_path) == ["ckpt", "photo2cartoon_weights.onnx"]  # one file, no .data

    model = onnx.load(str(dst))
    onnx.checker.check_model(model)

    def dims(value):
        t = value.type.tensor_type
        assert t.elem_type == onnx.TensorProto.FLOAT
        return [d.dim_param or d.dim_value for d in t.shape.dim]

    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["output"]
    assert dims(model.graph.input[0]) == ["N", 3, 256, 256]
    assert dims(model.graph.output[0]) == ["N", 3, 256, 256]

    session = onnxruntime.InferenceSession(str(dst))
    x = faces(3, 256, photos=True)
    assert len(x) == 6
    face = np.transpose(x[:1], (0, 3, 1, 2)).astype(np.float32)  # as test_onnx.py does
    cartoon = session.run(["output"], input_feed={"input": face})
    assert len(cartoon) == 1 and cartoon[0].shape == (1, 3, 256, 256)
    want = ours(spec, state, x)
    assert np.abs(np.transpose(cartoon[0], (0, 2, 3, 1)) - want[:1]).max() <= TOL
    assert_equal_in_batches(runner("onnx", dst), spec, state, x)


# ------------------------------------------------------------------------------ slow tier


@pytest.mark.slow
@pytest.mark.parametrize(("source", "fmt"), [("pt", "tflite"), ("checkpoint", "savedmodel")])
def test_each_format_from_a_source(small, tmp_path, fmt, source):
    """Through the command line at 256 x 256 (the released file's size; the weights were trained
    at 64), with the export's own check, then run again here on the probe faces and the aligned
    photos: SavedModel at batch 1 and 3 (its batch is dynamic), TFLite at batch 1 (a file has
    one batch; the mobile one; SavedModel's batch 3 goes through the same jax2tf graph). Every
    source gives the same weights (the StableHLO test above) and ONNX goes through the command
    line in the interface test, so each of the other formats runs once, from one source."""
    spec, state, paths = small
    spec = dataclasses.replace(spec, img_size=256)
    x = faces(3, 256, photos=True)
    batch = 1 if fmt == "tflite" else "dynamic"
    dst = tmp_path / f"g.{fmt}"
    common = ["--format", fmt, "--dst", dst, "--img_size", 256, "--batch", batch]
    assert cli("--weights", paths[source], *common) == 0
    assert_equal_in_batches(runner(fmt, dst), spec, state, x, (1,) if fmt == "tflite" else (1, 3))


@pytest.mark.slow
def test_stablehlo_bfloat16(small, tmp_path):
    """bfloat16 products inside, float32 in and out: equal to our bfloat16 generator, near
    (not equal to) the float32 one."""
    spec, state, _ = small
    report = export_state(
        spec, state, Request("stablehlo", tmp_path / "g.stablehlo", precision="bfloat16")
    )
    assert report.check.ok and report.check.precision == "bfloat16"
    gen = p2c_jax.load_exported(tmp_path / "g.stablehlo")
    x = faces(3, SIZE)
    y = gen(x)
    assert y.dtype == np.float32
    assert 1e-3 < np.abs(np.asarray(y) - ours(spec, state, x)).mean() < 0.05

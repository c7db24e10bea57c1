"""The readers of a training workdir whose newest step is damaged (issue 28): they use the
newest step that restores and say so in one line, changing nothing; a damaged step asked for
by name is one error line and exit status 2."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from flax import nnx
from helpers.damage import damage
from PIL import Image

from p2c_jax import export as p2c_export
from p2c_jax.cli import convert, evaluate, export, infer
from p2c_jax.nn.models import NetSpec, build
from p2c_jax.weights.checkpoint import CHECKPOINTS, load_nets, save_nets
from p2c_jax.weights.convert import load_torch

SPEC = NetSpec("generator", 4, img_size=64)
SEEDS = {2: 0, 4: 1}  # step: the seed of its generator


def _state(step: int) -> nnx.State:
    return nnx.state(build(SPEC, nnx.Rngs(SEEDS[step])))


@pytest.fixture(scope="module")
def intact(tmp_path_factory):
    """A workdir of steps 2 and 4 (genA2B only) and a photo; tests damage copies of it."""
    root = tmp_path_factory.mktemp("readers")
    for step in SEEDS:
        save_nets(root / "work" / CHECKPOINTS / str(step), {"genA2B": (SPEC, _state(step))})
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(root / "face.png")
    return root


def _damaged(intact, tmp_path, kind: str):
    work = tmp_path / "work"
    shutil.copytree(intact / "work", work)
    damage(work / CHECKPOINTS / "4", kind)
    return work


@pytest.mark.parametrize("kind", ["garbled", "no_metadata"])
def test_a_workdir_reads_as_its_newest_step_that_restores(intact, tmp_path, caplog, kind):
    work = _damaged(intact, tmp_path, kind)
    with caplog.at_level("WARNING"):
        (_, state) = load_nets(work, ["genA2B"])["genA2B"]
    for got, want in zip(jax_leaves(state), jax_leaves(_state(2)), strict=True):
        np.testing.assert_array_equal(got, want)
    (record,) = caplog.records
    assert record.getMessage().startswith(f"checkpoint step 4 of {work} does not restore (")
    assert record.getMessage().endswith("); using step 2")
    assert evaluate.checkpoints_to_score(str(work), False) == [(work / CHECKPOINTS / "2", 2)]
    assert sorted(p.name for p in (work / CHECKPOINTS).iterdir()) == ["2", "4"]  # unchanged


def jax_leaves(state: nnx.State) -> list[np.ndarray]:
    return [np.asarray(x) for x in nnx.to_flat_state(state).leaves]


def test_export_of_a_damaged_workdir_chooses_its_step_once(intact, tmp_path, caplog, monkeypatch):
    """p2c-export loads the weights twice (a check, then the export): the step is chosen, and
    the damaged one named, once; the export gets that step (stopped there: no tracing)."""
    work = _damaged(intact, tmp_path, "garbled")
    exported = []

    def stop(weights, *_, **__):
        exported.append(weights)
        raise p2c_export.ExportError("stopped")

    monkeypatch.setattr(p2c_export, "export", stop)
    argv = ["--weights", str(work), "--format", "stablehlo", "--dst", str(tmp_path / "g")]
    with caplog.at_level("WARNING"):
        assert export.main([*argv, "--compile_cache", "none"]) == 2
    assert exported == [str(work / CHECKPOINTS / "2")]
    assert [r.getMessage().endswith("; using step 2") for r in caplog.records] == [True]


def test_convert_of_a_damaged_workdir_writes_its_newest_step_that_restores(
    intact, tmp_path, caplog
):
    """p2c-convert of the workdir: step 2's weights in the .pt, the damaged step named once."""
    work = _damaged(intact, tmp_path, "no_metadata")
    dst = tmp_path / "g.pt"
    with caplog.at_level("WARNING"):
        assert convert.main(["--src", str(work), "--dst", str(dst)]) == 0
    assert [r.getMessage().endswith("; using step 2") for r in caplog.records] == [True]
    (_, state) = load_torch(dst)["genA2B"]
    for got, want in zip(jax_leaves(state), jax_leaves(_state(2)), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("command", ["infer", "export", "convert"])
def test_a_damaged_step_asked_for_is_one_error_line(intact, tmp_path, capsys, command):
    """(p2c-evaluate's: tests/cli/test_evaluate.py, which has the Inception weights it needs.)
    Nothing is written."""
    step4 = _damaged(intact, tmp_path, "garbled") / CHECKPOINTS / "4"
    common = ["--weights", str(step4), "--compile_cache", "none"]
    out = tmp_path / "out"
    if command == "infer":
        argv = [str(intact / "face.png"), "--output", str(out), "--no_preprocess"]
        assert infer.main([*argv, *common]) == 2
    elif command == "export":
        assert export.main([*common, "--format", "stablehlo", "--dst", str(out)]) == 2
    else:
        assert convert.main(["--src", str(step4), "--dst", str(out.with_suffix(".pt"))]) == 2
    assert not list(tmp_path.glob("out*"))
    (line,) = capsys.readouterr().err.splitlines()
    unusable = "" if command == "convert" else "unusable weights: "
    assert line.startswith(f"error: {unusable}{step4}: does not restore ("), line
    assert line.endswith(
        f"; pass another of its steps (2) or the workdir {step4.parent.parent} itself (its "
        "newest step that restores)"
    ), line

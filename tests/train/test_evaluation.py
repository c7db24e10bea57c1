"""Evaluation during training: Orbax keeps the best checkpoint beside the latest ones,
``train.py --eval_freq`` logs the scores, ``convert_weights.py --best`` exports the best."""

from __future__ import annotations

import json
import types
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from helpers.events import scalars

from p2c_jax.cli import convert
from p2c_jax.cli import train as train_cli
from p2c_jax.data.demo import build_demo
from p2c_jax.train import evaluation
from p2c_jax.weights import checkpoint
from p2c_jax.weights.checkpoint import CHECKPOINTS, CheckpointError
from p2c_jax.weights.convert import load_torch


def _fake_run(workdir: Path, select_by: str, keep: int, scores: dict[int, dict | None]) -> None:
    cfg = types.SimpleNamespace(keep=keep, eval_freq=1, select_by=select_by)
    manager = ocp.CheckpointManager(
        workdir / CHECKPOINTS,
        options=evaluation.manager_options(cfg),
        item_names=("nets", "config"),
    )
    for step, metrics in scores.items():
        items = ocp.args.Composite(
            nets=ocp.args.StandardSave({"w": np.full((2,), step, np.float32)}),
            config=ocp.args.JsonSave({}),  # what a reader reads first
        )
        manager.save(step, args=items, metrics=metrics)
    manager.wait_until_finished()
    manager.close()
    (workdir / checkpoint.EVAL_DIR).mkdir(exist_ok=True)
    (workdir / checkpoint.EVAL_DIR / checkpoint.SETTINGS_FILE).write_text(
        json.dumps({"select_by": select_by})
    )


def test_best_checkpoint_is_kept_beside_the_latest(tmp_path):
    scores = {
        1: {"fid": 50.0, "kid": 0.05},
        2: {"fid": 20.0, "kid": 0.09},  # best FID
        3: {"fid": 40.0, "kid": 0.01},  # best KID
        4: None,  # a --save_freq checkpoint without scores
        5: {"fid": 45.0, "kid": 0.04},
        6: {"fid": 60.0, "kid": 0.06},
    }
    _fake_run(tmp_path / "fid", "fid", 2, scores)
    kept = sorted(
        int(p.name) for p in (tmp_path / "fid" / CHECKPOINTS).iterdir() if p.name.isdigit()
    )
    assert kept == [2, 5, 6]
    assert checkpoint.best_step(tmp_path / "fid") == 2
    assert str(checkpoint.best_checkpoint(tmp_path / "fid")) == str(
        tmp_path / "fid" / CHECKPOINTS / "2"
    )
    # the latest step is what every loader reads
    assert checkpoint.resolve(tmp_path / "fid").name == "6"

    _fake_run(tmp_path / "kid", "kid", 1, scores)
    kept = sorted(
        int(p.name) for p in (tmp_path / "kid" / CHECKPOINTS).iterdir() if p.name.isdigit()
    )
    assert kept == [3, 6]
    assert checkpoint.best_step(tmp_path / "kid") == 3
    assert checkpoint.best_step(tmp_path / "fid", "kid") == 5  # the best kept by another metric

    _fake_run(tmp_path / "none", "fid", 2, {1: None, 2: None})
    with pytest.raises(CheckpointError, match="--eval_freq"):
        checkpoint.best_checkpoint(tmp_path / "none")


def test_without_eval_freq_the_options_are_the_plain_ones():
    cfg = types.SimpleNamespace(keep=3, eval_freq=0, select_by="fid")
    options = evaluation.manager_options(cfg)
    assert options.max_to_keep == 3 and options.best_fn is None
    assert options.preservation_policy is None


@pytest.mark.slow  # trains 4 steps and compiles the evaluation (~2-3 min on 2 shared cores)
@pytest.mark.xdist_group("trainer")  # the loop tests' nets: their step from the cache
def test_train_eval_freq_writes_scores_and_best_checkpoint(tmp_path, capsys):
    from p2c_jax.eval import inception_weights
    from p2c_jax.pytorch import inception as ti

    data = build_demo(tmp_path / "demo", n_train=6, n_test=3, size=48)
    scripted = ti.write_torchscript(tmp_path / "small.pt", div=8, seed=4)
    inception_weights.save_inception(
        tmp_path / "inception", inception_weights.load_inception(scripted)
    )
    work = tmp_path / "run"
    argv = [
        "--dataset", str(data), "--workdir", str(work), "--iteration", "4", "--batch_size", "1",
        "--save_freq", "0", "--print_freq", "0", "--faceid_weight", "0", "--img_size", "96",
        "--ch", "4", "--keep", "1", "--log_every", "1", "--progress", "false", "--seed", "3",
        "--eval_freq", "2", "--select_by", "kid", "--inception_weights", str(tmp_path / "inception"),
    ]  # fmt: skip
    assert train_cli.main(argv) == 0
    assert "[eval 2]" in capsys.readouterr().out

    lines = (work / checkpoint.EVAL_DIR / evaluation.HISTORY_FILE).read_text().splitlines()
    history = [json.loads(line) for line in lines]
    assert [h["step"] for h in history] == [0, 2, 4]
    assert all(np.isfinite(h["fid"]) and np.isfinite(h["kid"]) for h in history)
    assert all(h["n_photos"] == 3 and h["n_reference"] == 3 for h in history)
    settings = json.loads((work / checkpoint.EVAL_DIR / checkpoint.SETTINGS_FILE).read_text())
    assert settings["select_by"] == "kid"

    best = min(history[1:], key=lambda h: h["kid"])["step"]
    kept = sorted(int(p.name) for p in (work / CHECKPOINTS).iterdir() if p.name.isdigit())
    assert kept == sorted({best, 4})
    assert checkpoint.best_step(work) == best

    fid = [v for tag, _, v in scalars(work / "tensorboard") if tag == "eval/fid"]
    assert fid == pytest.approx([h["fid"] for h in history], rel=1e-6)

    assert convert.main(["--src", str(work), "--best", "--dst", str(tmp_path / "best.pt")]) == 0
    exported = load_torch(tmp_path / "best.pt", ["genA2B"])["genA2B"][1]
    stored = checkpoint.load_nets(work / CHECKPOINTS / str(best), ["genA2B"])["genA2B"][1]
    for a, b in zip(jax.tree_util.tree_leaves(exported), jax.tree_util.tree_leaves(stored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

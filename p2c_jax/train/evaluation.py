"""Evaluation during training and the choice of the best checkpoint.

With ``--eval_freq N`` the loop scores genA2B every N steps (and at step 0 of a fresh run) on
the test split: FID and KID of its cartoons of ``testA`` against ``testB``, and the identity
similarity of each photo and its cartoon (``p2c_jax.eval``; the same numbers as
``evaluate.py``). The scores go to TensorBoard (``eval/fid`` ...), to
``<workdir>/eval/metrics.jsonl`` and, as Orbax checkpoint metrics, to the checkpoint saved at
that step.

Which checkpoints stay is Orbax's preservation policy: the latest ``--keep`` ones, plus the one
with the lowest ``--select_by`` metric (``BestN(n=1)``), so the best survives beside the latest
ones in the same ``checkpoints/`` folder and every loader reads it;
``weights.checkpoint.best_checkpoint`` finds it again for ``p2c-convert --src WORKDIR --best``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from p2c_jax import paths
from p2c_jax.data import grain_input, input_pipeline, tfrecords
from p2c_jax.eval import features
from p2c_jax.eval.evaluator import Evaluator, Scores
from p2c_jax.eval.identity import DlibIdentity, MobileFaceNetIdentity
from p2c_jax.eval.inception_weights import load_inception
from p2c_jax.nn.models import NetSpec
from p2c_jax.train import disk
from p2c_jax.train.errors import TrainError
from p2c_jax.weights.checkpoint import EVAL_DIR, SETTINGS_FILE, CheckpointError, metric

SELECT_BY = ("fid", "kid")
HISTORY_FILE = "metrics.jsonl"  # under EVAL_DIR: every evaluation's scores


def manager_options(cfg) -> ocp.CheckpointManagerOptions:
    """The checkpoint manager's options: the latest ``--keep`` checkpoints, and with
    ``--eval_freq`` also the best by ``--select_by`` (lower is better for FID and KID)."""
    if getattr(cfg, "eval_freq", 0) <= 0:
        return ocp.CheckpointManagerOptions(
            max_to_keep=cfg.keep, create=True, enable_async_checkpointing=True
        )
    policies = ocp.checkpoint_managers
    best = metric(cfg.select_by)
    return ocp.CheckpointManagerOptions(
        create=True,
        enable_async_checkpointing=True,
        best_fn=best,
        best_mode="min",
        preservation_policy=policies.AnyPreservationPolicy(
            [
                policies.LatestN(n=cfg.keep),
                policies.BestN(
                    get_metric_fn=best, reverse=True, n=1, keep_checkpoints_without_metrics=False
                ),
            ]
        ),
    )


def _host(tree):
    """Replicated (possibly multi-host) arrays as host numpy arrays, no collective."""

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(x.addressable_data(0))
        return np.asarray(x)

    return jax.tree.map(one, tree)


def _split_size(dataset_dir, split: str) -> int:
    """How many images a test split holds (ArrayRecord shards, TFRecords or folders)."""
    shards = grain_input.find_shards(dataset_dir)
    if shards is not None:
        return len(grain_input.open_split(shards, split))
    tf_dir = tfrecords.find_dataset(dataset_dir)
    if tf_dir is not None:
        return int(tfrecords.read_splits(tf_dir)[split].size)
    return len(input_pipeline.list_images(Path(dataset_dir) / split))


def held_out_uint8(dataset_dir, domain: str, img_size: int, count: int) -> np.ndarray:
    """The first ``count`` (0: all) test images of a domain at ``img_size``, uint8 (the test
    transform's image before its conversion to [-1, 1], which is exact to invert)."""
    n = _split_size(dataset_dir, f"test{domain}")
    n = min(n, count) if count > 0 else n
    x = input_pipeline.held_out_images(dataset_dir, domain, img_size, n)
    return np.rint((x * 0.5 + 0.5) * 255).astype(np.uint8)


class TrainingEvaluator:
    """Scores genA2B during a run; every process computes the same scores on its own devices
    (so that all of them save alike), process 0 logs them."""

    def __init__(
        self,
        evaluator: Evaluator,
        spec: NetSpec,
        eval_freq: int,
        workdir: epath.Path,
        log: Callable[[str], None],
        is_main: bool,
    ):
        self.evaluator, self.spec, self.eval_freq = evaluator, spec, eval_freq
        self.history = paths.as_path(workdir) / EVAL_DIR / HISTORY_FILE
        self.log, self.is_main, self.warn = log, is_main, disk.Warnings(log)

    @classmethod
    def create(
        cls, cfg, spec: NetSpec, dataset_dir, workdir, face, log
    ) -> TrainingEvaluator | None:
        """None without ``--eval_freq``; raises TrainError for unusable settings."""
        if getattr(cfg, "eval_freq", 0) <= 0:
            return None
        if cfg.select_by not in SELECT_BY:
            raise TrainError(f"--select_by {cfg.select_by}: expected one of {', '.join(SELECT_BY)}")
        try:
            weights = load_inception(getattr(cfg, "inception_weights", "") or None)
        except CheckpointError as e:
            raise TrainError(f"--eval_freq needs the FID Inception: {e}") from None
        if face is not None:
            identity = MobileFaceNetIdentity(face)
        elif cfg.faceid_weights:
            try:
                identity = MobileFaceNetIdentity(cfg.faceid_weights)
            except CheckpointError as e:
                raise TrainError(f"--faceid_weights: {e}") from None
        else:
            try:
                identity = DlibIdentity()
            except (ImportError, FileNotFoundError, RuntimeError) as e:
                log(f"warning: no identity similarity (dlib unusable: {e}); pass --faceid_weights")
                identity = None
        count = getattr(cfg, "eval_count", 0)
        photos = held_out_uint8(dataset_dir, "A", cfg.img_size, count)
        cartoons = held_out_uint8(dataset_dir, "B", cfg.img_size, count)
        eval_dir = paths.as_path(workdir) / EVAL_DIR
        is_main = jax.process_index() == 0
        if is_main:
            eval_dir.mkdir(parents=True, exist_ok=True)
            settings = {
                "select_by": cfg.select_by,
                "inception": weights.fingerprint,
                "identity_net": identity.name if identity is not None else None,
                "photos": len(photos),
                "cartoons": len(cartoons),
                "img_size": cfg.img_size,
            }
            (eval_dir / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")
        extractor = features.FeatureExtractor(weights)
        reference = features.reference_of(cartoons, extractor, eval_dir, "testB")
        evaluator = Evaluator(weights, photos, reference, identity)
        return cls(evaluator, spec, cfg.eval_freq, workdir, log, is_main)

    def due(self, step: int) -> bool:
        return step % self.eval_freq == 0

    def __call__(self, step: int, gen_state, writer) -> dict[str, float]:
        """Score the generator state at ``step``; log and return the metrics."""
        t0 = time.time()
        scores: Scores = self.evaluator(self.spec, _host(gen_state))
        values = scores.scalars()
        writer.scalars(step, {f"eval/{k}": v for k, v in values.items()})
        if self.is_main:
            # rewritten whole: gs:// objects cannot be appended to
            old = self.history.read_text() if self.history.exists() else ""
            try:
                self.history.write_text(old + json.dumps({"step": step, **scores.as_dict()}) + "\n")
            except OSError as e:
                self.warn("evaluation report", self.history, e)
            shown = ", ".join(f"{k} {v:.5g}" for k, v in values.items())
            self.log(f"[eval {step}] {shown} ({time.time() - t0:.1f} s)")
        return values

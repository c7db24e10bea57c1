"""The training loop: data, the step over every device and host, checkpoints, logs, samples.

A run lives in ``--workdir``: ``checkpoints/<step>/`` (Orbax, the last ``--keep`` kept),
``tensorboard/`` (event files), ``<dataset>/img/{A2B,B2A}_<step>.png`` (the original's sample
grids). Each checkpoint holds the items ``nets`` and ``config`` of our checkpoint format (so
``convert_weights.py --src WORKDIR --dst x.pt`` exports it, and every loader reads it),
``train_state`` (both Adam states, the step, the RNG key) and ``meta`` (step = data position,
seed, global batch, hyper-parameters). ``--resume`` restores all of it and continues with the
same batches and the same learning-rate schedule as an uninterrupted run. SIGTERM / SIGINT
finish the current step, save, and return.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from p2c_jax import backend, paths
from p2c_jax.data import input_pipeline
from p2c_jax.inference import forward
from p2c_jax.nn import precision
from p2c_jax.nn.face_id import FaceID
from p2c_jax.nn.models import DISCRIMINATORS, TRAINING_NETS, NetSpec, abstract, training_specs
from p2c_jax.train import evaluation, samples, summary
from p2c_jax.train import step as ts
from p2c_jax.train.config import Config, Hparams
from p2c_jax.train.errors import TrainError
from p2c_jax.weights import checkpoint
from p2c_jax.weights.checkpoint import CheckpointError, nets_to_tree, tree_to_nets
from p2c_jax.weights.convert import load_any, load_face_id

N_SAMPLES = 5  # train and test images per sample grid, as in the original
TRAIN_STATE = ("step", "opt_g", "opt_d")  # the checkpoint item train_state; nets go to nets


# --- train state <-> checkpoint items -----------------------------------------------------------


def _flat(tree) -> tuple[dict[str, jax.Array], list[str]]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return (
        {f"{i:05d}": x for i, (_, x) in enumerate(leaves)},
        [jax.tree_util.keystr(kp) for kp, _ in leaves],
    )


def _host(x):
    """A replicated global array as a host numpy array (any process; no collective)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(x.addressable_data(0))
    return np.asarray(x)


def checkpoint_items(model: ts.TrainModel, state: dict, meta: dict) -> ocp.args.Composite:
    """The Orbax items of one training checkpoint, the state's device arrays as they are (Orbax
    copies them to the host and writes in the background)."""
    weights = {n: (model.specs[n], model.net_state(state, n)) for n in TRAINING_NETS}
    nets, config = nets_to_tree(weights)
    rest, names = _flat({k: state[k] for k in TRAIN_STATE})
    return ocp.args.Composite(
        nets=ocp.args.StandardSave(nets),
        config=ocp.args.JsonSave(config),
        train_state=ocp.args.StandardSave(rest),
        meta=ocp.args.JsonSave({**meta, "train_state_paths": names}),
    )


def restore_state(
    manager: ocp.CheckpointManager, step: int, model: ts.TrainModel, hp: Hparams
) -> tuple[dict, dict]:
    """(host train state, meta) of checkpoint ``step``, checked against ``model``'s nets."""
    where = str(manager.directory / str(step))
    items = manager.restore(
        step,
        args=ocp.args.Composite(
            nets=ocp.args.StandardRestore(),
            config=ocp.args.JsonRestore(),
            train_state=ocp.args.StandardRestore(),
            meta=ocp.args.JsonRestore(),
        ),
    )
    specs = {n: NetSpec.from_json(j) for n, j in items.config.items()}
    if specs != {n: model.specs[n] for n in TRAINING_NETS}:
        raise TrainError(
            f"{where}: its nets {specs} differ from this run's; resume with the "
            "flags of the run that wrote it (--ch --img_size --light)"
        )
    weights = tree_to_nets(items.nets, items.config, where)
    template = model.init_state({n: st for n, (_, st) in weights.items()}, hp)
    rest_template = {k: template[k] for k in TRAIN_STATE}
    leaves, treedef = jax.tree_util.tree_flatten(rest_template)
    names = [
        jax.tree_util.keystr(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(rest_template)[0]
    ]
    if names != items.meta.get("train_state_paths"):
        raise TrainError(f"{where}: its optimizer state does not fit this version's")
    rest = treedef.unflatten(
        [
            np.asarray(items.train_state[f"{i:05d}"], np.asarray(x).dtype)
            for i, x in enumerate(leaves)
        ]
    )
    return {**template, **rest}, items.meta


# --- the run ------------------------------------------------------------------------------------

_STEP_CACHE: dict = {}


def compiled_step(
    model: ts.TrainModel, hp: Hparams, mesh, remat: bool, precision_name: str
) -> Callable:
    """``ts.make_step``, cached per (nets, face net, hparams, devices, remat, plan, precision)
    within a process, so that runs in one process share compiled programs. The key holds the
    face net itself (not its id, which a later object may reuse once this one is collected)."""
    plan = backend.plan()
    key = (
        tuple(sorted(model.specs.items())),
        model.face,
        hp,
        tuple(d.id for d in mesh.devices.flat),
        remat,
        plan,
        precision_name,
    )
    if key not in _STEP_CACHE:
        _STEP_CACHE[key] = ts.make_step(
            model, hp, mesh, remat=remat, plan=plan, precision_name=precision_name
        )
    return _STEP_CACHE[key]


class _Stop:
    """When to stop early and save: a preemption.

    One process: SIGTERM / SIGINT set a flag. Several: JAX's preemption notice, which Orbax's
    ``reached_preemption`` turns into the same step on every host without a collective per
    step (our own handler would replace the one JAX installs).
    """

    def __init__(self, manager: ocp.CheckpointManager):
        self.manager = manager
        self.signal: int | None = None
        self._old = {}

    def __enter__(self):
        if jax.process_count() == 1:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(ValueError):  # not the main thread
                    self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signal = signum

    def requested(self, step: int) -> bool:
        if jax.process_count() > 1:
            return self.manager.reached_preemption(step)
        return self.signal is not None

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _check_img_size(specs: dict[str, NetSpec], img_size: int) -> None:
    """Every discriminator must leave a non-empty logit map at ``img_size``."""
    x = jax.ShapeDtypeStruct((1, img_size, img_size, 3), jnp.float32)
    for name in DISCRIMINATORS:
        graphdef, state = nnx.split(abstract(specs[name]))
        try:
            logit = jax.eval_shape(lambda s, x, g=graphdef: nnx.merge(g, s)(x)[0], state, x)
        except ValueError:  # a feature map already empty before the logit (a reduction fails)
            logit = jax.ShapeDtypeStruct((0,), jnp.float32)
        if 0 in logit.shape:
            raise TrainError(
                f"--img_size {img_size} is too small for the {specs[name].n_layers}-"
                f"layer discriminator {name}: its logit map would be empty "
                "(with the original's 7-layer global discriminator 96 is the smallest multiple of 16 that works; the original trains at 256)"
            )


def _load_face(cfg: Config) -> FaceID | None:
    if not cfg.hparams.faceid_weight:
        return None
    if not cfg.faceid_weights:
        raise TrainError(
            f"--faceid_weight {cfg.hparams.faceid_weight} needs the face recognition net: pass "
            "--faceid_weights model_mobilefacenet.pth (InsightFace's MobileFaceNet, as in the "
            "original's models/ folder) or our checkpoint holding it, or train without the "
            "Face-ID loss with --faceid_weight 0"
        )
    try:
        return load_face_id(cfg.faceid_weights)
    except CheckpointError as e:
        raise TrainError(f"--faceid_weights: {e}") from None


def _initial_nets(cfg: Config, specs: dict[str, NetSpec], log) -> dict[str, nnx.State]:
    if not cfg.pretrained_weights:
        return ts.fresh_nets(specs, cfg.seed)
    try:
        weights = load_any(cfg.pretrained_weights, list(TRAINING_NETS))
    except CheckpointError as e:
        raise TrainError(f"--pretrained_weights: {e}") from None
    for n in TRAINING_NETS:
        if not specs[n].weights_fit(weights[n][0]):
            raise TrainError(
                f"--pretrained_weights {cfg.pretrained_weights}: {n} is "
                f"{weights[n][0]}, this run builds {specs[n]} (check --ch "
                "--img_size --light)"
            )
    log(f"loaded {cfg.pretrained_weights}")
    return {n: st for n, (_, st) in weights.items()}


class _Sampler:
    """The original's print_freq sample grids: 5 train and 5 test images, A2B and B2A."""

    def __init__(self, model: ts.TrainModel, cfg: Config, dataset_dir: Path, workdir: epath.Path):
        self.cfg, self.dataset_dir, self.workdir = cfg, dataset_dir, workdir
        self.test = {
            d: input_pipeline.held_out_images(dataset_dir, d, cfg.img_size, N_SAMPLES) for d in "AB"
        }
        self._forward = forward(model.specs["genA2B"], cfg.precision)

    def _translate(self, gen: dict, x: np.ndarray, there: str, back: str) -> tuple:
        """(identity, its heatmap, fake, heatmap, cycle, heatmap) of ``x`` by ``there``."""
        fake, _, heat = self._forward(gen[there], x)
        cycle, _, heat_cycle = self._forward(gen[back], fake)
        same, _, heat_same = self._forward(gen[back], x)
        return jax.device_get((same, heat_same, fake, heat, cycle, heat_cycle))

    def __call__(self, step: int, gen: dict, writer: summary.SummaryWriter) -> None:
        cfg = self.cfg
        with (
            input_pipeline.train_batches(
                self.dataset_dir,
                "A",
                N_SAMPLES,
                cfg.img_size,
                cfg.augment,
                cfg.seed + 1,
                start_step=step,
                prefetch=1,
            ) as it_a,
            input_pipeline.train_batches(
                self.dataset_dir,
                "B",
                N_SAMPLES,
                cfg.img_size,
                cfg.augment,
                cfg.seed + 1,
                start_step=step,
                prefetch=1,
            ) as it_b,
        ):
            train = {"A": next(it_a), "B": next(it_b)}
        dev = jax.local_devices()[0]
        gen = jax.device_put(jax.tree.map(_host, gen), dev)
        real = {d: np.concatenate([train[d], self.test[d]]) for d in "AB"}
        out = {
            "A2B": self._translate(gen, real["A"], "genA2B", "genB2A"),
            "B2A": self._translate(gen, real["B"], "genB2A", "genA2B"),
        }
        name = Path(str(cfg.dataset)).name or "dataset"
        for direction, domain in (("A2B", "A"), ("B2A", "B")):
            same, heat_same, fake, heat, cyc, heat_cyc = out[direction]
            cols = [
                samples.sample_column(
                    real[domain][i], heat_same[i], same[i], heat[i], fake[i], heat_cyc[i], cyc[i]
                )
                for i in range(len(real[domain]))
            ]
            grid = samples.sample_grid(cols)
            samples.save_grid(samples.sample_path(self.workdir, name, direction, step), grid)
            writer.image(step, direction, grid)


def train(cfg: Config, *, mesh=None, log: Callable[[str], None] | None = None) -> int:
    """Run (or resume) training on ``mesh`` (default: every device of every process); returns
    the last completed step."""
    is_main = jax.process_index() == 0
    log = log or (lambda msg: print(msg, flush=True) if is_main else None)
    try:
        precision.check(cfg.precision)
    except ValueError as e:
        raise TrainError(f"--precision: {e}") from None
    specs = training_specs(cfg.ch, cfg.img_size, cfg.light)
    mesh = mesh or ts.make_mesh()
    if cfg.batch_size % mesh.size:
        raise TrainError(
            f"--batch_size {cfg.batch_size} is the global batch: it must be a "
            f"multiple of the {mesh.size} devices"
        )
    _check_img_size(specs, cfg.img_size)
    hp = cfg.hparams
    face = _load_face(cfg)
    try:
        dataset_dir = input_pipeline.resolve_dataset(cfg.dataset)
    except input_pipeline.DatasetError as e:
        raise TrainError(str(e)) from None
    model = ts.TrainModel(specs, face)
    try:
        workdir = paths.as_path(cfg.run_dir())
    except ValueError as e:
        raise TrainError(f"--workdir {e}") from None
    built = " (the offline demo, built on first use)" if cfg.dataset == "demo" else ""
    local = isinstance(dataset_dir, Path)
    log(f"dataset: {dataset_dir.absolute() if local else dataset_dir}{built}")
    where = workdir if paths.is_remote(workdir) else Path(workdir).absolute()
    log(f"workdir: {where} (checkpoints, TensorBoard logs, sample grids)")
    manager = ocp.CheckpointManager(
        workdir / checkpoint.CHECKPOINTS,
        options=evaluation.manager_options(cfg),  # latest --keep, + the best with --eval_freq
        item_names=("nets", "config", "train_state", "meta"),
    )
    latest = manager.latest_step()
    if latest is not None and cfg.resume:
        host_state, meta = restore_state(manager, latest, model, hp)
        if meta.get("batch_size") != cfg.batch_size or meta.get("seed") != cfg.seed:
            log(
                f"warning: resuming a run of --batch_size {meta.get('batch_size')} --seed "
                f"{meta.get('seed')} with --batch_size {cfg.batch_size} --seed {cfg.seed}"
            )
        log(f"resumed from {workdir / checkpoint.CHECKPOINTS / str(latest)} at step {latest}")
    elif latest is not None:
        raise TrainError(
            f"--workdir {workdir} already holds checkpoints up to step {latest}: "
            "pass --resume true to continue that run, or choose another --workdir"
        )
    else:
        host_state = model.init_state(_initial_nets(cfg, specs, log), hp)
    start = int(host_state["step"])

    state = ts.put_replicated(host_state, mesh)
    face_state = ts.put_replicated(face.state, mesh) if face is not None else None
    step_fn = compiled_step(model, hp, mesh, cfg.remat, cfg.precision)
    meta = {
        "seed": cfg.seed,
        "batch_size": cfg.batch_size,
        "dataset": str(cfg.dataset),
        "hparams": dataclasses.asdict(hp),
        "augment": cfg.augment,
    }

    def save(step: int, scores: dict | None = None) -> None:
        if manager.latest_step() == step:
            return
        manager.save(
            step,
            args=checkpoint_items(model, state, {**meta, "step": step, "data_position": step}),
            metrics=scores,
        )

    evaluator = evaluation.TrainingEvaluator.create(
        cfg, specs["genA2B"], dataset_dir, workdir, face, log
    )

    pi, pc = jax.process_index(), jax.process_count()
    batches = {
        d: input_pipeline.train_batches(
            dataset_dir,
            d,
            cfg.batch_size,
            cfg.img_size,
            cfg.augment,
            cfg.seed,
            pi,
            pc,
            start_step=start,
        )
        for d in "AB"
    }
    writer = summary.SummaryWriter(workdir / "tensorboard", enabled=is_main)
    sampler = _Sampler(model, cfg, dataset_dir, workdir) if cfg.print_freq > 0 and is_main else None
    end = cfg.hparams.iteration
    bar = None
    if is_main and cfg.progress:
        from tqdm import tqdm

        bar = tqdm(
            total=cfg.hparams.iteration,
            initial=start,
            unit="step",
            dynamic_ncols=True,
            mininterval=1.0,
            file=sys.stderr,
        )
    step = start
    try:
        with _Stop(manager) as stop:
            log(
                f"training start: steps {start + 1}..{end} of {cfg.hparams.iteration} on {mesh.size} "
                f"device(s), global batch {cfg.batch_size} (the first step compiles)"
            )
            if evaluator is not None and start == 0:
                evaluator(0, state["gen"]["genA2B"], writer)
            t0 = time.time()
            for step in range(start + 1, end + 1):
                real_A = ts.put_batch(next(batches["A"]), mesh)
                real_B = ts.put_batch(next(batches["B"]), mesh)
                state, metrics = step_fn(state, face_state, real_A, real_B)
                if step % cfg.log_every == 0 or step == end:
                    values = {k: float(_host(v)) for k, v in metrics.items()}
                    writer.scalars(step, values)
                    if bar is not None:
                        bar.set_postfix(
                            d_loss=f"{values['d_loss']:.4f}",
                            g_loss=f"{values['g_loss']:.4f}",
                            refresh=False,
                        )
                    elif is_main:
                        log(
                            f"[{step:5d}/{cfg.hparams.iteration:5d}] time: {time.time() - t0:4.4f} "
                            f"d_loss: {values['d_loss']:.8f}, g_loss: {values['g_loss']:.8f}"
                        )
                if bar is not None:
                    bar.update(1)
                if sampler is not None and step % cfg.print_freq == 0:
                    sampler(step, state["gen"], writer)
                scores = None
                if evaluator is not None and evaluator.due(step):
                    scores = evaluator(step, state["gen"]["genA2B"], writer)
                if scores is not None or (cfg.save_freq > 0 and step % cfg.save_freq == 0):
                    save(step, scores)
                if stop.requested(step):
                    log(f"\npreempted: saving step {step} and stopping")
                    break
            if sampler is not None and step > start and step % cfg.print_freq:
                sampler(step, state["gen"], writer)  # a run ends with its sample grids
            save(step)
    finally:
        if bar is not None:
            bar.close()
        for it in batches.values():
            it.close()
        manager.wait_until_finished()
        manager.close()
        writer.close()
    log(f"checkpoint {workdir / checkpoint.CHECKPOINTS / str(step)}")
    return step


def maybe_initialize_distributed(
    coordinator_address: str | None, num_processes: int | None, process_id: int | None
) -> None:
    """``jax.distributed.initialize`` from flags, or from the environment (JAX_COORDINATOR_ADDRESS
    and friends, SLURM, Open MPI, Cloud TPU pods) when it names a cluster; else one process."""
    if coordinator_address:
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
        )
    elif any(
        v in os.environ
        for v in (
            "JAX_COORDINATOR_ADDRESS",
            "SLURM_JOB_ID",
            "OMPI_COMM_WORLD_SIZE",
            "TPU_WORKER_HOSTNAMES",
        )
    ):
        jax.distributed.initialize()

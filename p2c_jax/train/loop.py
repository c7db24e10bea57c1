"""The training loop: data, the step over every device and host, checkpoints, logs, samples.

A run lives in ``--workdir``: ``checkpoints/<step>/`` (``train.checkpointing``, the last
``--keep`` kept), ``tensorboard/`` (event files), ``<dataset>/img/{A2B,B2A}_<step>.png`` (the
original's sample grids). ``--resume`` restores the whole state and continues with the same
batches and the same learning-rate schedule as an uninterrupted run. SIGTERM / SIGINT finish the
current step, save, and raise ``Interrupted``.

``setup`` checks the flags and builds everything a run needs (``Run``) before anything is
written; ``run`` trains it.
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
from jax.sharding import Mesh

from p2c_jax import paths
from p2c_jax.data import grain_input, input_pipeline, tfrecords
from p2c_jax.inference import forward
from p2c_jax.nn.face_id import FaceID
from p2c_jax.nn.models import DISCRIMINATORS, TRAINING_NETS, NetSpec, abstract, training_specs
from p2c_jax.nn.numerics import Numerics
from p2c_jax.parallel import PLANS, host_value, make_mesh, put_batch, put_replicated
from p2c_jax.train import checkpointing, disk, evaluation, samples, summary
from p2c_jax.train.config import Config
from p2c_jax.train.errors import SaveError, TrainError
from p2c_jax.train.partition import make_step
from p2c_jax.train.state import TrainModel, fresh_nets
from p2c_jax.train.step import TrainStep
from p2c_jax.weights import checkpoint
from p2c_jax.weights.checkpoint import CheckpointError
from p2c_jax.weights.convert import load_any, load_face_id
from p2c_jax.weights.orbax_quiet import quiet_failures

N_SAMPLES = 5  # train and test images per sample grid, as in the original


class Interrupted(Exception):  # noqa: N818 - what happened, not an error of the run
    """A run stopped by ``signum`` (SIGINT, SIGTERM, a preemption) after saving ``step``."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"{signal.Signals(signum).name} after step {step}")
        self.signum, self.step = signum, step


class Stop:
    """When to stop early and save.

    One process: SIGTERM / SIGINT set ``signum``. Several: JAX's preemption notice, which
    Orbax's ``reached_preemption`` turns into the same step on every host without a collective
    per step (our own handler would replace the one JAX installs).
    """

    def __init__(self, manager: ocp.CheckpointManager):
        self.manager = manager
        self.signum: int | None = None
        self._old = {}

    def __enter__(self):
        if jax.process_count() == 1:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(ValueError):  # not the main thread
                    self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def requested(self, step: int) -> bool:
        if jax.process_count() > 1 and self.manager.reached_preemption(step):
            self.signum = signal.SIGTERM
        return self.signum is not None

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


def initial_nets(cfg: Config, specs: dict[str, NetSpec], log) -> dict[str, nnx.State]:
    """Fresh nets, or those of ``--pretrained_weights`` checked against ``specs``."""
    if not cfg.pretrained_weights:
        return fresh_nets(specs, cfg.seed)
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

    def __init__(
        self,
        model: TrainModel,
        cfg: Config,
        dataset_dir: Path,
        workdir: epath.Path,
        warn: disk.Warnings,
    ):
        self.cfg, self.dataset_dir, self.workdir, self.warn = cfg, dataset_dir, workdir, warn
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
        gen = jax.device_put(jax.tree.map(host_value, gen), dev)
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
            path = samples.sample_path(self.workdir, name, direction, step)
            try:
                samples.save_grid(path, grid)
            except OSError as e:
                self.warn("sample grid", path, e)
            writer.image(step, direction, grid)


@dataclasses.dataclass
class Run:
    """Everything a run needs, built by ``setup``."""

    cfg: Config
    mesh: Mesh
    model: TrainModel
    step_fn: Callable
    state: dict
    face_state: dict | None
    start: int
    workdir: epath.Path
    dataset_dir: Path | epath.Path
    manager: ocp.CheckpointManager
    evaluator: evaluation.TrainingEvaluator | None
    log: Callable[[str], None]


def checked_specs(
    cfg: Config, mesh: Mesh, specs: dict[str, NetSpec] | None = None
) -> dict[str, NetSpec]:
    """The six nets' specs (those of ``--ch --img_size --light``, else ``specs``), once the
    flags that need no file are checked."""
    try:
        Numerics(cfg.precision)
    except ValueError as e:
        raise TrainError(f"--precision: {e}") from None
    if cfg.plan not in PLANS:
        raise TrainError(f"--plan {cfg.plan}: expected one of {', '.join(PLANS)}")
    if cfg.batch_size < 1 or cfg.batch_size % mesh.size:
        raise TrainError(
            f"--batch_size {cfg.batch_size} is the global batch: it must be a positive "
            f"multiple of the {mesh.size} devices"
        )
    specs = specs or training_specs(cfg.ch, cfg.img_size, cfg.light)
    _check_img_size(specs, cfg.img_size)
    return specs


def _manager(cfg: Config, workdir: epath.Path) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        workdir / checkpoint.CHECKPOINTS,
        options=evaluation.manager_options(cfg),  # latest --keep, + the best with --eval_freq
        item_names=checkpointing.ITEMS,
    )


def _initial_state(cfg: Config, model: TrainModel, manager, mesh: Mesh, log) -> dict:
    """The state to start from, replicated on ``mesh``: with ``--resume`` the newest
    checkpoint's that restores (damaged newer ones moved aside), else fresh or
    ``--pretrained_weights`` nets."""
    where = manager.directory
    latest = manager.latest_step()
    if latest is not None and not cfg.resume:
        raise TrainError(
            f"--workdir {where.parent} already holds checkpoints up to step {latest}: "
            "pass --resume true to continue that run, or choose another --workdir"
        )
    restored = checkpointing.restore_newest(manager, model, cfg.hparams, mesh, log)
    if restored is None:
        if cfg.resume and latest is None:
            log(f"--resume: no checkpoint under {where} yet: starting from step 0")
        nets = initial_nets(cfg, model.specs, log)
        return put_replicated(model.init_state(nets, cfg.hparams), mesh)
    latest, state, meta = restored
    if meta.get("batch_size") != cfg.batch_size or meta.get("seed") != cfg.seed:
        log(
            f"warning: resuming a run of --batch_size {meta.get('batch_size')} --seed "
            f"{meta.get('seed')} with --batch_size {cfg.batch_size} --seed {cfg.seed}"
        )
    log(f"resumed from {where / str(latest)} at step {latest}")
    return state


def setup(cfg: Config, *, mesh: Mesh | None = None, log: Callable | None = None) -> Run:
    """Check ``cfg`` and build its run on ``mesh`` (default: every device of every process):
    nets, state, the compiled step and the checkpoint manager. Nothing is written before the
    flags that need no file are checked."""
    is_main = jax.process_index() == 0
    log = log or (lambda msg: print(msg, flush=True) if is_main else None)
    mesh = mesh or make_mesh()
    specs = checked_specs(cfg, mesh)
    face = _load_face(cfg)
    try:
        dataset_dir = input_pipeline.resolve_dataset(cfg.dataset)
        workdir = paths.as_path(cfg.run_dir())
    except input_pipeline.DatasetError as e:
        raise TrainError(str(e)) from None
    except ValueError as e:
        raise TrainError(f"--workdir {e}") from None
    devices = list(mesh.devices.flat)
    numerics = Numerics.for_devices(devices, cfg.precision, cfg.plan, cfg.matmul_kernel_grads)
    model = TrainModel(specs, face, numerics)
    built = " (the offline demo, built on first use)" if cfg.dataset == "demo" else ""
    log(f"dataset: {_shown(dataset_dir)}{built}")
    shards = grain_input.find_shards(dataset_dir)
    records = tfrecords.find_dataset(dataset_dir) if shards is None else None
    if shards is not None:
        log(f"reading its ArrayRecord shards in {shards} through Grain (each process its records)")
    elif records is not None:
        log(f"streaming its TFRecords from {records} (tf.data, decoded as consumed)")
    log(f"workdir: {_shown(workdir)} (checkpoints, TensorBoard logs, sample grids)")
    manager = _manager(cfg, workdir)
    state = _initial_state(cfg, model, manager, mesh, log)
    step = TrainStep(model, cfg.hparams, remat=cfg.remat)
    return Run(
        cfg=cfg,
        mesh=mesh,
        model=model,
        step_fn=make_step(step, mesh, cfg.plan),
        state=state,
        face_state=put_replicated(face.state, mesh) if face is not None else None,
        start=int(host_value(state["step"])),
        workdir=workdir,
        dataset_dir=dataset_dir,
        manager=manager,
        evaluator=evaluation.TrainingEvaluator.create(
            cfg, specs["genA2B"], dataset_dir, workdir, face, log
        ),
        log=log,
    )


def _shown(path) -> str:
    return str(path if paths.is_remote(path) else Path(path).absolute())


def train(cfg: Config, *, mesh: Mesh | None = None, log: Callable | None = None) -> int:
    """Run (or resume) training; returns the last completed step (``Interrupted`` after a
    signal, once that step is saved)."""
    return run(setup(cfg, mesh=mesh, log=log))


class _Saver:
    """Checkpoints of ``r``'s state at a step, each step once; the TensorBoard events up to
    that step are on disk first. A save that fails, now or in the background, raises
    ``SaveError`` (``check`` after each step, ``finish`` at the end)."""

    def __init__(self, r: Run, writer: summary.SummaryWriter):
        self.r, self.writer = r, writer
        self.done = r.manager.latest_step()  # the last complete checkpoint
        self.pending: int | None = None  # the one being written
        cfg = r.cfg
        self.meta = {
            "seed": cfg.seed,
            "batch_size": cfg.batch_size,
            "dataset": str(cfg.dataset),
            "hparams": dataclasses.asdict(cfg.hparams),
            "augment": cfg.augment,
        }

    def __call__(self, step: int, scores: dict | None = None) -> None:
        r = self.r
        if step in (self.done, self.pending):
            return
        self.finish()
        self.writer.flush()
        meta = {**self.meta, "step": step, "data_position": step}
        with self._failing(step):
            r.manager.save(
                step, args=checkpointing.save_args(r.model, r.state, meta), metrics=scores
            )
        self.pending = step

    def check(self) -> None:
        """Raise ``SaveError`` if the save in the background has failed; never waits."""
        if self.pending is not None and not self.r.manager.is_saving_in_progress():
            self.finish()

    def finish(self) -> None:
        """Wait for the save in the background; ``SaveError`` if it failed."""
        if self.pending is not None:
            with self._failing(self.pending):
                self.r.manager.wait_until_finished()
            self.done, self.pending = self.pending, None

    @contextlib.contextmanager
    def _failing(self, step: int):
        try:
            yield
        except Exception as e:  # Orbax's failed writes: ValueError, OSError, RuntimeError
            self.pending = None
            raise disk.save_error(self.r.manager.directory, step, self.done, e) from e


def _progress_bar(r: Run):
    if jax.process_index() or not r.cfg.progress:
        return None
    from tqdm import tqdm

    return tqdm(
        total=r.cfg.hparams.iteration,
        initial=r.start,
        unit="step",
        dynamic_ncols=True,
        mininterval=1.0,
        file=sys.stderr,
    )


def _batches(r: Run) -> dict:
    cfg = r.cfg
    pi, pc = jax.process_index(), jax.process_count()
    return {
        d: input_pipeline.train_batches(
            r.dataset_dir,
            d,
            cfg.batch_size,
            cfg.img_size,
            cfg.augment,
            cfg.seed,
            pi,
            pc,
            start_step=r.start,
        )
        for d in "AB"
    }


def _report(r: Run, step: int, metrics: dict, writer, bar, t0: float) -> None:
    """The losses of ``step`` to TensorBoard and the progress bar (or a line)."""
    values = {k: float(host_value(v)) for k, v in metrics.items()}
    writer.scalars(step, values)
    if bar is not None:
        bar.set_postfix(
            d_loss=f"{values['d_loss']:.4f}", g_loss=f"{values['g_loss']:.4f}", refresh=False
        )
    else:
        r.log(
            f"[{step:5d}/{r.cfg.hparams.iteration:5d}] time: {time.time() - t0:4.4f} "
            f"d_loss: {values['d_loss']:.8f}, g_loss: {values['g_loss']:.8f}"
        )


def run(r: Run) -> int:
    """Train ``r`` from its start to ``--iteration``; returns the last completed step."""
    cfg, is_main, end = r.cfg, jax.process_index() == 0, r.cfg.hparams.iteration
    writer = summary.SummaryWriter(
        r.workdir / "tensorboard", enabled=is_main, start=r.start, warn=r.log
    )
    warn = disk.Warnings(r.log)
    sampler = (
        _Sampler(r.model, cfg, r.dataset_dir, r.workdir, warn)
        if cfg.print_freq > 0 and is_main
        else None
    )
    save, batches, step, bar = _Saver(r, writer), _batches(r), r.start, None
    failed = False
    try:
        with quiet_failures(), Stop(r.manager) as stop:
            r.log(
                f"training start: steps {r.start + 1}..{end} on {r.mesh.size} device(s), global "
                f"batch {cfg.batch_size} (the first step compiles)"
            )
            bar = _progress_bar(r)
            if r.evaluator is not None and r.start == 0:
                r.evaluator(0, r.state["gen"]["genA2B"], writer)
            t0 = time.time()
            for step in range(r.start + 1, end + 1):
                real_A, real_B = (put_batch(next(batches[d]), r.mesh) for d in "AB")
                r.state, metrics = r.step_fn(r.state, r.face_state, real_A, real_B)
                if step % cfg.log_every == 0 or step == end:
                    _report(r, step, metrics, writer, bar if is_main else None, t0)
                if bar is not None:
                    bar.update(1)
                if sampler is not None and step % cfg.print_freq == 0:
                    sampler(step, r.state["gen"], writer)
                scores = None
                if r.evaluator is not None and r.evaluator.due(step):
                    scores = r.evaluator(step, r.state["gen"]["genA2B"], writer)
                if scores is not None or (cfg.save_freq > 0 and step % cfg.save_freq == 0):
                    save(step, scores)
                save.check()
                if stop.requested(step):
                    break
            if sampler is not None and step > r.start and step % cfg.print_freq:
                sampler(step, r.state["gen"], writer)  # a run ends with its sample grids
            _final_save(r, save, step, stop.signum, bar)
            save.finish()
    except SaveError:
        failed = True
        raise
    finally:
        _close(r, batches, bar, writer, failed)
    r.log(f"checkpoint {r.workdir / checkpoint.CHECKPOINTS / str(step)}")
    if stop.signum is not None:
        raise Interrupted(stop.signum, step)
    return step


def _final_save(r: Run, save: _Saver, step: int, signum: int | None, bar) -> None:
    if bar is not None:
        bar.close()
    if signum is not None:
        why = "interrupted" if signum == signal.SIGINT else "preempted"
        r.log(f"{why}: saving step {step}, then stopping (the save takes a while)")
    save(step)


def _close(r: Run, batches: dict, bar, writer, failed: bool) -> None:
    if bar is not None:
        bar.close()
    for it in batches.values():
        it.close()
    writer.close()
    # after a failed save Orbax raises its error again: SaveError has said it
    with contextlib.suppress(Exception) if failed else contextlib.nullcontext():
        r.manager.wait_until_finished()
        r.manager.close()


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

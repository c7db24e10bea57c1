"""A few training steps on one topology, for the parity and topology tests.

Run as a script (``start`` does that), it is one process of a topology: the device count is
fixed before jax starts, and with ``--num_processes 2`` two such scripts form one cluster over
127.0.0.1; a native crash prints its stack (faulthandler) into the output a failure shows.
Every run starts from the same PyTorch weights file (the original's ``photo2cartoon_weights.pt``
format) and trains in float64: in float32 this network's gradients carry percent-level rounding
noise (torch's as much as ours, both measured against float64), which Adam's first steps
(update ~ lr * sign(grad)) turn into lr-sized parameter differences, so only float64 can show
agreement to 1e-5.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]  # the checkout


def batches(
    seed: int, steps: int, global_batch: int, size: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The global batches (A, B) of every step, NHWC float64 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    return [
        tuple(rng.uniform(-1, 1, (global_batch, size, size, 3)) for _ in "AB") for _ in range(steps)
    ]


def run(
    weights: str,
    face_weights: str | None,
    steps: int,
    global_batch: int,
    size: int,
    iteration: int,
    remat: bool = False,
    plan: str = "cpu",
) -> dict[str, np.ndarray]:
    """``steps`` steps on every device of every process from ``weights``, with the step
    ``plan`` builds (``parallel.uses_cpu_forms``); needs x64 enabled.

    Returns, on every process, flat arrays: ``step{i}/metrics...`` (losses, lr and the raw
    gradients of step i, summed over devices, before weight decay and Adam) and
    ``step{i}/state...`` (params and spectral state after step i); and ``final/NET.KEY``, the
    state after the last step as torch state_dict entries.
    """
    import jax

    from p2c_jax import parallel
    from p2c_jax.nn.models import TRAINING_NETS
    from p2c_jax.nn.numerics import Numerics
    from p2c_jax.train.config import Hparams
    from p2c_jax.train.partition import make_step
    from p2c_jax.train.state import TrainModel
    from p2c_jax.train.step import TrainStep
    from p2c_jax.weights.convert import load_face_id, load_torch, state_to_torch

    assert jax.config.jax_enable_x64
    nets = load_torch(weights, list(TRAINING_NETS))
    face = load_face_id(face_weights) if face_weights else None
    hp = Hparams(iteration=iteration, faceid_weight=1.0 if face else 0.0)
    mesh = parallel.make_mesh()
    numerics = Numerics.for_devices(jax.devices(), plan=plan)
    model = TrainModel({n: spec for n, (spec, _) in nets.items()}, face, numerics)
    state = model.init_state({n: st for n, (_, st) in nets.items()}, hp)
    state = parallel.put_replicated(jax.tree.map(_float64, state), mesh)
    face_state = parallel.put_replicated(jax.tree.map(_float64, face.state), mesh) if face else None
    step = make_step(TrainStep(model, hp, remat=remat, with_grads=True), mesh, plan)
    per = global_batch // jax.process_count()
    lo = jax.process_index() * per
    out = {}
    for i, (a, b) in enumerate(batches(0, steps, global_batch, size)):
        state, metrics = step(
            state,
            face_state,
            parallel.put_batch(a[lo : lo + per], mesh),
            parallel.put_batch(b[lo : lo + per], mesh),
        )
        nets_state = {k: state[k] for k in ("gen", "dis", "spectral")}
        for group, tree in (("metrics", metrics), ("state", nets_state)):
            for kp, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
                out[f"step{i + 1}/{group}{jax.tree_util.keystr(kp)}"] = np.asarray(
                    parallel.host_value(x)
                )
    host = jax.tree.map(parallel.host_value, state)
    for name in TRAINING_NETS:
        for key, value in state_to_torch(model.net_state(host, name)).items():
            out[f"final/{name}.{key}"] = value
    return out


def _float64(x):
    x = np.asarray(x)
    return x.astype(np.float64) if np.issubdtype(x.dtype, np.floating) else x


def start(
    out: Path,
    devices: int,
    weights: Path,
    face_weights: Path | None,
    steps: int,
    global_batch: int,
    size: int,
    iteration: int,
    process_id: int = 0,
    num_processes: int = 1,
    port: int = 0,
    remat: bool = False,
    plan: str = "cpu",
) -> subprocess.Popen:
    """This file as a script, in a process with ``devices`` CPU devices, the step of ``plan``
    (``parallel.uses_cpu_forms``: the accelerator plan runs on CPU too)."""
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
        "PYTHONFAULTHANDLER": "1",
        # this checkout, not whichever one p2c_jax was installed from
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    cmd = [
        sys.executable,
        __file__,
        "--out",
        str(out),
        "--devices",
        str(devices),
        "--weights",
        str(weights),
        "--steps",
        str(steps),
        "--global_batch",
        str(global_batch),
        "--size",
        str(size),
        "--iteration",
        str(iteration),
        "--process_id",
        str(process_id),
        "--num_processes",
        str(num_processes),
        "--port",
        str(port),
        "--plan",
        plan,
    ]
    if face_weights:
        cmd += ["--face_weights", str(face_weights)]
    if remat:
        cmd.append("--remat")
    return subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def wait(procs: list[subprocess.Popen], timeout: float = 1200) -> None:
    """Wait for every process; raise with the output of the first that failed."""
    for p in procs:
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise RuntimeError("a training run timed out") from None
        if p.returncode != 0:
            raise RuntimeError(f"a training run failed:\n{out[-4000:]}")


def run_together(procs: list[subprocess.Popen]) -> None:
    """``wait`` for ``procs``; none outlives this call."""
    try:
        wait(procs)
    finally:
        for p in procs:
            p.kill()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--face_weights", default=None)
    p.add_argument("--remat", action="store_true")
    p.add_argument("--plan", default="cpu")
    for name in (
        "devices",
        "steps",
        "global_batch",
        "size",
        "iteration",
        "process_id",
        "num_processes",
        "port",
    ):
        p.add_argument(f"--{name}", type=int, required=True)
    args = p.parse_args()
    import jax

    jax.config.update("jax_enable_x64", True)
    if args.num_processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{args.port}",
            num_processes=args.num_processes,
            process_id=args.process_id,
        )
    assert jax.device_count() == args.devices * args.num_processes, jax.devices()
    result = run(
        args.weights,
        args.face_weights,
        args.steps,
        args.global_batch,
        args.size,
        args.iteration,
        remat=args.remat,
        plan=args.plan,
    )
    if jax.process_index() == 0:
        np.savez(args.out, **result)


if __name__ == "__main__":
    _main()

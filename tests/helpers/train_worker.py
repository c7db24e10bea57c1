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
import weakref
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
) -> dict[str, np.ndarray]:
    """``steps`` steps on every device of every process from ``weights``; needs x64 enabled.

    Returns, on every process, flat arrays: ``step{i}/metrics...`` (losses, lr and the raw
    gradients of step i, summed over devices, before weight decay and Adam) and
    ``step{i}/state...`` (params and spectral state after step i); and ``final/NET.KEY``, the
    state after the last step as torch state_dict entries.
    """
    import jax

    from p2c_jax.nn.face_id import FaceID
    from p2c_jax.nn.models import TRAINING_NETS
    from p2c_jax.train import step as ts
    from p2c_jax.train.loop import _host
    from p2c_jax.weights.convert import load_torch, state_to_torch

    assert jax.config.jax_enable_x64
    nets = load_torch(weights, list(TRAINING_NETS))
    face = FaceID.load(face_weights) if face_weights else None
    hp = ts.Hparams(iteration=iteration, faceid_weight=1.0 if face else 0.0)
    model = ts.TrainModel({n: spec for n, (spec, _) in nets.items()}, face)
    mesh = ts.make_mesh()
    state = model.init_state({n: st for n, (_, st) in nets.items()}, hp)
    state = ts.put_replicated(jax.tree.map(_float64, state), mesh)
    face_state = ts.put_replicated(jax.tree.map(_float64, face.state), mesh) if face else None
    step = ts.make_step(model, hp, mesh, with_grads=True, remat=remat)
    residuals = track_residuals(step) if isinstance(step, ts.SplitStep) and not remat else None
    per = global_batch // jax.process_count()
    lo = jax.process_index() * per
    out = {}
    for i, (a, b) in enumerate(batches(0, steps, global_batch, size)):
        state, metrics = step(
            state,
            face_state,
            ts.put_batch(a[lo : lo + per], mesh),
            ts.put_batch(b[lo : lo + per], mesh),
        )
        nets_state = {k: state[k] for k in ("gen", "dis", "spectral")}
        for group, tree in (("metrics", metrics), ("state", nets_state)):
            for kp, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
                out[f"step{i + 1}/{group}{jax.tree_util.keystr(kp)}"] = np.asarray(_host(x))
    if residuals is not None:
        out["residuals/calls"] = np.asarray(len(residuals["refs"]))
        out["residuals/most_alive"] = np.asarray(residuals["most_alive"])
        out["residuals/alive_after"] = np.asarray(sum(r() is not None for r in residuals["refs"]))
    host = jax.tree.map(_host, state)
    for name in TRAINING_NETS:
        for key, value in state_to_torch(model.net_state(host, name)).items():
            out[f"final/{name}.{key}"] = value
    return out


def track_residuals(step) -> dict:
    """Counts how many generator calls of ``step`` hold their vjp residuals at once: a weak
    reference per call, the most alive at any call in ``most_alive``."""
    import jax

    seen = {"refs": [], "most_alive": 0}
    for programs in {id(p): p for p in step._gen.values()}.values():

        def forward(params, x, forward=programs["forward"]):
            y, cam, vjp = forward(params, x)
            seen["refs"].append(weakref.ref(jax.tree.leaves(vjp)[0]))
            alive = sum(r() is not None for r in seen["refs"])
            seen["most_alive"] = max(seen["most_alive"], alive)
            return y, cam, vjp

        programs["forward"] = forward
    return seen


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
    (``p2c_jax.backend``: the accelerator plan runs on CPU too)."""
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
        "PYTHONFAULTHANDLER": "1",
        "P2C_PLAN": plan,
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
    )
    if jax.process_index() == 0:
        np.savez(args.out, **result)


if __name__ == "__main__":
    _main()

"""The accelerator plan on one device: generator throughput and the training step, ours against
our PyTorch port of the original on the same device, float32 and bfloat16.

    python bench/accelerator.py            # on a GPU; prints a Markdown table (~8 minutes)
    python bench/accelerator.py --smoke    # tiny sizes on CPU, to check that it runs

Needs only jax, flax, optax, orbax-checkpoint, numpy and torch (not this package installed: it
runs from the repository). float32 is true float32 on both sides (our products at HIGHEST;
torch with TF32 off); bfloat16 is our policy (``p2c_jax.nn.precision``) against torch's
autocast. Every training configuration runs in a process of its own, so that its peak device
memory is its own; a configuration that would pass the time budget is skipped and said so.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def _sizes(smoke: bool) -> dict:
    both = ("float32", "bfloat16")
    if smoke:  # 96: the smallest size the original's 7-layer discriminator takes
        return {
            "img": 32,
            "train_img": 96,
            "ch": 4,
            "gen_batches": (1, 2),
            "train_batches": (1,),
            "train_precisions": ("float32",),
            "repeats": 2,
        }
    return {
        "img": 256,
        "train_img": 256,
        "ch": 32,
        "gen_batches": (1, 8, 32),
        "train_batches": (1, 8),
        "train_precisions": both,
        "repeats": 10,
    }


def _timed(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` (which blocks until its result is ready) after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _compile_seconds():
    import jax

    seen = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, secs, **_: seen.append(secs) if event == COMPILE_EVENT else None
    )
    return seen


def _peak_device_bytes() -> int | None:
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def generator_rows(sizes: dict) -> list[dict]:
    """Images/s of the light generator, ours (accelerator plan) and torch's, per batch and
    precision."""
    import jax
    import numpy as np
    import torch
    from flax import nnx

    from p2c_jax.inference import forward
    from p2c_jax.nn.models import NetSpec, build
    from p2c_jax.pytorch import bridge

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    spec = NetSpec("generator", sizes["ch"], img_size=sizes["img"], light=True)
    state = jax.device_put(nnx.state(build(spec)))
    model = bridge.from_state(spec, state).to(device)
    compiled = None
    if device == "cuda":  # on CPU (the smoke run) its C++ compile alone takes minutes
        try:
            compiled = torch.compile(model)
        except Exception as e:  # noqa: BLE001 - torch.compile is optional here
            print(f"torch.compile unavailable: {type(e).__name__}: {e}", file=sys.stderr)
    compiles = _compile_seconds()
    rows = []
    for precision in ("float32", "bfloat16"):
        fwd = forward(spec, precision, plan="accelerator")
        for batch in sizes["gen_batches"]:
            x = np.random.default_rng(batch).uniform(
                -1, 1, (batch, spec.img_size, spec.img_size, 3)
            )
            xj = jax.device_put(x.astype(np.float32))
            xt = torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32)).to(device)
            before = len(compiles)
            ours = _timed(lambda: jax.block_until_ready(fwd(state, xj)), sizes["repeats"])
            row = {
                "precision": precision,
                "batch": batch,
                "ours_img_s": batch / ours,
                "compile_s": sum(compiles[before:]),
            }
            autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bfloat16")
            for name, net in (("torch", model), ("torch_compile", compiled)):
                if net is None:
                    continue

                def run(net=net):
                    with torch.no_grad(), autocast:
                        net(xt)
                    if device == "cuda":
                        torch.cuda.synchronize()

                try:
                    row[f"{name}_img_s"] = batch / _timed(run, sizes["repeats"])
                except Exception as e:  # noqa: BLE001 - torch.compile may fail on a backend
                    print(f"{name} failed: {type(e).__name__}: {e}", file=sys.stderr)
            rows.append(row)
    return rows


def train_row(side: str, precision: str, batch: int, sizes: dict) -> dict:
    """Seconds per training step (Face-ID on), compile time and peak device memory of one side,
    in this process."""
    import numpy as np

    shape = (batch, sizes["train_img"], sizes["train_img"], 3)
    rng = np.random.default_rng(0)
    if side == "torch":
        import torch
        from helpers.torch_trainer import TorchTrainer

        from p2c_jax.nn.models import training_specs
        from p2c_jax.pytorch import bridge, nets
        from p2c_jax.train.config import Hparams

        device = "cuda" if torch.cuda.is_available() else "cpu"
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        specs = training_specs(sizes["ch"], sizes["train_img"], True)
        torch_nets = {n: bridge.torch_module(s).to(device) for n, s in specs.items()}
        trainer = TorchTrainer(torch_nets, nets.MobileFaceNet(512).to(device), Hparams())
        a, b = (
            torch.from_numpy(rng.uniform(-1, 1, shape).astype(np.float32)).to(device) for _ in "AB"
        )
        a, b = a.permute(0, 3, 1, 2), b.permute(0, 3, 1, 2)
        autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bfloat16")

        def step():
            with autocast:
                trainer.step(a, b)
            if device == "cuda":
                torch.cuda.synchronize()

        seconds = _timed(step, sizes["repeats"])
        peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
        return {"s_step": seconds, "compile_s": None, "peak_bytes": peak}

    import jax
    from flax import nnx

    from p2c_jax import parallel
    from p2c_jax.nn.face_id import FaceID
    from p2c_jax.nn.models import NetSpec, build, training_specs
    from p2c_jax.nn.numerics import Numerics
    from p2c_jax.train.config import Hparams
    from p2c_jax.train.partition import make_step
    from p2c_jax.train.state import TrainModel, fresh_nets
    from p2c_jax.train.step import TrainStep

    specs = training_specs(sizes["ch"], sizes["train_img"], True)
    face_spec = NetSpec("mobilefacenet", 512)
    face = FaceID(face_spec, nnx.state(build(face_spec)))
    hp = Hparams()
    mesh = parallel.make_mesh(jax.devices()[:1])
    model = TrainModel(specs, face, Numerics(precision))
    state = parallel.put_replicated(model.init_state(fresh_nets(specs, 0), hp), mesh)
    face_state = parallel.put_replicated(face.state, mesh)
    step = make_step(TrainStep(model, hp), mesh, plan="accelerator")
    a, b = (parallel.put_batch(rng.uniform(-1, 1, shape).astype(np.float32), mesh) for _ in "AB")
    compiles = _compile_seconds()
    holder = {"state": state}

    def run():
        holder["state"], metrics = step(holder["state"], face_state, a, b)
        jax.block_until_ready(metrics)

    seconds = _timed(run, sizes["repeats"])
    return {"s_step": seconds, "compile_s": sum(compiles), "peak_bytes": _peak_device_bytes()}


def _child(args) -> None:
    sizes = _sizes(args.smoke)
    print(json.dumps(train_row(args.side, args.precision, args.batch, sizes)))


def _train_rows(smoke: bool, deadline: float) -> list[dict]:
    rows = []
    sizes = _sizes(smoke)
    for batch in sizes["train_batches"]:
        for precision in sizes["train_precisions"]:
            row = {"batch": batch, "precision": precision}
            for side in ("ours", "torch"):
                left = deadline - time.monotonic()
                if left < 30:
                    row[side] = "skipped: time budget"
                    continue
                cmd = [
                    sys.executable,
                    __file__,
                    "--child",
                    "--side",
                    side,
                    "--precision",
                    precision,
                    "--batch",
                    str(batch),
                ]
                cmd += ["--smoke"] if smoke else []
                try:
                    out = subprocess.run(
                        cmd,
                        capture_output=True,
                        text=True,
                        timeout=left,
                        check=True,
                        env=os.environ.copy(),
                    )
                    row[side] = json.loads(out.stdout.strip().splitlines()[-1])
                except subprocess.TimeoutExpired:
                    row[side] = "skipped: time budget"
                except subprocess.CalledProcessError as e:
                    row[side] = f"failed: {e.stderr.strip().splitlines()[-1][:200]}"
            rows.append(row)
    return rows


def _fmt(x, unit: str = "") -> str:
    if x is None:
        return "-"
    return f"{x:.3g}{unit}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes, for a CPU check")
    p.add_argument("--budget_s", type=float, default=450, help="stop starting new configs after")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--side", default="ours", help=argparse.SUPPRESS)
    p.add_argument("--precision", default="float32", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _child(args)
        return
    deadline = time.monotonic() + args.budget_s
    import jax
    import torch

    print(
        f"# {jax.devices()[0].device_kind}; jax {jax.__version__}, torch {torch.__version__}; "
        f"{time.strftime('%Y-%m-%d')}\n"
    )
    print(
        "| generator | batch | ours img/s | torch eager img/s | torch.compile img/s "
        "| ours / eager | compile s |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in generator_rows(_sizes(args.smoke)):
        ratio = r["ours_img_s"] / r["torch_img_s"] if r.get("torch_img_s") else None
        print(
            f"| {r['precision']} | {r['batch']} | {_fmt(r['ours_img_s'])} "
            f"| {_fmt(r.get('torch_img_s'))} | {_fmt(r.get('torch_compile_img_s'))} "
            f"| {_fmt(ratio, 'x')} | {_fmt(r['compile_s'])} |"
        )
    print(
        "\n| training step | batch | ours s/step | torch s/step | speed-up | ours compile s "
        "| ours peak GB | torch peak GB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in _train_rows(args.smoke, deadline):
        ours, theirs = r["ours"], r["torch"]
        if isinstance(ours, str) or isinstance(theirs, str):
            print(
                f"| {r['precision']} | {r['batch']} | {ours if isinstance(ours, str) else ''} "
                f"| {theirs if isinstance(theirs, str) else ''} | | | | |"
            )
            continue
        gb = [None if x["peak_bytes"] is None else x["peak_bytes"] / 2**30 for x in (ours, theirs)]
        print(
            f"| {r['precision']} | {r['batch']} | {_fmt(ours['s_step'])} "
            f"| {_fmt(theirs['s_step'])} | {_fmt(theirs['s_step'] / ours['s_step'], 'x')} "
            f"| {_fmt(ours['compile_s'])} | {_fmt(gb[0])} | {_fmt(gb[1])} |"
        )


if __name__ == "__main__":
    main()

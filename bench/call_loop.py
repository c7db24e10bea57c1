"""Why the staged step runs its generator calls one program call per call on XLA:CPU: four
later generator calls (forward and backward, the step's ``call_loss``) as one program called
four times, against one program looping over the four with ``lax.map`` (the fused step's form).

    python bench/call_loop.py [--img_size 256] [--ch 32] [--repeats 2]

Both sides run in this process, one after the other, at the CPU plan's numerics; the table gives
the first call (compile included) and the best of ``--repeats`` later ones.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from p2c_jax.nn.models import training_specs
from p2c_jax.nn.numerics import Numerics
from p2c_jax.train.config import Hparams
from p2c_jax.train.state import TrainModel, fresh_nets
from p2c_jax.train.step import TrainStep

CALLS = 4


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--img_size", type=int, default=256)
    p.add_argument("--ch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    specs = training_specs(args.ch, args.img_size, True)
    model = TrainModel(specs, None, Numerics.for_devices(jax.devices()[:1]))
    hp = Hparams(faceid_weight=0.0)
    step = TrainStep(model, hp)
    params = model.init_state(fresh_nets(specs, 0), hp)["gen"]["genA2B"]
    shape = (CALLS, 1, args.img_size, args.img_size, 3)
    xs = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32))

    def objective(params, x):
        return step.call_loss(step.translate(params, x), x, hp.cycle_weight, 0.0)

    def one(params, x):
        return jax.value_and_grad(objective, (0, 1), has_aux=True)(params, x)

    per_call = jax.jit(one)
    stacked = jax.tree.map(lambda a: jnp.stack([a] * CALLS), params)
    looped = jax.jit(lambda ps, xs: jax.lax.map(lambda a: one(*a), (ps, xs)))
    sides = {
        "one program per call": lambda: [per_call(params, xs[i]) for i in range(CALLS)],
        "one lax.map program": lambda: looped(stacked, xs),
    }
    print(f"{CALLS} generator calls, forward and backward, {args.img_size} px, ch {args.ch}")
    print(f"{'side':24s} {'first call s':>13s} {'later s':>9s}")
    for name, run in sides.items():
        times = []
        for _ in range(1 + args.repeats):
            t = time.perf_counter()
            jax.block_until_ready(run())
            times.append(time.perf_counter() - t)
        print(f"{name:24s} {times[0]:13.1f} {min(times[1:]):9.2f}", flush=True)


if __name__ == "__main__":
    main()

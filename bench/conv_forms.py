"""Each convolution shape of the generator, in the form ``layers.conv2d`` picks for it, against
XLA's own convolution and torch's, forward and gradient (input and kernel), batch 1, float32.

    python bench/conv_forms.py [--repeats 10]

Times are the best of ``--repeats`` calls, in milliseconds, all in this one process.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
import torch

from p2c_jax.nn.layers import conv2d
from p2c_jax.nn.numerics import FLOAT32, Numerics

CPU_FORMS = Numerics(conv_forms=True)

# (height = width of the output, C_in, C_out, kernel, stride, zero padding): the generator's
# convolutions at ngf 32 and 256 x 256 (reflection pads are applied before them, so padding 0)
SHAPES = [
    (64, 128, 128, 3, 1, 0),
    (256, 32, 16, 3, 1, 0),
    (128, 32, 16, 3, 1, 0),
    (256, 16, 8, 3, 1, 0),
    (256, 3, 32, 7, 1, 0),
    (256, 3, 3, 7, 1, 0),
    (256, 32, 32, 1, 1, 0),
    (256, 32, 3, 1, 1, 0),
    (128, 32, 64, 3, 2, 0),
    (64, 64, 128, 3, 2, 0),
    (64, 128, 64, 2, 1, 0),
]


def _best(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * min(times)


def _jax_times(conv, x, k, repeats: int) -> tuple[float, float]:
    fwd = jax.jit(conv)
    grad = jax.jit(jax.grad(lambda x, k: (conv(x, k) ** 2).sum(), argnums=(0, 1)))
    return (
        _best(lambda: jax.block_until_ready(fwd(x, k)), repeats),
        _best(lambda: jax.block_until_ready(grad(x, k)), repeats),
    )


def _torch_times(x, k, stride: int, repeats: int) -> tuple[float, float]:
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_()
    kt = torch.from_numpy(k.transpose(3, 2, 0, 1).copy()).requires_grad_()

    def fwd():
        with torch.no_grad():
            torch.nn.functional.conv2d(xt, kt, stride=stride)

    def grad():
        torch.autograd.grad(
            (torch.nn.functional.conv2d(xt, kt, stride=stride) ** 2).sum(), (xt, kt)
        )

    return _best(fwd, repeats), _best(grad, repeats)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    print(
        "| output | C_in -> C_out | kernel/stride | forward ms: ours / XLA conv / torch "
        "| gradient ms: ours / XLA conv / torch |"
    )
    print("|---|---|---|---|---|")
    for size, c_in, c_out, kernel, stride, pad in SHAPES:
        side = (size - 1) * stride + kernel - 2 * pad
        x = rng.standard_normal((1, side, side, c_in)).astype(np.float32)
        k = (rng.standard_normal((kernel, kernel, c_in, c_out)) / np.sqrt(c_in * kernel**2)).astype(
            np.float32
        )
        ours = _jax_times(
            lambda x, k: conv2d(x, k, None, CPU_FORMS, stride, pad), x, k, args.repeats
        )
        xla = _jax_times(lambda x, k: FLOAT32.conv(x, k, stride, pad), x, k, args.repeats)
        ref = _torch_times(x, k, stride, args.repeats)
        print(
            f"| {size} | {c_in} -> {c_out} | {kernel}x{kernel}/{stride} | "
            f"{ours[0]:.2f} / {xla[0]:.2f} / {ref[0]:.2f} | {ours[1]:.2f} / {xla[1]:.2f} / {ref[1]:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()

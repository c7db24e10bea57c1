"""Train photo2cartoon: ``p2c-train --dataset NAME_OR_PATH [flags]``.

The original's flags, names and defaults, so old command lines keep working, plus ours (every
field of ``p2c_jax.train.config.Config``) and the multi-host flags. ``--batch_size`` is the
global batch, split over every device of every host. Try
``p2c-train --dataset demo --img_size 96 --ch 8 --iteration 200 --faceid_weight 0``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from p2c_jax.cli.common import (
    add_compile_cache_flag,
    setup_logging,
    str2bool,
    use_compile_cache,
)
from p2c_jax.train import config


def build_parser() -> argparse.ArgumentParser:
    from preprocessing.flags import Parser, number

    p = Parser(prog="p2c-train", description=__doc__.split("\n")[0])
    config.add_flags(p, str2bool)
    add_compile_cache_flag(p)
    # the original's flags that have nothing left to set
    p.add_argument("--phase", default="train", help="train (test: use infer.py)")
    p.add_argument(
        "--n_dis",
        type=number(int, minimum=1),
        default=6,
        help="accepted and unused, as in the original (its discriminators have 7 and 5 layers)",
    )
    p.add_argument("--img_ch", type=int, choices=[3], default=3, help="images are RGB")
    p.add_argument(
        "--gpu_ids",
        type=number(int, minimum=0),
        nargs="+",
        default=[0],
        help="not needed: every local device (and every host) is used",
    )
    p.add_argument(
        "--benchmark_flag",
        type=str2bool,
        default=False,
        help="not needed: XLA picks its convolution algorithms when compiling",
    )
    # several hosts
    p.add_argument(
        "--coordinator_address",
        default=None,
        help="multi-host: host:port of process 0 (else read from the environment)",
    )
    p.add_argument("--num_processes", type=number(int, minimum=1), default=None)
    p.add_argument("--process_id", type=number(int, minimum=0), default=None)
    # a TPU slice, compiled for on this host
    p.add_argument(
        "--compile_only",
        type=str2bool,
        nargs="?",
        const=True,
        default=False,
        help="compile the step for --topology's TPU slice on this host, run nothing: a "
        "table of its memory, collectives, FLOPs and roofline, and WORKDIR/compile_report.json "
        '(needs the TPU extra: pip install "jax[tpu]")',
    )
    p.add_argument(
        "--topology",
        default=None,
        help="with --compile_only: the TPU slice as Cloud TPU names it (v4-8, v5e-16, "
        "v5litepod-256, v5p-128, v6e-64) or as libtpu does (v5e:4x4)",
    )
    p.add_argument(
        "--num_slices",
        type=number(int, minimum=1),
        default=1,
        help="with --compile_only: slices of --topology (multi-slice over the data-center network)",
    )
    return p


def compile_only(cfg: config.Config, name: str | None, num_slices: int) -> int:
    """``--compile_only``: the report of ``cfg``'s step on ``num_slices`` slices ``name``;
    exit status 0, or 2 with one line saying why not."""
    from p2c_jax import topology
    from p2c_jax.train.errors import TrainError

    try:
        if name is None:
            raise ValueError("--compile_only needs --topology NAME (a TPU slice, e.g. v5e-16)")
        topology.parse(name)
        if not topology.has_libtpu():
            raise ValueError(f"--compile_only needs libtpu, the TPU extra: {topology.TPU_EXTRA}")
        from p2c_jax.train import compile_report

        r = compile_report.report(cfg, name, num_slices)
    except (ValueError, TrainError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(compile_report.table(r))
    print(f"report: {compile_report.write(r, cfg.run_dir())}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 trained to --iteration; 2 a run that cannot start; 3 a checkpoint that
    could not be written (one line: its path, the errno, the last complete checkpoint); 128 +
    the signal (130 Ctrl-C, 143 SIGTERM) when stopped by one, once its step is saved."""
    setup_logging()
    args = build_parser().parse_args(argv)
    if args.phase != "train":
        print(
            "error: --phase test is infer.py's job: python infer.py --weights WORKDIR ...",
            file=sys.stderr,
        )
        return 2
    if args.compile_only:
        import jax

        # no compile cache: jax 0.10 cannot read a TPU program back without a TPU (docs/tpu.md)
        jax.config.update("jax_enable_compilation_cache", False)
        return compile_only(config.from_args(args), args.topology, args.num_slices)
    use_compile_cache(args.compile_cache)
    from p2c_jax.train import loop
    from p2c_jax.train.loop import Interrupted

    loop.maybe_initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
    try:
        loop.train(config.from_args(args))
    except loop.TrainError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except loop.SaveError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except Interrupted as e:  # raised once the step is saved
        return 128 + e.signum
    return 0


if __name__ == "__main__":
    sys.exit(main())

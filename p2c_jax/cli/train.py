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
    add_compile_only_flags,
    compile_only_done,
    setup_logging,
    start_compile_only,
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
    add_compile_only_flags(p, "the training step")
    return p


def compile_only(cfg: config.Config, args: argparse.Namespace) -> int:
    """``--compile_only``: the report of ``cfg``'s step on ``--num_slices`` slices
    ``--topology``; exit status 0, or 2 with one line saying why not."""
    from p2c_jax.train.errors import TrainError

    try:
        start_compile_only(args.topology)
        from p2c_jax.train import compile_report

        r = compile_report.report(cfg, args.topology, args.num_slices, args.max_batch_search)
    except (ValueError, TrainError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return compile_only_done(compile_report.table(r), r, cfg.run_dir())


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
        return compile_only(config.from_args(args), args)
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

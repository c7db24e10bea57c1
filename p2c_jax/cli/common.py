"""What the commands share: boolean flags as the original spells them, the compile cache,
the logging of warnings."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys

import jax

from p2c_jax.train.config import checked_img_size
from preprocessing.flags import number


def str2bool(v: str) -> bool:
    """The original's ``--flag true|false`` values."""
    if v.lower() in ("true", "1", "yes", "y", "t"):
        return True
    if v.lower() in ("false", "0", "no", "n", "f"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {v!r}")


def default_compile_cache() -> str:
    """``$JAX_COMPILATION_CACHE_DIR``, else ``p2c-jax/xla`` in the user's cache folder."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "p2c-jax", "xla")


def add_compile_cache_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--compile_cache",
        default=default_compile_cache(),
        help="folder where compiled programs are kept for later commands, which "
        "then start sooner (default: %(default)s); none: no cache",
    )


def use_compile_cache(folder: str) -> None:
    """Keep compiled programs in ``folder`` (``none``: nowhere); the first program read back
    from it says so, once."""
    if folder != "none":
        jax.config.update("jax_compilation_cache_dir", folder)
        _say_first_cache_hit(folder)


@functools.cache  # one listener per folder and process
def _say_first_cache_hit(folder: str) -> None:
    said = []

    def on_hit(event: str, seconds: float, **_) -> None:
        if event == "/jax/compilation_cache/compile_time_saved_sec" and not said:
            said.append(seconds)
            print(f"compile cache: reusing programs compiled earlier ({folder})", file=sys.stderr)

    jax.monitoring.register_event_duration_secs_listener(on_hit)


def add_compile_only_flags(p: argparse.ArgumentParser, what: str) -> None:
    """``--compile_only``, ``--topology``, ``--num_slices`` and ``--max_batch_search``:
    ``what`` compiled for devices this host need not have (docs/tpu.md)."""
    p.add_argument(
        "--compile_only",
        type=str2bool,
        nargs="?",
        const=True,
        default=False,
        help=f"compile {what} for --topology's devices on this host, run nothing: a table of "
        "its memory, collectives, FLOPs and roofline, and compile_report.json (needs the "
        'compiler: pip install "jax[tpu]" for a TPU, jax-cuda12-plugin for a GPU)',
    )
    p.add_argument(
        "--topology",
        default=None,
        help="with --compile_only: a TPU slice as Cloud TPU names it (v4-8, v5e-16, "
        "v5litepod-256, v5p-128, v6e-64) or as libtpu does (v5e:4x4), or a GPU machine "
        "(h100-1, h100-8, h200-1, h200-8)",
    )
    p.add_argument(
        "--num_slices",
        type=number(int, minimum=1),
        default=1,
        help="with --compile_only: slices of --topology (multi-slice over the data-center "
        "network; GPU machines: hosts)",
    )
    p.add_argument(
        "--max_batch_search",
        type=str2bool,
        nargs="?",
        const=True,
        default=False,
        help="with --compile_only: also find the largest per-chip batch that fits, compiling "
        "each batch tried (from --batch_size's and its double, then where memory's line "
        "reaches the chip's)",
    )


def start_compile_only(name: str | None) -> None:
    """Ready ``--compile_only --topology NAME``: a ValueError (one line) where NAME is missing
    or unknown or its compiler is not installed; the compile cache off (jax cannot read a
    deviceless TPU program back, docs/tpu.md; GPU ones untried) and the CUDA plugin's check of the CUDA libraries,
    which compiling does not use, skipped."""
    from p2c_jax import topology

    if name is None:
        raise ValueError("--compile_only needs --topology NAME (e.g. v5e-16, h100-8)")
    extra = topology.missing_extra(name)
    if extra:
        raise ValueError(f"--compile_only --topology {name} needs its compiler: {extra}")
    os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
    jax.config.update("jax_enable_compilation_cache", False)


def compile_only_done(table: str, report: dict, folder: str) -> int:
    """Print a ``--compile_only`` report's ``table``, write ``report`` as
    ``folder/compile_report.json``; exit status 0."""
    from p2c_jax import aot_report

    print(table)
    print(f"report: {aot_report.write(report, folder)}")
    return 0


class _LevelFormatter(logging.Formatter):
    """``warning: message``: the level in lower case, as the commands' own messages."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def setup_logging() -> None:
    """Warnings (and errors) of every logger as one ``warning: ...`` line on stderr. Called
    first in ``main``: the first absl message (Orbax's import) would configure it otherwise."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LevelFormatter())
    logging.basicConfig(level=logging.WARNING, handlers=[handler])  # no-op if configured


def unusable_weights(weights: str, e: Exception) -> str:
    """The one line for weights that did not load: a ``CheckpointError`` says what is wrong;
    any other error (a damaged file) is named with the path and its type."""
    from p2c_jax.weights.checkpoint import CheckpointError

    detail = e if isinstance(e, CheckpointError) else f"{weights}: {type(e).__name__}: {e}"
    return f"error: unusable weights: {detail}"


def add_precision_flag(p: argparse.ArgumentParser) -> None:
    from p2c_jax.nn.numerics import PRECISIONS

    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="float32",
        help="the generator's products: float32, or bfloat16 (statistics and outputs float32)",
    )


#: ``--img_size``'s type: ``inference.check_img_size``, as ``p2c-train``'s
img_size = number(int, check=checked_img_size)


def add_img_size_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--img_size",
        type=img_size,
        default=None,
        help="face size the generator runs at (default: 256, the original's, whatever the "
        "weights file; a full generator runs only at its own size); see README 'Output size'",
    )

"""What the commands share: boolean flags as the original spells them, the compile cache."""

from __future__ import annotations

import argparse
import os

import jax


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
    if folder != "none":
        jax.config.update("jax_compilation_cache_dir", folder)


def add_precision_flag(p: argparse.ArgumentParser) -> None:
    from p2c_jax.nn.numerics import PRECISIONS

    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="float32",
        help="the generator's products: float32, or bfloat16 (statistics and outputs float32)",
    )


def add_img_size_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--img_size",
        type=_img_size,
        default=None,
        help="face size the generator runs at (default: 256, the original's, whatever the "
        "weights file; a full generator runs only at its own size); see README 'Output size'",
    )


def _img_size(v: str) -> int:
    from p2c_jax.inference import check_img_size

    try:
        return check_img_size(int(v))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None

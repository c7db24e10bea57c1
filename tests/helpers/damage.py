"""The three ways a checkpoint step is found damaged (issue 28), applied to a copy."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

KINDS = ("truncated", "no_metadata", "garbled")


def _largest(folder: Path) -> Path:
    return max(folder.iterdir(), key=lambda p: p.stat().st_size)


def damage(step_dir: Path, kind: str) -> None:
    """Damage checkpoint ``step_dir``: truncate its largest train-state array file, delete
    nets/_METADATA, or write random bytes over its largest nets data file."""
    if kind == "truncated":
        f = _largest(step_dir / "train_state" / "ocdbt.process_0" / "d")
        os.truncate(f, f.stat().st_size // 2)
    elif kind == "no_metadata":
        (step_dir / "nets" / "_METADATA").unlink()
    elif kind == "garbled":
        f = _largest(step_dir / "nets" / "ocdbt.process_0" / "d")
        f.write_bytes(np.random.default_rng(0).bytes(f.stat().st_size))
    else:
        raise ValueError(f"unknown damage {kind!r}: expected one of {KINDS}")

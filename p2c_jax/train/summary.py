"""TensorBoard event files (through tensorboardX, which needs only numpy and protobuf)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np


class SummaryWriter:
    """Scalars and images for TensorBoard under `logdir`; a no-op unless `enabled` (process 0)."""

    def __init__(self, logdir: str | Path, enabled: bool = True):
        self._writer = None
        if enabled:
            from tensorboardX import SummaryWriter as _Writer

            self._writer = _Writer(logdir=str(logdir))

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """One scalar per tag at `step` (jax/numpy scalars are converted)."""
        if self._writer is not None:
            for tag, value in values.items():
                self._writer.add_scalar(tag, float(value), int(step))

    def image(self, step: int, name: str, image: np.ndarray) -> None:
        """A uint8 RGB [H, W, 3] image at `step`."""
        if self._writer is not None:
            image = np.asarray(image)
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
            self._writer.add_image(name, image, int(step), dataformats="HWC")

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

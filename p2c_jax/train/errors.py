"""The training run's one error type, below both the loop and its evaluation."""

from __future__ import annotations


class TrainError(RuntimeError):
    """A run that cannot start; the message names the flag to change."""


class SaveError(RuntimeError):
    """A checkpoint that could not be written: the run stops at once. The message is one line:
    the checkpoint's path, the errno, the last complete checkpoint."""

"""The training package's error, below every module that raises it."""


class TrainError(RuntimeError):
    """A run that cannot start; the message names the flag to change."""

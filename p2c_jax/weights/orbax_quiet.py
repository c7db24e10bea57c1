"""Orbax's aftermath of a failed read or write, kept out of the output.

When one array of a checkpoint fails to read or write (a damaged file, a full disk), Orbax closes
its event loop while the I/O of the other arrays runs on: each then fails to call back into the
closed loop (an unraisable "Event loop is closed", printed as a traceback), asyncio logs "Task
exception was never retrieved" for each when it is collected (even after the command has
returned), and Orbax logs a traceback per failed array. The first error says it all (the caller
turns it into one line): ``quiet_failures`` drops the rest while its body runs and, once the
body has raised, for the rest of the process, since the leftovers arrive later.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator

_ORBAX = f"{os.sep}orbax{os.sep}"


def _from_orbax(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR and _ORBAX in record.pathname


def _unretrieved(record: logging.LogRecord) -> bool:
    return "exception was never retrieved" in record.getMessage()


def _after_failed_io(unraisable) -> bool:
    exc, code = unraisable.exc_value, getattr(unraisable.object, "cr_code", None)
    closed = isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"
    return closed or (code is not None and _ORBAX in code.co_filename)


class _Drop(logging.Filter):
    def __init__(self, drop: Callable[[logging.LogRecord], bool]):
        super().__init__()
        self.drop = drop

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.drop(record)


@contextlib.contextmanager
def quiet_failures() -> Iterator[None]:
    """Orbax's error logs, asyncio's unretrieved task errors and the unraisable errors of I/O
    left behind stay out of the output while the body runs, and for good once it has raised."""
    filters = [
        (logging.getLogger("absl"), _Drop(_from_orbax)),
        (logging.getLogger("asyncio"), _Drop(_unretrieved)),
    ]
    for logger, f in filters:
        logger.addFilter(f)
    previous = sys.unraisablehook

    def hook(unraisable) -> None:
        if not _after_failed_io(unraisable):
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    except BaseException:
        raise  # the filters stay: the failed I/O's leftovers come later
    for logger, f in filters:
        logger.removeFilter(f)
    sys.unraisablehook = previous

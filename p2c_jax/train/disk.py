"""Write failures during a run (a full disk, a file-size limit).

A checkpoint that cannot be written stops the run at once with one line (``SaveError``): Orbax
reports a failed background write as a ``ValueError`` naming TensorStore's ``os_error_code``,
with a traceback per failed array in its own logs and in ``asyncio``'s, and one per pending
write after its event loop closed; ``weights.orbax_quiet.quiet_failures`` keeps those out of
the output.
Sample grids, TensorBoard events and evaluation reports are side outputs: ``Warnings`` says
once per kind that one failed, and training goes on.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable

from p2c_jax.train.errors import SaveError

_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")


def why(e: BaseException) -> str:
    """``[Errno 28] No space left on device (ENOSPC)`` of ``e`` or its causes, else its first
    line."""
    seen = e
    while seen is not None:
        number = getattr(seen, "errno", None)
        if number is None:
            m = _OS_ERROR_CODE.search(str(seen))
            number = int(m.group(1)) if m else None
        if number is not None:
            return f"[Errno {number}] {os.strerror(number)} ({errno.errorcode.get(number, '?')})"
        seen = seen.__cause__ or seen.__context__
    return (str(e).splitlines() or [type(e).__name__])[0][:300]


def save_error(directory, step: int, last_good: int | None, e: BaseException) -> SaveError:
    """The one line of a checkpoint ``step`` under ``directory`` that failed with ``e``."""
    last = (
        f"the last complete checkpoint is {directory}/{last_good}"
        if last_good is not None
        else "no checkpoint of this run is complete"
    )
    return SaveError(f"checkpoint {directory}/{step} not written: {why(e)}; {last}")


class Warnings:
    """One warning line per kind of failed write, the first time it fails."""

    def __init__(self, log: Callable[[str], None]):
        self.log, self.said = log, set()

    def __call__(self, kind: str, path, e: OSError) -> None:
        if kind not in self.said:
            self.said.add(kind)
            self.log(
                f"warning: {kind} not written ({path}): {why(e)}; training goes on (said once)"
            )

"""TensorBoard event files (through tensorboardX, which needs only numpy and protobuf).

Events are written in the training thread (tensorboardX's ``EventsWriter``, not its queue and
thread: there a failed write kills the thread and the next ``add_*`` blocks on a full queue), so
a failed write is one warning and TensorBoard logging stops while training goes on. ``flush``
at each checkpoint puts every event up to that step on disk before the checkpoint exists.

A run that continues from step ``start`` first drops, from the event files already there, the
events it will log again (those after ``start``; all of them when it starts from 0), a torn last
record and files left empty, each file rewritten atomically: every reader of the folder
(TensorBoard, or any reader of the files in name order) sees each step once after a kill -9.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable, Iterator, Mapping

import numpy as np
from etils import epath

from p2c_jax import paths
from p2c_jax.train.disk import why

EVENT_FILES = "events.out.tfevents.*"
_HEADER = struct.Struct("<QI")  # the record's length and that length's masked CRC-32C
_CRC = struct.Struct("<I")


class SummaryWriter:
    """Scalars and images for TensorBoard under ``logdir``; a no-op unless ``enabled`` (process
    0). ``start``: the step the run continues from (0: a fresh run); ``warn`` says, once, that a
    write failed."""

    def __init__(
        self,
        logdir: str | os.PathLike,
        enabled: bool = True,
        *,
        start: int = 0,
        warn: Callable[[str], None] = print,
    ):
        self._events, self._warn, self._logdir = None, warn, logdir
        if enabled:
            self._events = self._guarded(_open, paths.as_path(logdir), start)

    def _guarded(self, write: Callable, *args):
        try:
            return write(*args)
        except OSError as e:
            self._warn(
                f"warning: TensorBoard events not written under {self._logdir}: {why(e)}; "
                "TensorBoard logging stops, training goes on"
            )
            self._events = None
            return None

    def _add(self, step: int, summary) -> None:
        if self._events is not None:
            from tensorboardX.proto.event_pb2 import Event

            event = Event(wall_time=time.time(), step=int(step), summary=summary)
            self._guarded(self._events.write_event, event)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """One scalar per tag at ``step`` (jax/numpy scalars are converted)."""
        from tensorboardX.summary import scalar

        for tag, value in values.items():
            self._add(step, scalar(tag, float(value)))

    def image(self, step: int, name: str, image: np.ndarray) -> None:
        """A uint8 RGB [H, W, 3] image at ``step``."""
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
        if self._events is not None:
            from tensorboardX.summary import image as image_summary

            self._add(step, image_summary(name, image, dataformats="HWC"))

    def flush(self) -> None:
        """Every event so far onto the disk (fsync; gs://: uploaded)."""
        if self._events is not None:
            self._guarded(self._events.flush)

    def close(self) -> None:
        if self._events is not None:
            self._guarded(self._events.close)
            self._events = None


def _open(logdir: epath.Path, start: int):
    from tensorboardX.event_file_writer import EventsWriter

    drop_after(logdir, start if start else -1)
    logdir.mkdir(parents=True, exist_ok=True)
    # the start step in the name: two runs that start in the same second from the same step
    # share a name (tensorboardX opens it "wb"), and the first one's events, all after that
    # step, were dropped above
    return EventsWriter(str(logdir / "events"), f".{start}")


def _masked_crc(data: bytes) -> int:
    from tensorboardX.record_writer import masked_crc32c

    return masked_crc32c(data)


def records(data: bytes) -> Iterator[bytes]:
    """The TFRecord payloads of an event file's bytes, up to the first torn or damaged one."""
    i = 0
    while i + _HEADER.size <= len(data):
        length, length_crc = _HEADER.unpack_from(data, i)
        end = i + _HEADER.size + length + _CRC.size
        if length_crc != _masked_crc(data[i : i + 8]) or end > len(data):
            return
        payload = data[i + _HEADER.size : end - _CRC.size]
        if _CRC.unpack_from(data, end - _CRC.size)[0] != _masked_crc(payload):
            return
        yield payload
        i = end


def _record(payload: bytes) -> bytes:
    header = struct.pack("<Q", len(payload))
    return header + _CRC.pack(_masked_crc(header)) + payload + _CRC.pack(_masked_crc(payload))


def drop_after(logdir: str | os.PathLike, last: int) -> None:
    """Keep, in ``logdir``'s event files, only the summaries of steps <= ``last`` (with each
    file's header event); a file left without summaries is removed, a changed one rewritten
    atomically."""
    from tensorboardX.proto.event_pb2 import Event

    logdir = paths.as_path(logdir)
    if not logdir.exists():
        return
    for path in sorted(logdir.glob(EVENT_FILES)):
        data = path.read_bytes()
        kept, summaries = [], 0
        for payload in records(data):
            event = Event.FromString(payload)
            if not event.HasField("summary"):
                kept.append(payload)  # the file_version header
            elif event.step <= last:
                kept.append(payload)
                summaries += 1
        if not summaries:
            path.unlink()
            continue
        new = b"".join(_record(p) for p in kept)
        if new != data:
            paths.write_bytes_atomic(path, new)


def read_scalars(logdir: str | os.PathLike) -> list[tuple[str, int, float]]:
    """(tag, step, value) of every scalar in ``logdir``'s event files, in file-name order."""
    from tensorboardX.proto.event_pb2 import Event

    out = []
    for path in sorted(paths.as_path(logdir).glob(EVENT_FILES)):
        for payload in records(path.read_bytes()):
            event = Event.FromString(payload)
            out += [
                (v.tag, event.step, v.simple_value)
                for v in event.summary.value
                if v.HasField("simple_value")
            ]
    return out

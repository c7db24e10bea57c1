"""An independent reader of TensorBoard event files: TFRecord framing, its CRC-32C computed here
bit by bit (the package reads them through tensorboardX's)."""

from __future__ import annotations

import struct
from pathlib import Path


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    crc = _crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def read_events(path: Path) -> list:
    """Every event of a file; asserts that each record is whole and its CRCs hold."""
    from tensorboardX.proto.event_pb2 import Event

    data, events, i = path.read_bytes(), [], 0
    while i < len(data):
        header = data[i : i + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[i + 8 : i + 12])[0] == masked_crc(header), path
        body = data[i + 12 : i + 12 + length]
        assert len(body) == length, f"{path}: a torn record"
        end = data[i + 12 + length : i + 16 + length]
        assert struct.unpack("<I", end)[0] == masked_crc(body), path
        events.append(Event.FromString(body))
        i += 16 + length
    return events


def scalars(logdir: Path) -> list[tuple[str, int, float]]:
    """(tag, step, value) of every scalar under ``logdir``, its files in name order."""
    return [
        (v.tag, e.step, v.simple_value)
        for path in sorted(logdir.glob("events.out.tfevents.*"))
        for e in read_events(path)
        for v in e.summary.value
        if v.HasField("simple_value")
    ]

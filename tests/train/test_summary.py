"""TensorBoard events across kill -9 and resume, and a failed event write."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from helpers.events import read_events, scalars
from tensorboardX import record_writer
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto.event_pb2 import Event
from tensorboardX.summary import scalar

from p2c_jax.train.summary import SummaryWriter


def _killed_run(logdir: Path, name: str, run: int, steps: range) -> None:
    """The event file of a run killed -9: ``loss`` = 100 * run + step at each step."""
    writer = EventsWriter(str(logdir / "events"), f".{name}")
    for step in steps:
        summary = scalar("loss", 100 * run + step)
        writer.write_event(Event(wall_time=0.0, step=step, summary=summary))
    writer.close()


def test_resumed_runs_log_each_step_once(tmp_path):
    """Run 1 logs 1..5 and is killed after checkpoint 3; run 2 resumes at 3, logs 4..7 (7 torn)
    and is killed after checkpoint 6; a third start is killed before its first event (a 0-byte
    file); run 4 resumes at 6 and logs 7..8: every reader of the folder sees steps 1..8 once,
    each from the run that the checkpoints continued."""
    logdir = tmp_path / "tb"
    logdir.mkdir()
    _killed_run(logdir, "a", 1, range(1, 6))
    run2 = SummaryWriter(logdir, start=3)
    for step in range(4, 8):
        run2.scalars(step, {"loss": 200 + step})
    run2.flush()  # killed: not closed, its last record torn
    [path] = logdir.glob("*.3")
    path.write_bytes(path.read_bytes()[:-7])
    (logdir / "events.out.tfevents.0000000001.host.c").write_bytes(b"")
    writer = SummaryWriter(logdir, start=6)
    for step in (7, 8):
        writer.scalars(step, {"loss": 400 + step})
    writer.close()
    got = sorted((step, value) for _, step, value in scalars(logdir))
    assert got == [(1, 101), (2, 102), (3, 103), (4, 204), (5, 205), (6, 206), (7, 407), (8, 408)]
    files = sorted(logdir.iterdir())
    assert len(files) == 3 and all(read_events(p)[0].file_version for p in files)


def test_fresh_start_drops_every_earlier_event(tmp_path):
    """A run starting from step 0 (no checkpoint survived) logs step 0's evaluation again."""
    logdir = tmp_path / "tb"
    logdir.mkdir()
    _killed_run(logdir, "a", 1, range(0, 3))
    SummaryWriter(logdir, start=0).close()
    assert scalars(logdir) == []


def test_failed_event_write_warns_once_and_training_goes_on(tmp_path, monkeypatch):
    """Events written to /dev/full (ENOSPC at the flush): one warning, then nothing, no
    exception, no blocked queue."""
    monkeypatch.setattr(record_writer, "open_file", lambda path: open("/dev/full", "wb"))  # noqa: SIM115
    said: list[str] = []
    writer = SummaryWriter(tmp_path / "tb", warn=said.append)
    for step in range(1, 50):
        writer.scalars(step, {"loss": float(step)})
        writer.flush()
    writer.close()
    assert len(said) == 1, said
    assert said[0].startswith(f"warning: TensorBoard events not written under {tmp_path / 'tb'}")
    assert f"[Errno {errno.ENOSPC}]" in said[0] and "training goes on" in said[0]


@pytest.mark.parametrize("cut", [1, 8, 13])
def test_torn_records_of_any_length_are_dropped(tmp_path, cut):
    logdir = tmp_path / "tb"
    logdir.mkdir()
    _killed_run(logdir, "a", 1, range(1, 4))
    [path] = logdir.iterdir()
    data = path.read_bytes()
    path.write_bytes(data + data[-30:][:cut])  # a torn copy of a record's start
    SummaryWriter(logdir, start=3).close()
    assert [s for _, s, _ in scalars(logdir)] == [1, 2, 3]

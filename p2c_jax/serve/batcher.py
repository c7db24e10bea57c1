"""Faces of concurrent requests onto the device together: a queue, one device thread, a short
maximum wait.

A request hands its faces to ``Batcher.__call__`` and awaits their images; the device thread
takes the oldest face, gathers more for at most ``max_wait_s`` after that face arrived (none
while a backlog is already waiting), runs them as one batch and hands each image back to its
request's event loop. The event loop itself never waits on the device, so the server keeps
answering while a batch runs.

``Buckets`` is the generator as a few compiled batch sizes (powers of two up to the largest),
so a batch of 3 faces computes 4 images, not the largest batch size.
"""

from __future__ import annotations

import asyncio
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax
import numpy as np

from p2c_jax.inference import BatchedGenerator, CompiledNet


class Buckets:
    """``x [n, S, S, 3] -> image [n, S, S, 3]`` for any n up to ``max_batch``, on the smallest
    compiled batch size that holds n (each a multiple of the local device count)."""

    def __init__(self, gen: CompiledNet, max_batch: int, devices: Sequence | None = None):
        n = len(devices or jax.local_devices())
        sizes, b = [], 1
        while True:
            size = math.ceil(b / n) * n  # BatchedGenerator's rounding to the device count
            if not sizes or size > sizes[-1]:
                sizes.append(size)
            if size >= max_batch:
                break
            b *= 2
        self.generators = {s: BatchedGenerator(gen, s, devices) for s in sizes}
        self.sizes = sorted(self.generators)
        self.max_batch = self.sizes[-1]
        self.size = gen.spec.img_size

    def warmup(self) -> None:
        """Compile every batch size now, not on the first requests."""
        for s, g in self.generators.items():
            g(np.zeros((s, self.size, self.size, 3), np.float32))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        size = next(s for s in self.sizes if s >= len(x))
        return self.generators[size](x)


class StoppedError(RuntimeError):
    """The batcher was stopped before the face was computed."""


@dataclass
class _Job:
    x: np.ndarray  # [S, S, 3]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    arrived: float


def _deliver(job: _Job, result: np.ndarray | None, error: BaseException | None) -> None:
    def set_() -> None:
        if job.future.done():  # the request went away
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)

    job.loop.call_soon_threadsafe(set_)


class Batcher:
    """The device thread and its queue. ``run`` computes a batch of at most ``max_batch``."""

    def __init__(
        self, run: Callable[[np.ndarray], np.ndarray], max_batch: int, max_wait_s: float = 0.01
    ):
        self.run, self.max_batch, self.max_wait_s = run, max(1, max_batch), max_wait_s
        self.calls = 0  # batches run
        self.images = 0  # faces computed
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.busy = threading.Event()  # set while a batch runs

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="p2c-device", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Finish the faces already queued, then end the device thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    async def __call__(self, x: np.ndarray) -> np.ndarray:
        """The generator's images of the faces ``x`` [n, S, S, 3] (computed with other
        requests' faces)."""
        if self._thread is None:
            raise StoppedError("the batcher is not running")
        loop = asyncio.get_running_loop()
        futures = []
        for xi in x:
            job = _Job(xi, loop.create_future(), loop, time.monotonic())
            self._queue.put(job)
            futures.append(job.future)
        return np.stack(await asyncio.gather(*futures))

    def _take(self) -> tuple[list[_Job], bool]:
        """The next batch; True once the stop sentinel was seen."""
        first = self._queue.get()
        if first is None:
            return [], True
        jobs, deadline = [first], first.arrived + self.max_wait_s
        while len(jobs) < self.max_batch:
            try:
                job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
        return jobs, False

    def _loop(self) -> None:
        stopping = False
        while not stopping:
            jobs, stopping = self._take()
            jobs = [j for j in jobs if not j.future.cancelled()]
            if not jobs:
                continue
            self.busy.set()
            try:
                ys = self.run(np.stack([j.x for j in jobs]))
                self.calls, self.images = self.calls + 1, self.images + len(jobs)
            except Exception as exc:  # noqa: BLE001 - handed to the requests, the thread goes on
                for j in jobs:
                    _deliver(j, None, exc)
                continue
            finally:
                self.busy.clear()
            for j, y in zip(jobs, ys):
                _deliver(j, y, None)
        # after stop(): whatever is still queued will not be computed
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                _deliver(job, None, StoppedError("the server is shutting down"))

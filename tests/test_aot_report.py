"""The search for the largest per-chip batch that fits, on fake compiles whose memory is known:
four compiles for a linear memory, the right answer for any memory that grows with the batch,
its bounds, each compile reported once."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from p2c_jax import aot, aot_report

USABLE = 16 * 2**30  # a v5e's HBM


class FakeCompiles:
    """A program whose memory at a per-chip batch is ``memory(batch)``; records the batches
    compiled."""

    def __init__(self, memory):
        self.memory, self.tried = memory, []

    def measure(self, batch: int) -> tuple[int, bool]:
        self.tried.append(batch)
        total = self.memory(batch)
        return total, total <= USABLE

    def report(self, batch: int) -> dict:
        total, _ = self.measure(batch)
        return {
            "batch_per_chip": batch,
            "memory_bytes": {"total": total},
            "usable_bytes": USABLE,
            "fits": total <= USABLE,
            "compile_seconds": 0.5,
            "max_batch_per_chip": None,
        }


def linear(fixed: float, per_image: float):
    return lambda batch: int(fixed + per_image * batch)


def brute_force(memory, limit: int = aot_report.SEARCH_LIMIT) -> int:
    return max((b for b in range(1, limit + 1) if memory(b) <= USABLE), default=0)


@pytest.mark.parametrize("fixed", [0.3e9, 3e9, 12e9])
@pytest.mark.parametrize("per_image", [5e6, 2.9e8, 1.1e9])
@pytest.mark.parametrize("start", [1, 3, 8])
def test_a_linear_memory_takes_four_compiles(fixed, per_image, start):
    memory = linear(fixed, per_image)
    fake = FakeCompiles(memory)
    want = min(brute_force(memory), aot_report.SEARCH_LIMIT)
    assert aot_report.largest_fitting(fake.measure, USABLE, start) == want
    assert len(fake.tried) == len(set(fake.tried))  # no batch compiled twice
    assert len(fake.tried) <= 4
    if 2 * start <= want:
        assert fake.tried[:2] == [start, 2 * start]


def test_any_growing_memory_gets_the_right_answer_in_few_compiles():
    """Steps (tiles), curves and jumps, drawn at random and sorted: the answer of trying
    every batch, in at most 2 log2(limit) + 2 compiles."""
    rng = np.random.default_rng(0)
    bound = 2 * math.log2(aot_report.SEARCH_LIMIT) + 2
    for trial in range(300):
        grows = np.sort(rng.exponential(1.0, aot_report.SEARCH_LIMIT + 2)).cumsum()
        curve = grows / grows[rng.integers(1, aot_report.SEARCH_LIMIT + 2)] * USABLE
        kind = trial % 3  # as drawn, in tiles of 8, or squared
        memory = [
            lambda b, c=curve: int(c[b]),
            lambda b, c=curve: int(c[8 * math.ceil(b / 8) if b < 1024 else b]),
            lambda b, c=curve: int(c[b] ** 2 / USABLE),
        ][kind]
        fake = FakeCompiles(memory)
        start = int(rng.integers(1, 9))
        assert aot_report.largest_fitting(fake.measure, USABLE, start) == brute_force(memory)
        assert len(fake.tried) == len(set(fake.tried)) and len(fake.tried) <= bound, fake.tried


def test_none_fits_and_the_limit_bounds_the_search():
    fake = FakeCompiles(linear(20e9, 1e9))
    assert aot_report.largest_fitting(fake.measure, USABLE, 8) == 0
    assert fake.tried[0] == 8 and fake.tried[-1] == 1 and len(fake.tried) <= 4
    fake = FakeCompiles(linear(1e6, 1e3))
    assert aot_report.largest_fitting(fake.measure, USABLE, 3, limit=100) == 100
    assert fake.tried == [3, 6, 100]


def test_search_reports_each_compile_once_and_reuses_the_first():
    fake = FakeCompiles(linear(2e9, 2.5e9))  # 6 images fit in 16 GiB, 7 do not
    first = fake.report(2)
    said = []
    r = aot_report.search_max_batch(fake.report, first, said.append)
    assert r["max_batch_per_chip"] == 6 and r["batch_per_chip"] == 2
    assert fake.tried == [2, 4, 6, 7]  # 2: the first report's compile, not compiled again
    assert said == r["max_batch_search"]
    assert [(t["batch_per_chip"], t["fits"], t["total_bytes"]) for t in said] == [
        (2, True, 7e9),
        (4, True, 12e9),
        (6, True, 17e9),
        (7, False, 19.5e9),
    ]


@pytest.mark.parametrize("said", [True, False])
def test_refused_compiles_are_batches_that_do_not_fit(said):
    """XLA:TPU refuses to compile a program over the chip's memory, saying what it needs or
    not: the search takes such a batch as one that does not fit, and still finds the answer
    of trying every batch."""
    rng = np.random.default_rng(1)
    for _ in range(100):
        memory = linear(rng.uniform(0.1e9, 12e9), rng.uniform(1e6, 3e9))
        tried = []

        def measure(batch, memory=memory, tried=tried):
            tried.append(batch)
            fits = memory(batch) <= USABLE
            return (memory(batch) if fits or said else None), fits

        start = int(rng.integers(1, 9))
        assert aot_report.largest_fitting(measure, USABLE, start) == brute_force(memory)
        assert len(tried) == len(set(tried)) and len(tried) <= 2 * math.log2(1024) + 2, tried


def test_a_refused_program_reports_what_the_compiler_said(capsys):
    message = (
        "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
        "temporaries (15.79G) exceeds available HBM (15.75G)."
    )
    v5e = [SimpleNamespace(device_kind="TPU v5 lite", process_index=i // 4) for i in range(16)]
    r = aot_report.costs(aot.Refused(message), v5e, "float32", 3)
    assert not r["fits"] and r["refused"] == message
    assert r["memory_bytes"]["total"] == round(15.79 * 2**30)
    assert r["memory_bytes"]["arguments"] is None and r["collectives"] is None
    assert r["roofline_seconds"] is None and r["images_per_second"] is None
    assert (r["chips"], r["hosts"], r["global_batch"], r["usable_bytes"]) == (
        16,
        4,
        48,
        round(15.75 * 2**30),
    )
    head = {"topology": "v5e-16", "num_slices": 1, "programs": 1}
    text = aot_report.table({**r, **head, "compile_seconds": 9.0, "lower_seconds": 1.0}, "net")
    assert (
        "needs 15.79 GiB of 15.75 GiB (of 16.00 GiB HBM): does not fit, the compiler refused"
        in text
    )
    assert message in text and "roofline" not in text and "collectives" not in text
    aot_report.print_try(
        {
            "batch_per_chip": 3,
            "total_bytes": None,
            "fits": False,
            "refused": True,
            "compile_seconds": 9,
        }
    )
    assert capsys.readouterr().out == (
        "batch 3 per chip: does not fit (the compiler refused it) (compiled in 9.0 s)\n"
    )

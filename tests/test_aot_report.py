"""The search for the largest per-chip batch that fits, on fake compiles whose memory is known:
doubling then bisection, its bounds, each compile reported once."""

from __future__ import annotations

import pytest

from p2c_jax import aot_report


class FakeCompiles:
    """A program that fits up to ``largest`` images per chip; records the batches compiled."""

    def __init__(self, largest: int):
        self.largest, self.tried = largest, []

    def fits(self, batch: int) -> bool:
        self.tried.append(batch)
        return batch <= self.largest

    def report(self, batch: int) -> dict:
        return {
            "batch_per_chip": batch,
            "memory_bytes": {"total": 1000 * batch},
            "fits": self.fits(batch),
            "compile_seconds": 0.5,
            "max_batch_per_chip": None,
        }


@pytest.mark.parametrize("largest", [1, 2, 5, 8, 37, 100, 1023])
@pytest.mark.parametrize("start", [1, 3, 8])
def test_finds_the_largest_batch_that_fits(largest, start):
    fake = FakeCompiles(largest)
    assert aot_report.largest_fitting(fake.fits, start) == largest
    assert len(fake.tried) == len(set(fake.tried))  # no batch compiled twice
    assert fake.tried[: 1 + (largest >= start)] == [start, 2 * start][: 1 + (largest >= start)]


def test_doubles_then_bisects():
    fake = FakeCompiles(37)
    assert aot_report.largest_fitting(fake.fits, 4) == 37
    # 4 8 16 32 fit, 64 does not; then between 32 and 64
    assert fake.tried == [4, 8, 16, 32, 64, 48, 40, 36, 38, 37]


def test_none_fits_and_the_limit_bounds_the_search():
    fake = FakeCompiles(0)
    assert aot_report.largest_fitting(fake.fits, 8) == 0
    assert fake.tried == [8, 4, 2, 1]
    fake = FakeCompiles(10**6)
    assert aot_report.largest_fitting(fake.fits, 3, limit=100) == 100
    assert fake.tried == [3, 6, 12, 24, 48, 96, 100]


def test_search_reports_each_compile_once_and_reuses_the_first():
    fake = FakeCompiles(5)
    first = fake.report(2)
    said = []
    r = aot_report.search_max_batch(fake.report, first, said.append)
    assert r["max_batch_per_chip"] == 5 and r["batch_per_chip"] == 2
    assert fake.tried == [2, 4, 8, 6, 5]  # 2: the first report's compile, not compiled again
    assert said == r["max_batch_search"]
    assert [(t["batch_per_chip"], t["fits"], t["total_bytes"]) for t in said] == [
        (2, True, 2000),
        (4, True, 4000),
        (8, False, 8000),
        (6, False, 6000),
        (5, True, 5000),
    ]

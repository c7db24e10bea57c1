"""FID and KID: against scipy's sqrtm, a written-out KID, and closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from p2c_jax.eval import metrics


def _features(seed: int, n: int, d: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((d, d)) / np.sqrt(d)
    return (rng.standard_normal((n, d)) @ mix + shift).astype(np.float32)


def _scipy_fid(f1: np.ndarray, f2: np.ndarray) -> float:
    """pytorch-fid's formula on scipy's sqrtm of the product, all in float64."""
    f1, f2 = f1.astype(np.float64), f2.astype(np.float64)
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("d", [8, 64])
def test_fid_equals_scipy_sqrtm(d):
    f1, f2 = _features(0, 400, d), _features(1, 300, d, shift=0.3)
    ours, ref = metrics.fid(f1, f2), _scipy_fid(f1, f2)
    assert ours == pytest.approx(ref, rel=1e-6)


def test_fid_of_a_set_with_itself_is_zero():
    # more dimensions than samples: singular covariances, where sqrtm of S1 S2 is fragile
    for n, d in ((500, 32), (40, 128)):
        f = _features(2, n, d)
        scale = np.trace(np.cov(f.astype(np.float64), rowvar=False))
        assert abs(metrics.fid(f, f)) < 1e-9 * scale


def test_fid_closed_form_gaussians():
    rng = np.random.default_rng(3)
    mu1, mu2 = rng.standard_normal(5), rng.standard_normal(5)
    # diagonal covariances: sum (a + b - 2 sqrt(ab))
    a, b = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    expected = ((mu1 - mu2) ** 2).sum() + (a + b - 2 * np.sqrt(a * b)).sum()
    assert metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected)
    # S2 = c^2 S1 (commuting, full): tr S1 (1 - c)^2
    q = rng.standard_normal((5, 5))
    s1, c = q @ q.T + np.eye(5), 1.7
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) * (1 - c) ** 2
    assert metrics.frechet_distance(mu1, s1, mu2, c * c * s1) == pytest.approx(expected)
    # 2 x 2, not commuting: tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)) for M = S1 S2
    s1 = np.array([[2.0, 0.3], [0.3, 1.0]])
    s2 = np.array([[1.0, -0.4], [-0.4, 0.5]])
    m = s1 @ s2
    tr_sqrt = np.sqrt(np.trace(m) + 2 * np.sqrt(np.linalg.det(m)))
    expected = ((mu1[:2] - mu2[:2]) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert metrics.frechet_distance(mu1[:2], s1, mu2[:2], s2) == pytest.approx(expected, rel=1e-12)


def _kid_written_out(f1, f2, subsets, size, seed):
    """torch-fidelity's KID, each sum written out: k(x, y) = (x.y / d + 1)^3, unbiased MMD^2
    with the within-set sums over i != j, over subsets drawn by RandomState(seed)."""
    rng = np.random.RandomState(seed)
    d = f1.shape[1]
    values = []
    for _ in range(subsets):
        x = f1[rng.choice(len(f1), size, replace=False)].astype(np.float64)
        y = f2[rng.choice(len(f2), size, replace=False)].astype(np.float64)
        k = lambda u, v: (u @ v / d + 1) ** 3  # noqa: E731
        xx = sum(k(x[i], x[j]) for i in range(size) for j in range(size) if i != j)
        yy = sum(k(y[i], y[j]) for i in range(size) for j in range(size) if i != j)
        xy = sum(k(x[i], y[j]) for i in range(size) for j in range(size))
        values.append((xx + yy) / (size * (size - 1)) - 2 * xy / (size * size))
    return np.mean(values), np.std(values)


@pytest.mark.parametrize("gram_limit", [metrics.GRAM_LIMIT, 0])  # kernel matrices once / per subset
def test_kid_equals_written_out_formula(monkeypatch, gram_limit):
    monkeypatch.setattr(metrics, "GRAM_LIMIT", gram_limit)
    f1, f2 = _features(4, 30, 16), _features(5, 25, 16, shift=0.5)
    mean, std = metrics.kid(f1, f2, subsets=5, subset_size=12, seed=7)
    ref_mean, ref_std = _kid_written_out(f1, f2, 5, 12, 7)
    assert mean == pytest.approx(ref_mean, rel=1e-6)
    assert std == pytest.approx(ref_std, rel=1e-6)
    assert std > 0


def test_kid_defaults_and_small_sets():
    f1, f2 = _features(6, 20, 8), _features(7, 15, 8, shift=1.0)
    mean, std = metrics.kid(f1, f2)  # subsets of min(1000, 20, 15) = 15
    ref_mean, ref_std = _kid_written_out(f1, f2, 100, 15, metrics.KID_SEED)
    assert (mean, std) == (pytest.approx(ref_mean, rel=1e-6), pytest.approx(ref_std, abs=1e-9))
    assert mean > 0
    both = _features(6, 400, 8)  # two halves of one sample: MMD^2 ~ 0
    alike, _ = metrics.kid(both[:200], both[200:], subsets=20, subset_size=100)
    assert abs(alike) < 0.02 * mean
    with pytest.raises(ValueError, match="at least 2"):
        metrics.kid(f1[:1], f2)

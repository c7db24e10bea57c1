"""FID and KID from feature sets, in float64 on the host.

FID (Heusel et al. 2017) is the Fréchet distance of the Gaussian fits of two feature sets,
``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))``. The trace of the square root is taken
from the eigenvalues of the symmetric positive semi-definite ``S1^(1/2) S2 S1^(1/2)``, which has
the same eigenvalues as ``S1 S2``: no complex parts and no failure on the singular covariances
of sets smaller than the feature dimension, where ``scipy.linalg.sqrtm(S1 @ S2)`` may need an
offset (pytorch-fid) or return garbage.

KID (Bińkowski et al. 2018) is the unbiased MMD^2 estimate with the kernel
``k(x, y) = (x.y / d + 1)^3``, averaged over random subsets, as torch-fidelity computes it
(100 subsets of 1000, ``RandomState(2020)``, each subset drawn without replacement, mean and
population std of the subset values). Where a set has fewer than ``subset_size`` features, the
subsets take all of the smaller set's size (torch-fidelity refuses instead).
"""

from __future__ import annotations

import numpy as np

KID_SUBSETS, KID_SUBSET_SIZE, KID_SEED = 100, 1000, 2020


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) of ``features`` ``[N, D]`` in float64 (``np.cov``, N - 1)."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"need [N >= 2, D] features, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _psd_eigvals(w: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with those below rounding level (negative ones included)
    set to 0: their square roots would add noise of ~1e-8 each to a rank-deficient trace."""
    return np.where(w > w.max(initial=0) * len(w) * np.finfo(np.float64).eps, w, 0.0)


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(_psd_eigvals(w))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``tr((S1 S2)^(1/2))`` for symmetric PSD ``S1``, ``S2``."""
    s1 = _sqrt_psd(np.asarray(sigma1, np.float64))
    m = s1 @ np.asarray(sigma2, np.float64) @ s1
    return float(np.sqrt(_psd_eigvals(np.linalg.eigvalsh((m + m.T) / 2))).sum())


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """The Fréchet distance of N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"feature sizes differ: {mu1.shape} and {mu2.shape}")
    diff = mu1 - mu2
    covmean = trace_sqrt_product(sigma1, sigma2)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * covmean)


def fid(features1: np.ndarray, features2: np.ndarray) -> float:
    """FID of two feature sets ``[N, D]``, ``[M, D]``."""
    return frechet_distance(*gaussian_stats(features1), *gaussian_stats(features2))


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``(x.y / d + 1)^3`` for every pair of rows, in float64."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return (x @ y.T / x.shape[1] + 1) ** 3


def _mmd2(k_xx: np.ndarray, k_yy: np.ndarray, k_xy: np.ndarray) -> float:
    m = len(k_xx)
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2 * k_xy.sum() / (m * m))


def polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased MMD^2 estimate of two equal-size sets with ``(x.y / d + 1)^3``."""
    if np.shape(x) != np.shape(y) or len(x) < 2:
        raise ValueError(f"need two [m >= 2, d] sets of one shape: {np.shape(x)}, {np.shape(y)}")
    return _mmd2(polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y))


GRAM_LIMIT = 4096  # sets up to this size: the kernel matrices once, subsets index into them


def kid(
    features1: np.ndarray,
    features2: np.ndarray,
    subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    seed: int = KID_SEED,
) -> tuple[float, float]:
    """(mean, std) of ``polynomial_mmd2`` over ``subsets`` random subsets of each set."""
    f1, f2 = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    n1, n2 = len(f1), len(f2)
    m = min(subset_size, n1, n2)
    if m < 2:
        raise ValueError(f"KID needs at least 2 features per set, got {n1} and {n2}")
    rng = np.random.RandomState(seed)
    mmds = np.empty(subsets)
    gram = max(n1, n2) <= GRAM_LIMIT
    if gram:
        k11, k22, k12 = (
            polynomial_kernel(f1, f1),
            polynomial_kernel(f2, f2),
            polynomial_kernel(f1, f2),
        )
    for i in range(subsets):
        a = rng.choice(n1, m, replace=False)
        b = rng.choice(n2, m, replace=False)
        if gram:
            mmds[i] = _mmd2(k11[np.ix_(a, a)], k22[np.ix_(b, b)], k12[np.ix_(a, b)])
        else:
            mmds[i] = polynomial_mmd2(f1[a], f2[b])
    return float(mmds.mean()), float(mmds.std())

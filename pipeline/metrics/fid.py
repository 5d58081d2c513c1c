"""Fréchet Inception Distance (Heusel et al. 2017) between two sets of features.

FID = |μ₁ − μ₂|² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁Σ₂)^½. The trace of the matrix square root is
taken as Σ √λ of the symmetric Σ₁^½ Σ₂ Σ₁^½ (same eigenvalues as Σ₁Σ₂), with
``scipy.linalg.eigh``: the value of ``scipy.linalg.sqrtm`` (tested), about 7× faster at 2048
dimensions and never complex.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg


@dataclass
class GaussianStats:
    mu: np.ndarray  # (D,) float64
    sigma: np.ndarray  # (D, D) float64
    count: int


def feature_stats(features: np.ndarray) -> GaussianStats:
    """Mean and (unbiased, N − 1) covariance of N×D features, in float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"need at least two N×D feature rows, got shape {features.shape}")
    return GaussianStats(features.mean(axis=0), np.cov(features, rowvar=False), len(features))


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = scipy.linalg.eigh(matrix)
    return (vectors * np.sqrt(values.clip(min=0))) @ vectors.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr (Σ₁Σ₂)^½ for covariance matrices."""
    root = _psd_sqrt(sigma1)
    middle = root @ sigma2 @ root
    values = scipy.linalg.eigvalsh((middle + middle.T) / 2)
    return float(np.sqrt(values.clip(min=0)).sum())


def frechet_distance_from_stats(a: GaussianStats, b: GaussianStats) -> float:
    diff = a.mu - b.mu
    value = diff @ diff + np.trace(a.sigma) + np.trace(b.sigma)
    return float(value - 2 * trace_sqrt_product(a.sigma, b.sigma))


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """FID between two N×2048 feature sets (any N ≥ 2; 50k generated images is the papers').

    When a set has fewer images than dimensions its covariance is CᵀC/(n − 1) for the
    centred n×D features C, and Σ₁Σ₂ has the nonzero eigenvalues of the small n×n matrix
    CΣ₂Cᵀ/(n − 1): the same value, in a fraction of the time of a 2048² eigendecomposition.
    """
    a, b = feature_stats(feats_a), feature_stats(feats_b)
    small, other = (feats_a, b) if len(feats_a) <= len(feats_b) else (feats_b, a)
    if len(small) - 1 >= np.shape(small)[1]:
        return frechet_distance_from_stats(a, b)
    centred = np.asarray(small, dtype=np.float64)
    centred = centred - centred.mean(axis=0)
    inner = centred @ other.sigma @ centred.T / (len(small) - 1)
    trace = float(np.sqrt(scipy.linalg.eigvalsh((inner + inner.T) / 2).clip(min=0)).sum())
    diff = a.mu - b.mu
    return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * trace)


def frechet_distance_per_class(
    real: np.ndarray,
    real_labels: np.ndarray,
    fake: np.ndarray,
    fake_labels: np.ndarray,
    classes: list[str],
) -> tuple[dict[str, float | None], dict[str, str]]:
    """FID between the generated and the real features of each class (labels: indices into
    ``classes``): (FID by class name, None for a class with fewer than two images on a side;
    why those are None)."""
    values: dict[str, float | None] = {}
    reasons: dict[str, str] = {}
    for index, name in enumerate(classes):
        a, b = real[real_labels == index], fake[fake_labels == index]
        if min(len(a), len(b)) < 2:
            values[name] = None
            reasons[name] = (
                f"class {name!r} has {len(b)} generated and {len(a)} real image(s); "
                "FID needs at least 2 of each"
            )
        else:
            values[name] = frechet_distance(a, b)
    return values, reasons

"""Inception Score (Salimans et al. 2016): exp E_x KL(p(y|x) ‖ p(y)), over ``splits`` parts.

Needs the classifier's probabilities, which only the NVlabs Inception file provides (see
``pipeline.metrics.inception``).
"""

from __future__ import annotations

import numpy as np

SPLITS = 10


def inception_score(probs: np.ndarray, splits: int = SPLITS) -> tuple[float, float]:
    """(mean, std) over ``splits`` consecutive parts of N×C class probabilities."""
    probs = np.asarray(probs, dtype=np.float64)
    if len(probs) < splits:
        raise ValueError(f"Inception Score needs at least {splits} images (one per split)")
    scores = []
    for part in np.array_split(probs, splits):
        marginal = part.mean(axis=0, keepdims=True)
        kl = (part * (np.log(part + 1e-12) - np.log(marginal + 1e-12))).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))

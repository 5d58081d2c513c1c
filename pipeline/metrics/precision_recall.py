"""Improved precision and recall (Kynkäänniemi et al. 2019) on feature manifolds.

Each set's manifold is the union of balls around its points, each ball reaching the point's
k-th nearest neighbour in the same set (k = 3). Precision: the fraction of generated points
inside the real manifold; recall: the fraction of real points inside the generated one.
Distances are computed in blocks on ``device`` so 50k × 50k never needs the full matrix.
"""

from __future__ import annotations

import numpy as np
import torch

K = 3


def _blocks(count: int, size: int):
    for start in range(0, count, size):
        yield slice(start, min(start + size, count))


def knn_radii(points: torch.Tensor, k: int, block: int) -> torch.Tensor:
    """Distance of each point to its k-th nearest other point of the same set."""
    radii = torch.empty(len(points), dtype=points.dtype, device=points.device)
    for rows in _blocks(len(points), block):
        dist = torch.cdist(points[rows], points)
        # k + 1: the nearest "neighbour" of a point is itself, at distance 0
        radii[rows] = dist.kthvalue(k + 1, dim=1).values
    return radii


def coverage(manifold: torch.Tensor, radii: torch.Tensor, probes: torch.Tensor, block: int):
    """Fraction of ``probes`` within the radius of at least one manifold point."""
    inside = 0
    for rows in _blocks(len(probes), block):
        dist = torch.cdist(probes[rows], manifold)
        inside += int((dist <= radii[None, :]).any(dim=1).sum())
    return inside / len(probes)


def precision_recall(
    real: np.ndarray,
    fake: np.ndarray,
    k: int = K,
    device: str | torch.device = "cpu",
    block: int = 4096,
) -> tuple[float, float]:
    """(precision, recall) of generated features ``fake`` against ``real`` ones."""
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} images in each set")
    x = torch.as_tensor(np.asarray(real), dtype=torch.float32, device=device)
    y = torch.as_tensor(np.asarray(fake), dtype=torch.float32, device=device)
    precision = coverage(x, knn_radii(x, k, block), y, block)
    recall = coverage(y, knn_radii(y, k, block), x, block)
    return precision, recall

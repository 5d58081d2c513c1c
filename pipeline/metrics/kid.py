"""Kernel Inception Distance (Bińkowski et al. 2018): the unbiased MMD² with the cubic
polynomial kernel k(x, y) = (xᵀy / D + 1)³, averaged over random subsets.

The per-subset MMD is torchmetrics' ``poly_mmd``; the subsets are drawn here from a seeded
NumPy generator (torchmetrics' class draws them from torch's global RNG and keeps every
feature as a list of tensors), so a run is reproducible by its seed.
"""

from __future__ import annotations

import numpy as np
import torch

SUBSETS = 100
SUBSET_SIZE = 1000


def kernel_inception_distance(
    real: np.ndarray,
    fake: np.ndarray,
    subsets: int = SUBSETS,
    subset_size: int = SUBSET_SIZE,
    seed: int = 0,
) -> tuple[float, float]:
    """(mean, std) of the unbiased MMD² over ``subsets`` subsets of min(subset_size, N)
    images of each set, drawn without replacement within a subset."""
    # imported here: torchmetrics takes 4 s to import (its audio and scipy.signal modules),
    # which every stage and test importing pipeline.metrics would pay without computing KID
    from torchmetrics.image.kid import poly_mmd

    size = min(len(real), len(fake), subset_size)
    if size < 2:
        raise ValueError("KID needs at least two images in each set")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        x = torch.from_numpy(np.asarray(real[rng.choice(len(real), size, replace=False)]))
        y = torch.from_numpy(np.asarray(fake[rng.choice(len(fake), size, replace=False)]))
        values.append(float(poly_mmd(x.double(), y.double(), degree=3, gamma=None, coef=1.0)))
    return float(np.mean(values)), float(np.std(values))

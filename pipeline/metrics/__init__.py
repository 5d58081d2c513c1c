"""Metrics of generated images: FID, KID, precision/recall, Inception Score, PPL, the
one-face rate and per-class FID, the math one file each, on the standard Inception
features; ``registry`` names them for ``evaluate``::

    from pipeline.metrics import inception_features, frechet_distance
    a = inception_features("data/dataset/dataset.zip", resize="clean")  # N×2048
    b = inception_features(uint8_images)  # N×H×W×3 arrays or N×3×H×W uint8 tensors
    frechet_distance(a, b)

The names below load on first use, so ``pipeline.metrics.registry`` (read by params.yaml
validation) imports without torch. ``inception_score`` and ``precision_recall`` are modules
here (each holds the function of its name).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.metrics.fid import feature_stats, frechet_distance, frechet_distance_from_stats
    from pipeline.metrics.inception import RESIZE_MODES, inception_features, load_inception
    from pipeline.metrics.kid import kernel_inception_distance
    from pipeline.metrics.ppl import perceptual_path_length

_WHERE = {
    "RESIZE_MODES": "inception",
    "feature_stats": "fid",
    "frechet_distance": "fid",
    "frechet_distance_from_stats": "fid",
    "inception_features": "inception",
    "kernel_inception_distance": "kid",
    "load_inception": "inception",
    "perceptual_path_length": "ppl",
}

__all__ = [
    "RESIZE_MODES",
    "feature_stats",
    "frechet_distance",
    "frechet_distance_from_stats",
    "inception_features",
    "kernel_inception_distance",
    "load_inception",
    "perceptual_path_length",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'pipeline.metrics' has no attribute {name!r}")
    return getattr(importlib.import_module(f"pipeline.metrics.{_WHERE[name]}"), name)

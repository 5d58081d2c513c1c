"""Metrics of generated images: FID, KID, precision/recall, Inception Score, PPL, the
one-face rate and per-class FID, the math one file each, on the standard Inception features
(``registry`` names them for ``evaluate``)::

    from pipeline.metrics import inception_features, frechet_distance
    a = inception_features("data/dataset/dataset.zip", resize="clean")  # N×2048
    b = inception_features(uint8_images)  # N×H×W×3 arrays or N×3×H×W uint8 tensors
    frechet_distance(a, b)
"""

from pipeline.metrics.fid import feature_stats, frechet_distance, frechet_distance_from_stats
from pipeline.metrics.inception import RESIZE_MODES, inception_features, load_inception
from pipeline.metrics.inception_score import inception_score
from pipeline.metrics.kid import kernel_inception_distance
from pipeline.metrics.ppl import perceptual_path_length
from pipeline.metrics.precision_recall import precision_recall

__all__ = [
    "RESIZE_MODES",
    "feature_stats",
    "frechet_distance",
    "frechet_distance_from_stats",
    "inception_features",
    "inception_score",
    "kernel_inception_distance",
    "load_inception",
    "perceptual_path_length",
    "precision_recall",
]

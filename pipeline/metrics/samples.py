"""How many samples a metric needs before its number means something: shared by evaluate,
``steamgan fid``/``kid`` and train's cheap FID curve, without importing their networks."""

from __future__ import annotations

# Sample sizes below which a metric's number is noise rather than a measurement. Below them
# the number is still reported (it is what was asked for) with a warning in notes.json and the
# stage's output; null is kept for what cannot be computed at all (docs/evaluation.md,
# "Numbers that mean little"). FID: Inception's 2048×2048 covariance has full rank only
# from 2049 images per set (the published figures use 50k generated). KID: the default
# kid_subset_size.
# Precision/recall: k-NN manifolds of 1k points (the papers use 50k; NVlabs 10k).
# Inception Score: 10 splits of 500 (the papers use 50k). PPL: 1k pairs before its 1%/99%
# trimming (the papers use 100k). One-face rate: 100 images give a standard error <= 0.05.
MIN_SAMPLES = {
    "fid": 2049,
    "kid": 1000,
    "precision_recall": 1000,
    "inception_score": 5000,
    "ppl": 1000,
    "one_face": 100,
}


def sample_warning(metric: str, count: int, what: str) -> str | None:
    """The warning for ``metric`` computed on ``count`` ``what``, or None when enough."""
    need = MIN_SAMPLES[metric]
    if count >= need:
        return None
    return (
        f"{count:,} {what}, below the {need:,} this metric needs to mean much; "
        "compare only runs of equal sizes"
    )

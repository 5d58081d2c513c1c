"""The one-face rate: the fraction of images in which RetinaFace finds exactly one face.

What this project's datasets are curated for (the faces stage keeps banners with exactly one
face), measured the same way on generated images and on the real dataset, so the two rates
can be compared: a generator that learnt the data has about the real rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.faces.base import FaceDetector

# The smallest image side at which the detector's "exactly one face" decision was checked:
# the shared RetinaFace (evaluate.one_face defaults) on the 46 labelled photos of
# ../shared/data/faces squashed to S×S is right on 23/46 at 32 px (chance), 39/46 at 64 px,
# 41/46 at 128 px and 40/46 at 256 px (tests/test_evaluate.py checks 64 px). Below it the
# rate says nothing about faces (noise scored 0.125-0.156 at 32 px), so it is null.
ONE_FACE_MIN_SIZE = 64


def too_small_for_faces(side: int) -> str | None:
    """Why the one-face rate of images whose shorter side is ``side`` is null, or None."""
    if side >= ONE_FACE_MIN_SIZE:
        return None
    return (
        f"images of {side} px are below {ONE_FACE_MIN_SIZE} px, the smallest size at which "
        "the detector's one-face decision was checked (docs/evaluation.md)"
    )


@dataclass
class FaceCounter:
    """Counts images with exactly ``exactly`` faces over a stream of batches; the rate is
    None (see ``note``) when any image is smaller than ``ONE_FACE_MIN_SIZE``."""

    detector: FaceDetector
    exactly: int = 1
    images: int = 0
    matching: int = 0
    smallest: int | None = None

    def add(self, images: Sequence[np.ndarray]) -> None:
        """H×W×3 uint8 RGB images (a list or an N×H×W×3 array)."""
        images = list(images)
        if not images:
            return
        side = min(min(im.shape[:2]) for im in images)
        self.smallest = side if self.smallest is None else min(self.smallest, side)
        self.images += len(images)
        if too_small_for_faces(side):
            return  # the decision would mean nothing: not worth the detector's time
        found = self.detector.detect(images)
        self.matching += sum(len(faces) == self.exactly for faces in found)

    @property
    def note(self) -> str | None:
        return too_small_for_faces(self.smallest) if self.smallest is not None else None

    @property
    def rate(self) -> float | None:
        if not self.images or self.note:
            return None
        return self.matching / self.images


def one_face_rate(detector: FaceDetector, images: Sequence[np.ndarray]) -> float | None:
    counter = FaceCounter(detector)
    counter.add(images)
    return counter.rate

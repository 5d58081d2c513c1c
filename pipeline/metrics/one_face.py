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


@dataclass
class FaceCounter:
    """Counts images with exactly ``exactly`` faces over a stream of batches."""

    detector: FaceDetector
    exactly: int = 1
    images: int = 0
    matching: int = 0

    def add(self, images: Sequence[np.ndarray]) -> None:
        """H×W×3 uint8 RGB images (a list or an N×H×W×3 array)."""
        found = self.detector.detect(list(images))
        self.images += len(found)
        self.matching += sum(len(faces) == self.exactly for faces in found)

    @property
    def rate(self) -> float | None:
        return self.matching / self.images if self.images else None


def one_face_rate(detector: FaceDetector, images: Sequence[np.ndarray]) -> float | None:
    counter = FaceCounter(detector)
    counter.add(images)
    return counter.rate

"""dlib's HOG + linear SVM frontal face detector (the seeds' ``tiny`` variant), optional.

Needs the ``dlib`` extra (``pip install -e ".[dlib]"``, the prebuilt ``dlib-bin`` wheel).
It ships inside dlib, so there are no weights to fetch. CPU only, one image at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.errors import StageError
from pipeline.faces.base import FaceDetector, Faces, clip_boxes, register


@register("dlib")
class DlibHOGDetector(FaceDetector):
    """``upsample``: times the image is doubled first (finds faces under ~80 px);
    ``confidence``: dlib's ``adjust_threshold`` on the SVM score (0 is dlib's default)."""

    def __init__(self, upsample: int = 1, confidence: float = 0.0, device: str = "cpu"):
        try:
            import dlib
        except ImportError:
            raise StageError(
                "the dlib detector needs dlib: pip install -e '.[dlib]' (the dlib-bin wheel)"
            ) from None
        self._detector = dlib.get_frontal_face_detector()
        self.upsample = int(upsample)
        self.confidence = float(confidence)
        self.version = dlib.__version__

    @property
    def settings(self) -> dict[str, Any]:
        return {
            "detector": self.name,
            "model": f"dlib {self.version} frontal_face_detector",
            "upsample": self.upsample,
            "confidence": self.confidence,
        }

    def find(self, images: Sequence[np.ndarray]) -> list[Faces]:
        results = []
        for im in images:
            rects, scores, _ = self._detector.run(
                np.ascontiguousarray(im), self.upsample, self.confidence
            )
            boxes = np.array(
                [[r.left(), r.top(), r.right() + 1, r.bottom() + 1] for r in rects], np.float32
            ).reshape(-1, 4)
            order = np.argsort(-np.asarray(scores, np.float32), kind="stable")
            height, width = im.shape[:2]
            results.append(
                Faces(
                    clip_boxes(boxes[order], width, height), np.asarray(scores, np.float32)[order]
                )
            )
        return results

"""face-alignment's S3FD face detector (``face_detector='sfd'`` in the seeds), used directly.

Only the detector is loaded (``SFDDetector``), not the landmark network, and its weights come
from our registry (``pipeline.weights``) rather than face-alignment's own download. Batches
go through its ``detect_from_batch``; we pad the images to a common size with S3FD's mean
colour and drop boxes centred in the padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.devices import pick_device
from pipeline.errors import StageError, first_line
from pipeline.faces.base import (
    FaceDetector,
    Faces,
    autocast,
    clip_boxes,
    detect_in_batches,
    inside,
    memory_format,
    pad_to_batch,
    register,
)
from pipeline.weights import fetch_weights, sha256_file, weight_spec

S3FD_MEAN_RGB = (123.0, 117.0, 104.0)  # S3FD subtracts (104, 117, 123) from BGR pixels


@register("face_alignment")
class S3FDDetector(FaceDetector):
    """S3FD; a face is a box scoring above ``confidence`` after face-alignment's NMS (0.3)."""

    def __init__(
        self,
        weights: str | Path | None = None,
        confidence: float = 0.5,
        device: str | torch.device = "auto",
        weights_dir: str | Path | None = None,
        download: bool = True,
        batch_size: int = 16,
    ):
        try:
            from face_alignment.detection.sfd.sfd_detector import SFDDetector
        except ImportError as exc:
            raise StageError(
                f"the face_alignment detector needs the face-alignment package ({exc}); "
                "pip install face-alignment"
            ) from None
        if weights is None:
            path = fetch_weights(weight_spec("s3fd"), weights_dir, download)
        else:
            path = Path(weights)
        if not path.is_file():
            raise StageError(f"{path}: no such S3FD checkpoint")
        self.weights_sha256 = sha256_file(path)
        self.device = pick_device(device)
        self.confidence = float(confidence)
        self.batch_size = int(batch_size)
        try:
            self._sfd = SFDDetector(
                str(self.device), path_to_detector=str(path), filter_threshold=self.confidence
            )
        except Exception as exc:  # torch.load / load_state_dict raise many types
            first = first_line(exc, 160)
            raise StageError(
                f"{path}: not an S3FD checkpoint ({exc.__class__.__name__}: {first}); "
                "replace it with a good copy"
            ) from None
        self._sfd.face_detector.to(memory_format=memory_format(self.device))

    @property
    def settings(self) -> dict[str, Any]:
        return {
            "detector": self.name,
            "model": "s3fd",
            "weights_sha256": self.weights_sha256,
            "confidence": self.confidence,
        }

    def find(self, images: Sequence[np.ndarray]) -> list[Faces]:
        return detect_in_batches(images, self.batch_size, self._detect_batch)

    @torch.inference_mode()
    def _detect_batch(self, images: Sequence[np.ndarray]) -> list[Faces]:
        tensors = [
            torch.from_numpy(np.require(im, requirements=["C", "W"])).to(self.device)
            for im in images
        ]
        tensors = [t.permute(2, 0, 1).float() for t in tensors]
        batch = pad_to_batch(tensors, S3FD_MEAN_RGB, multiple=1)
        batch = batch.contiguous(memory_format=memory_format(self.device))
        with autocast(self.device):
            found = self._sfd.detect_from_batch(batch)
        results = []
        for im, boxes in zip(images, found, strict=True):
            height, width = im.shape[:2]
            array = np.asarray(boxes, dtype=np.float32).reshape(-1, 5)
            array = array[inside(array[:, :4], width, height)]
            array = array[np.argsort(-array[:, 4], kind="stable")]
            results.append(Faces(clip_boxes(array[:, :4], width, height), array[:, 4].copy()))
        return results

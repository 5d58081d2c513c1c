"""What every face detector shares: the result type, the interface, the registry by name,
and the batching helpers (device choice, padding to a common size, batched NMS)."""

from __future__ import annotations

import contextlib
import inspect
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from kornia.geometry.bbox import nms

from pipeline.errors import StageError

# The faces stage's and the one-face rate's default: a box more than 60% inside a better one
# is part of that face (see suppress_contained).
DEFAULT_CONTAINMENT = 0.6


@dataclass
class Faces:
    """The faces found in one image, in that image's pixels."""

    boxes: np.ndarray  # (n, 4) float32, x1 y1 x2 y2
    scores: np.ndarray  # (n,) float32, best first
    landmarks: np.ndarray | None = None  # (n, 5, 2): eyes, nose, mouth corners; None if none

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls, landmarks: bool = False) -> Faces:
        return cls(
            np.zeros((0, 4), np.float32),
            np.zeros(0, np.float32),
            np.zeros((0, 5, 2), np.float32) if landmarks else None,
        )


class FaceDetector(ABC):
    """``detect(images)`` on a list of H×W×3 uint8 RGB arrays of any sizes, one ``Faces`` each.

    A detector implements ``find`` (its raw boxes) and ``settings``; ``detect`` is the same
    for every detector: it checks the input and drops boxes mostly contained in a
    higher-scoring box (``containment``, see ``suppress_contained``), which NMS keeps when a
    face is larger than the model's anchors. ``config`` is everything that decides the
    results (weights digest, thresholds, input size, containment); the faces stage keys its
    result cache on it.
    """

    name: ClassVar[str]
    # Intersection over the smaller box's area above which the lower-scoring box is dropped;
    # None keeps every box. load_detector sets it per detector.
    containment: float | None = DEFAULT_CONTAINMENT

    @property
    @abstractmethod
    def settings(self) -> dict[str, Any]: ...

    @abstractmethod
    def find(self, images: Sequence[np.ndarray]) -> list[Faces]: ...

    @property
    def config(self) -> dict[str, Any]:
        return {**self.settings, "containment": self.containment}

    def detect(self, images: Sequence[np.ndarray]) -> list[Faces]:
        check_images(images)
        return [suppress_contained(faces, self.containment) for faces in self.find(images)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


def suppress_contained(faces: Faces, threshold: float | None) -> Faces:
    """``faces`` without the boxes mostly inside a higher-scoring kept box: intersection over
    the smaller of the two areas above ``threshold``. IoU-based NMS keeps such a pair (a
    box nested in a large face has a small IoU with it), so a face counts twice. Written
    here because neither kornia nor torch has a containment-based suppression; a detector
    returns a handful of boxes per image, so a loop over them costs nothing."""
    if threshold is None or len(faces) < 2:
        return faces
    order = np.argsort(-faces.scores, kind="stable")
    boxes = faces.boxes.astype(np.float64)
    areas = (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)
    kept: list[int] = []
    for index in order:
        if kept:
            others = boxes[kept]
            width = np.minimum(others[:, 2], boxes[index, 2]) - np.maximum(
                others[:, 0], boxes[index, 0]
            )
            height = np.minimum(others[:, 3], boxes[index, 3]) - np.maximum(
                others[:, 1], boxes[index, 1]
            )
            overlap = width.clip(0) * height.clip(0)
            smaller = np.minimum(areas[kept], areas[index]).clip(min=1e-6)
            if (overlap / smaller > threshold).any():
                continue
        kept.append(int(index))
    keep = np.array(kept, dtype=np.int64)
    landmarks = None if faces.landmarks is None else faces.landmarks[keep]
    return Faces(faces.boxes[keep], faces.scores[keep], landmarks)


DETECTORS: dict[str, Callable[..., FaceDetector]] = {}


def register(name: str):
    """Class decorator: make a detector loadable by ``load_detector(name, ...)``."""

    def wrap(cls):
        cls.name = name
        DETECTORS[name] = cls
        return cls

    return wrap


def load_detector(
    name: str, containment: float | None = DEFAULT_CONTAINMENT, **options: Any
) -> FaceDetector:
    """A ready detector by registry name, e.g. ``load_detector("retinaface", confidence=0.9)``,
    with ``containment`` as its suppression of nested boxes (None: off).

    An unknown name or option stops with one line listing what is allowed.
    """
    factory = DETECTORS.get(name)
    if factory is None:
        raise StageError(f"unknown face detector {name!r} (known: {', '.join(DETECTORS)})")
    allowed = [p for p in inspect.signature(factory).parameters if p != "self"]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise StageError(
            f"face detector {name!r}: unknown option(s) {', '.join(unknown)} "
            f"(allowed: {', '.join(allowed)})"
        )
    detector = factory(**options)
    detector.containment = containment
    return detector


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """fp16 autocast on CUDA (the conv layers run on tensor cores); nothing elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def check_images(images: Sequence[np.ndarray]) -> None:
    for index, im in enumerate(images):
        if not (
            isinstance(im, np.ndarray)
            and im.dtype == np.uint8
            and im.ndim == 3
            and im.shape[2] == 3
            and im.shape[0] > 0
            and im.shape[1] > 0
        ):
            shape = getattr(im, "shape", None)
            dtype = getattr(im, "dtype", type(im).__name__)
            raise ValueError(
                f"image {index}: expected an H×W×3 uint8 RGB array, got {dtype} {shape}"
            )


def pad_to_batch(
    images: Sequence[torch.Tensor], fill: Sequence[float], multiple: int = 32
) -> torch.Tensor:
    """Stack 3×h×w tensors into one B×3×H×W batch, each at the top left, the rest ``fill``.

    H and W are the largest sizes rounded up to ``multiple``, so every stride of the
    network divides them. Filling with the network's mean colour makes the padding zero
    after normalisation, which is what the convolutions' own zero padding looks like.
    """
    height = math.ceil(max(t.shape[1] for t in images) / multiple) * multiple
    width = math.ceil(max(t.shape[2] for t in images) / multiple) * multiple
    first = images[0]
    batch = torch.empty((len(images), height, width, 3), dtype=first.dtype, device=first.device)
    batch[:] = torch.tensor(fill, dtype=first.dtype, device=first.device)
    for index, im in enumerate(images):
        batch[index, : im.shape[1], : im.shape[2]] = im.permute(1, 2, 0)
    # B×H×W×3 memory viewed as B×3×H×W: channels_last, the layout convolutions like best.
    return batch.permute(0, 3, 1, 2)


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou: float
) -> torch.Tensor:
    """Indices kept by NMS done separately within each group (image), best first per group.

    torchvision's ``batched_nms`` cannot be used here (torchvision does not install with
    our torch), so this is its usual trick over kornia's NMS: shift each group's boxes by a
    different offset larger than any coordinate so boxes of different groups never overlap,
    then run NMS once for the whole batch.
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    boxes = boxes.float()
    offset = groups.to(boxes.dtype) * (boxes.max() - boxes.min() + 1)
    return nms(boxes + offset[:, None], scores.float(), iou)


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on CUDA (faster convolutions with tensor cores); the default elsewhere,
    where oneDNN's depthwise convolutions are not faster in it."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def detect_in_batches(
    images: Sequence[np.ndarray], size: int, detect_batch: Callable[[list], list]
) -> list:
    """``detect_batch`` over batches of ``size`` images of similar shape, results in order.

    Sorting by shape first means a batch of mixed images wastes little work on padding.
    """
    order = sorted(range(len(images)), key=lambda i: images[i].shape[:2])
    results: list = [None] * len(images)
    for batch in chunks(order, size):
        for index, found in zip(batch, detect_batch([images[i] for i in batch]), strict=True):
            results[index] = found
    return results


def inside(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Boxes whose centre lies in the image (not in batch padding), clipped to it."""
    if len(boxes) == 0:
        return np.zeros(0, bool)
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    return (cx >= 0) & (cx < width) & (cy >= 0) & (cy < height)


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    out = boxes.copy()
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    return out


def detector_key(detector: FaceDetector | None) -> dict[str, Any] | None:
    """What a detector's counts depend on (its settings), as JSON: a reference's one-face
    rate is compared only with one made by the same settings."""
    return None if detector is None else json.loads(json.dumps(detector.config, default=str))

"""Helpers for the face tests: real labelled photos, a confusion table, fake detectors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.faces import FaceDetector, Faces
from pipeline.images import to_rgb
from tests.conftest import needs_shared


def shared_photos(long_side: int = 640) -> tuple[list[np.ndarray], list[int]]:
    """The labelled photos of ../shared/data/faces, long side at most ``long_side``, and their
    true face counts."""
    folder = needs_shared("data", "faces")
    labels = pd.read_csv(folder / "labels.csv")
    images = []
    for name in labels["file"]:
        im = Image.open(folder / name)
        im.draft("RGB", (long_side, long_side))  # JPEG decodes at a reduced scale: faster
        im = to_rgb(im)
        im.thumbnail((long_side, long_side), Image.Resampling.BILINEAR)
        images.append(np.asarray(im))
    return images, labels["faces"].tolist()


def confusion(truth: list[int], found: list[int]) -> pd.DataFrame:
    """Rows: the true face count (0, 1, 2+); columns: what the detector counted."""

    def bucket(n: int) -> str:
        return str(n) if n < 2 else "2+"

    table = pd.crosstab(
        pd.Series([bucket(n) for n in truth], name="true faces"),
        pd.Series([bucket(n) for n in found], name="detected"),
    )
    return table.reindex(index=["0", "1", "2+"], columns=["0", "1", "2+"], fill_value=0)


def one_face_accuracy(truth: list[int], counts: list[int]) -> tuple[int, int]:
    right = sum((t == 1) == (c == 1) for t, c in zip(truth, counts, strict=True))
    return right, len(truth)


def faces(n: int) -> Faces:
    boxes = np.array([[20 * i, 0, 20 * i + 10, 10] for i in range(n)], np.float32).reshape(-1, 4)
    return Faces(boxes, np.linspace(0.99, 0.9, n).astype(np.float32))


class RedDetector(FaceDetector):
    """Finds round(mean red / 64) faces; counts the images it sees; can fail after a number."""

    name = "red"

    def __init__(self, fail_after: int | None = None, tag: str = "v1"):
        self.seen = 0
        self.fail_after = fail_after
        self.tag = tag

    @property
    def settings(self) -> dict[str, Any]:
        return {"detector": "red", "tag": self.tag}

    def find(self, images):
        out = []
        for im in images:
            if self.fail_after is not None and self.seen >= self.fail_after:
                raise RuntimeError("killed")
            self.seen += 1
            out.append(faces(round(float(im[..., 0].mean()) / 64)))
        return out


class SizeDetector(FaceDetector):
    """One face in images at least ``min_side`` pixels on both sides, none in smaller ones."""

    name = "size"

    def __init__(self, min_side: int = 200):
        self.min_side = min_side
        self.shapes: list[tuple[int, int]] = []

    @property
    def settings(self) -> dict[str, Any]:
        return {"detector": "size", "min_side": self.min_side}

    def find(self, images):
        self.shapes += [im.shape[:2] for im in images]
        return [faces(int(min(im.shape[:2]) >= self.min_side)) for im in images]

"""Class labels of a dataset (its ``dataset.json``) and of the images a conditional model is
asked for, for per-class metrics.

``dataset.json`` is NVlabs' layout plus our class names: ``{"labels": [[image name, class
index], ...], "classes": [name, ...]}``; ``"labels": null`` (or no file) is an unlabelled
dataset. Without ``classes`` the classes are named by their index ("0", "1", …), as NVlabs'
datasets are. Read here from the zip or the folder the images come from.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import StageError

DATASET_JSON = "dataset.json"
FIX = "re-run the dataset stage (dvc repro dataset)"


@dataclass(frozen=True)
class DatasetLabels:
    classes: list[str]  # class names, by index
    by_name: dict[str, int]  # image name (as in the zip or folder) → class index

    def digest(self) -> str:
        """What per-class statistics depend on: the class names and every image's class."""
        text = json.dumps({"classes": self.classes, "labels": sorted(self.by_name.items())})
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def of_images(self, names: Sequence[str], where: str) -> np.ndarray:
        """The class index of each image (int64), in ``names``' order."""
        missing = [name for name in names if name not in self.by_name]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise StageError(f"{where}: {missing[0]}{more} has no label in {DATASET_JSON}; {FIX}")
        return np.array([self.by_name[name] for name in names], dtype=np.int64)


def read_dataset_labels(
    path: str | Path, param: str | None = "reference.data"
) -> DatasetLabels | None:
    """The class of every image of a dataset zip or folder, or None when it is unlabelled:
    ``dataset.json`` as training reads it (``ImageDataset``, one reader, one set of checks)."""
    from pipeline.training.data import ImageDataset

    dataset = ImageDataset(path, param)
    if dataset.labels is None:
        return None
    classes = dict(zip(dataset.names, dataset.labels.tolist(), strict=True))
    return DatasetLabels(list(dataset.classes), classes)


def class_counts(weights: Sequence[float], count: int) -> np.ndarray:
    """``count`` split in proportion to ``weights`` (largest remainders): the exact share of
    each class, never a random one."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.sum() <= 0:
        raise ValueError("no class has any weight")
    shares = weights / weights.sum() * count
    counts = np.floor(shares).astype(np.int64)
    order = np.argsort(-(shares - counts), kind="stable")
    counts[order[: count - counts.sum()]] += 1
    return counts


def generation_labels(
    model_classes: Sequence[str],
    real_classes: Sequence[str] | None,
    real_labels: np.ndarray | None,
    count: int,
    seed: int,
) -> np.ndarray | None:
    """The class of each of ``count`` images asked of a conditional model (None for an
    unconditional one): the real images' class shares when the reference has the model's
    classes (what NVlabs' metrics do, drawing real labels; here the exact shares), else an
    equal share each. Shuffled with ``seed``, so every batch holds every class."""
    if not model_classes:
        return None
    if (
        real_labels is not None
        and real_classes is not None
        and set(real_classes) == set(model_classes)
    ):
        real_counts = np.bincount(real_labels, minlength=len(real_classes))
        weights = [real_counts[list(real_classes).index(name)] for name in model_classes]
    else:
        weights = [1.0] * len(model_classes)
    counts = class_counts(weights, count)
    labels = np.repeat(np.arange(len(model_classes), dtype=np.int64), counts)
    return np.random.default_rng(seed).permutation(labels)

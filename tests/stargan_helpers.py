"""Two-domain real datasets and a tiny StarGAN v2 configuration for tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image

from pipeline.training.data import ImageDataset
from pipeline.training.params import TrainParams
from tests.conftest import needs_shared
from tests.train_helpers import tiny

DOMAINS = ("c1", "c2")  # two Oxford flowers classes (file names c<class>_image_<n>.jpg)
# A StarGAN v2 that takes a step in about a second on a loaded CPU at 32 px.
TINY_STARGAN2 = dict(channels=8, max_channels=32, style_dim=16, mapping_dim=32, sample_sources=4)


def flower_images(domain: str, count: int, size: int, offset: int = 0) -> list[Image.Image]:
    """``count`` real flowers of one class, resized to ``size``²."""
    source = needs_shared("data", "flowers256")
    paths = sorted(source.glob(f"{domain}_image_*.jpg"))[offset : offset + count]
    return [
        Image.open(p).convert("RGB").resize((size, size), Image.Resampling.LANCZOS) for p in paths
    ]


def two_domains(folder: Path, per_domain: int = 8, size: int = 32) -> Path:
    """A labelled dataset folder: ``per_domain`` flowers of each of two classes, with the
    dataset stage's ``dataset.json`` (labels and classes)."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = []
    for index, domain in enumerate(DOMAINS):
        for number, image in enumerate(flower_images(domain, per_domain, size)):
            name = f"{domain}-{number:03d}.png"
            image.save(folder / name)
            labels.append([name, index])
    meta = {"labels": labels, "classes": list(DOMAINS)}
    (folder / "dataset.json").write_text(json.dumps(meta) + "\n")
    return folder


class LabelledImages(ImageDataset):
    """``ImageDataset`` with ``dataset.json``'s classes and labels, as branch ``labels``
    adds them (``classes``, ``labels``, ``with_labels``): used only while the engine's
    dataset has no labels of its own."""

    def __init__(self, path, param: str | None = "train.data"):
        super().__init__(path, param)
        meta = json.loads((self.path / "dataset.json").read_text())
        self.classes = list(meta.get("classes") or [])
        self._label_of = {name: index for name, index in meta.get("labels") or []}
        self.with_labels = False

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([self._label_of[name] for name in self.names], dtype=torch.long)

    def __getitem__(self, index: int):
        image = super().__getitem__(index)
        return (image, self._label_of[self.names[index]]) if self.with_labels else image


def labelled_engine(monkeypatch, data: Path) -> None:
    """Make the engine read ``data``'s labels: natively once ImageDataset has them, else
    through ``LabelledImages``."""
    if not hasattr(ImageDataset(data), "classes"):
        monkeypatch.setattr("pipeline.training.loop.ImageDataset", LabelledImages)


def tiny_stargan2(data: Path, **changes) -> TrainParams:
    stargan2 = dict(TINY_STARGAN2)
    stargan2.update(changes.pop("stargan2", {}))
    settings = dict(model="stargan2", stargan2=stargan2, steps=4, grid=(2, 2))
    settings.update(changes)
    return tiny(data, **settings)

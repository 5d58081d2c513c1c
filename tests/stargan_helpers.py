"""Two-domain real datasets and a tiny StarGAN v2 configuration for tests."""

from __future__ import annotations

import io
import json
import zipfile
from contextlib import nullcontext
from pathlib import Path

from PIL import Image

from pipeline.training.params import TrainParams
from tests.conftest import needs_shared
from tests.train_helpers import tiny

DOMAINS = ["c1", "c2"]  # two Oxford flowers classes (file names c<class>_image_<n>.jpg)
# A StarGAN v2 that takes a step in about a second on a loaded CPU at 32 px.
TINY_STARGAN2 = dict(channels=8, max_channels=32, style_dim=16, mapping_dim=32, sample_sources=4)


def flower_images(domain: str, count: int, size: int, offset: int = 0) -> list[Image.Image]:
    """``count`` real flowers of one class, resized to ``size``²."""
    source = needs_shared("data", "flowers256")
    paths = sorted(source.glob(f"{domain}_image_*.jpg"))[offset : offset + count]
    return [
        Image.open(p).convert("RGB").resize((size, size), Image.Resampling.LANCZOS) for p in paths
    ]


def two_domains(folder: Path, per_domain: int = 8, size: int = 32, held_out: int = 0) -> Path:
    """A labelled dataset folder: ``per_domain`` flowers of each of two classes, with the
    dataset stage's ``dataset.json`` (labels and classes); with ``held_out``, that many
    other flowers per class in ``test.zip`` (as ``dataset.labels: folders`` writes it)."""
    folder.mkdir(parents=True, exist_ok=True)
    labels, test_labels = [], []
    with zipfile.ZipFile(folder / "test.zip", "w") if held_out else nullcontext() as test:
        for index, domain in enumerate(DOMAINS):
            images = flower_images(domain, per_domain + held_out, size)
            for number, image in enumerate(images):
                name = f"{domain}-{number:03d}.png"
                if number < per_domain:
                    image.save(folder / name)
                    labels.append([name, index])
                    continue
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                test.writestr(name, buffer.getvalue())
                test_labels.append([name, index])
        if held_out:
            test.writestr("dataset.json", json.dumps({"labels": test_labels, "classes": DOMAINS}))
    meta = {"labels": labels, "classes": list(DOMAINS)}
    (folder / "dataset.json").write_text(json.dumps(meta) + "\n")
    return folder


def tiny_stargan2(data: Path, **changes) -> TrainParams:
    stargan2 = dict(TINY_STARGAN2)
    stargan2.update(changes.pop("stargan2", {}))
    settings = dict(model="stargan2", stargan2=stargan2, steps=4, grid=(2, 2))
    settings.update(changes)
    return tiny(data, **settings)

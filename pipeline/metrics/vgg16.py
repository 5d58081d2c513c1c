"""VGG16 fc2 ("fc7") features for precision/recall, as Kynkäänniemi et al. 2019 and NVlabs use.

ImageNet VGG16 (torchvision's ``vgg16-397923af.pth`` from the weights registry, which holds
both ``features.*`` and ``classifier.*``): the LPIPS trunk of ``pipeline.lpips`` (up to
relu5_3), then torchvision's pool5, 7×7 average pool, ``classifier.0`` (25088→4096), ReLU and
``classifier.3`` (4096→4096). Written here because torchvision is not usable in this project.

The 4096 features are fc2's output *after* its ReLU: torch-fidelity's VGG16 extractor, written
to reproduce NVlabs' ``vgg16.pt`` numbers, uses ``fc2_relu`` for precision/recall (its
``get_default_feature_layer_for_metric('prc')``), and Kynkäänniemi et al.'s TF network returns
the same post-ReLU fc2 activations.

Input: uint8 images, resized to 224×224 (bilinear, antialiased when shrinking) and normalised
with ImageNet's mean and std from [0, 1], as torchvision's VGG16 was trained.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.devices import pick_device
from pipeline.errors import StageError, first_line
from pipeline.lpips import VGG16Features
from pipeline.metrics.inception import FeatureSink
from pipeline.weights import cached_sha256, fetch_weights, load_state_dict

SIZE = 224
FEATURES = 4096
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
HEAD = ("classifier.0.", "classifier.3.")  # fc1, fc2 (classifier.6 is the 1000-way output)


class VGG16FC2(nn.Module):
    """N×3×224×224 images in [0, 1] → (N×4096 post-ReLU fc2 features, None), the same
    interface as ``InceptionV3`` (no class probabilities) so ``FeatureSink`` can collect them."""

    dim = FEATURES
    has_logits = False

    def __init__(self, sha256: str | None = None):
        super().__init__()
        self.trunk = VGG16Features()  # torchvision's features.0 … features.29 (relu5_3)
        self.pool5 = nn.MaxPool2d(2, 2)  # features.30
        self.avgpool = nn.AdaptiveAvgPool2d(7)
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, FEATURES), nn.ReLU(), nn.Dropout(), nn.Linear(FEATURES, FEATURES)
        )  # torchvision's classifier.0 … classifier.3 (Dropout: identity in eval)
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))
        self.sha256 = sha256  # the weights file's digest: what the features depend on
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> VGG16FC2:
        return super().train(False)  # a fixed metric network: never in training mode

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, None]:
        x = self.trunk.features((images.float() - self.mean) / self.std)
        x = torch.flatten(self.avgpool(self.pool5(x)), 1)
        return F.relu(self.classifier(x)), None


def resize_vgg16(images: np.ndarray | Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
    """N×H×W×3 uint8 (an array, or a list of H×W×3 arrays of any sizes) → N×3×224×224 float
    in [0, 1] on ``device``."""
    if not isinstance(images, np.ndarray):
        if len({im.shape for im in images}) > 1:  # folders may hold several sizes
            return torch.cat([resize_vgg16(im[None], device) for im in images])
        images = np.stack(images)
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2)
    x = x.float() / 255
    return F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False, antialias=True)


class VGG16Sink(FeatureSink):
    """``FeatureSink`` for VGG16 fc2 features of a stream of uint8 batches."""

    def __init__(self, model: VGG16FC2, count: int | None = None):
        super().__init__(model, None, count)

    def add(self, images: np.ndarray | Sequence[np.ndarray]) -> None:
        self.add_prepared(resize_vgg16(images, self.model.device))


def load_vgg16(
    weights_dir: str | Path | None = None,
    download: bool = True,
    device: str | torch.device = "cpu",
) -> VGG16FC2:
    """VGG16 up to fc2 with torchvision's ImageNet weights from the registry (fetched if
    allowed); stops with one line naming the missing or wrong file and where to put it."""
    path = fetch_weights("vgg16", weights_dir, download)
    state = load_state_dict(path)
    model = VGG16FC2(cached_sha256(path, weights_dir))
    trunk = {k: v for k, v in state.items() if k.startswith("features.")}
    head = {k.removeprefix("classifier."): v for k, v in state.items() if k.startswith(HEAD)}
    try:
        model.trunk.load_state_dict(trunk)
        model.classifier.load_state_dict(head)
    except RuntimeError as exc:
        first = first_line(exc)
        raise StageError(f"{path}: not torchvision's VGG16 weights ({first})") from None
    return model.to(pick_device(device))

"""LPIPS-VGG16 perceptual distance (Zhang et al., CVPR 2018), without torchvision.

Used as Lightweight GAN's reconstruction loss when its weights are available (and by the
PPL metric and projection later). Our own VGG16 trunk: torchvision is not usable here, and
the ``lpips`` package imports it. The weights are torchvision's ImageNet VGG16 and the
LPIPS v0.1 linear layers, from the weights registry (``pipeline.weights``).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import StageError, first_line
from pipeline.weights import fetch_weights, load_state_dict

# VGG16's convolutions (torchvision's ``features`` indices) and the ReLUs LPIPS taps.
VGG16_CONVS = {0: (3, 64), 2: (64, 64), 5: (64, 128), 7: (128, 128), 10: (128, 256),
               12: (256, 256), 14: (256, 256), 17: (256, 512), 19: (512, 512), 21: (512, 512),
               24: (512, 512), 26: (512, 512), 28: (512, 512)}  # fmt: skip
VGG16_POOLS = (4, 9, 16, 23)
TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
TAP_CHANNELS = (64, 128, 256, 512, 512)
# LPIPS's input scaling: inputs in [-1, 1] to ImageNet statistics.
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


class VGG16Features(nn.Module):
    """VGG16's ``features`` up to relu5_3, laid out as torchvision's so its weights load."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        for index in range(TAPS[-1] + 1):
            if index in VGG16_CONVS:
                layers.append(nn.Conv2d(*VGG16_CONVS[index], 3, padding=1))
            elif index in VGG16_POOLS:
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers.append(nn.ReLU(inplace=False))
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in TAPS:
                taps.append(x)
        return taps


class LPIPS(nn.Module):
    """Distance between two batches of images in [-1, 1]: one value per pair (N)."""

    def __init__(self):
        super().__init__()
        self.vgg = VGG16Features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in TAP_CHANNELS)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False).eval()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        both = torch.cat([a, b]).float()
        taps = self.vgg((both - self.shift) / self.scale)
        total = torch.zeros(a.shape[0], device=a.device)
        for tap, lin in zip(taps, self.lins, strict=True):
            unit = tap / (tap.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            fa, fb = unit.chunk(2)
            total = total + lin((fa - fb) ** 2).mean(dim=(1, 2, 3))
        return total

    def train(self, mode: bool = True) -> LPIPS:
        return super().train(False)  # a fixed metric: never in training mode


def load_lpips(
    vgg: str | Path | None = None,
    lin: str | Path | None = None,
    weights_dir: str | Path | None = None,
    download: bool = True,
) -> LPIPS:
    """LPIPS-VGG16 with real weights: explicit files, or the registry's (fetched if allowed).

    Stops with one line naming the missing file, its URL and where to put it.
    """
    vgg_path = Path(vgg) if vgg else fetch_weights("vgg16", weights_dir, download)
    lin_path = Path(lin) if lin else fetch_weights("lpips_vgg", weights_dir, download)
    model = LPIPS()
    trunk = {k: v for k, v in load_state_dict(vgg_path).items() if k.startswith("features.")}
    linear = {
        f"{int(k[3])}.weight": v  # lpips names them lin0.model.1.weight … lin4.model.1.weight
        for k, v in load_state_dict(lin_path).items()
        if k.startswith("lin") and k.endswith(".weight")
    }
    try:
        model.vgg.load_state_dict(trunk)
        model.lins.load_state_dict(linear)
    except RuntimeError as exc:
        first = first_line(exc)
        raise StageError(f"{vgg_path} / {lin_path}: not VGG16 + LPIPS weights ({first})") from None
    return model


def lpips_recon_loss(lpips: LPIPS, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean LPIPS between a reconstruction and its target, resized as LPIPS expects (≥ 64)."""
    if output.shape[-1] < 64:
        output = F.interpolate(output, size=64, mode="bilinear", align_corners=False)
        target = F.interpolate(target, size=64, mode="bilinear", align_corners=False)
    return lpips(output, target).mean()

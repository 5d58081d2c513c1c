"""Images from a generator: fixed-seed sample grids for logging and later stages."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn

from pipeline.augment import BatchPart
from pipeline.models.base import NoiseSource, set_noise_source


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """N×3×H×W in [-1, 1] to N×H×W×3 uint8."""
    scaled = (images.float().clamp(-1, 1) + 1) * 127.5
    return scaled.round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def image_grid(images: torch.Tensor, rows: int, cols: int) -> Image.Image:
    """Tile the first rows×cols images into one picture, row by row."""
    arr = to_uint8(images[: rows * cols])
    n, h, w, c = arr.shape
    canvas = np.zeros((rows * cols, h, w, c), dtype=np.uint8)
    canvas[:n] = arr
    tiled = canvas.reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4)
    return Image.fromarray(tiled.reshape(rows * h, cols * w, c))


def fixed_latents(count: int, latent_dim: int, seed: int) -> torch.Tensor:
    return torch.randn(count, latent_dim, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def generate(
    G: nn.Module, z: torch.Tensor, noise_seed: int, device: torch.device, batch: int = 32
) -> torch.Tensor:
    """G(z) in eval mode with reproducible noise inputs, in batches."""
    was_training = G.training
    G.eval()
    generator = torch.Generator().manual_seed(noise_seed)
    outputs = []
    try:
        for start in range(0, len(z), batch):
            chunk = z[start : start + batch].to(device)
            set_noise_source(G, NoiseSource(generator, BatchPart(len(chunk), 0), len(chunk)))
            outputs.append(G(chunk).float().cpu())
    finally:
        set_noise_source(G, None)
        G.train(was_training)
    return torch.cat(outputs)

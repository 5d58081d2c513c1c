"""Images from a generator: fixed-seed sample grids for logging and later stages."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from PIL import Image
from torch import nn

from pipeline.augment import BatchPart
from pipeline.models.base import NoiseSource, has_mapping, set_noise_mode, set_noise_source


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """N×3×H×W in [-1, 1] to N×H×W×3 uint8."""
    scaled = (images.float().clamp(-1, 1) + 1) * 127.5
    return scaled.round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def image_grid(images: torch.Tensor, rows: int, cols: int) -> Image.Image:
    """Tile the first rows×cols images into one picture, row by row."""
    return tile_uint8(to_uint8(images[: rows * cols]), rows, cols)


def tile_uint8(arr: np.ndarray, rows: int, cols: int) -> Image.Image:
    """N×H×W×C uint8 images (N ≤ rows·cols) tiled row by row; empty cells stay black."""
    n, h, w, c = arr.shape
    canvas = np.zeros((rows * cols, h, w, c), dtype=np.uint8)
    canvas[:n] = arr
    tiled = canvas.reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4)
    return Image.fromarray(tiled.reshape(rows * h, cols * w, c))


def fixed_latents(count: int, latent_dim: int, seed: int) -> torch.Tensor:
    return torch.randn(count, latent_dim, generator=torch.Generator().manual_seed(seed))


def seeded_latents(seeds: list[int], latent_dim: int) -> torch.Tensor:
    """One latent per seed, the same for a seed whatever else is drawn (NVlabs' ``--seeds``)."""
    return torch.cat([fixed_latents(1, latent_dim, seed) for seed in seeds])


def generator_call(
    G: nn.Module, z: torch.Tensor, truncation_psi: float = 1.0, truncation_cutoff=None
) -> torch.Tensor:
    """``G(z)``, with truncation where the generator has a W space to truncate in."""
    if truncation_psi == 1.0 and truncation_cutoff is None:
        return G(z)
    if not has_mapping(G):
        raise ValueError(
            f"{type(G).__name__} has no mapping network: truncation needs a model with a W "
            "space (use truncation 1)"
        )
    return G(z, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)


def _labelled_call(G: nn.Module) -> Callable:
    return lambda z, labels, psi: G(z, labels, truncation_psi=psi)


@torch.no_grad()
def generate(
    G: nn.Module,
    z: torch.Tensor,
    noise_seed: int,
    device: torch.device,
    batch: int = 32,
    truncation_psi: float = 1.0,
    noise_mode: str = "random",
    labels: torch.Tensor | None = None,
    sample: Callable | None = None,
) -> torch.Tensor:
    """G(z) in eval mode with reproducible noise inputs, in batches, on the CPU."""
    return torch.cat(
        list(
            iter_generate(
                G, z, noise_seed, device, batch, truncation_psi, noise_mode, labels, sample
            )
        )
    )


@torch.no_grad()
def iter_generate(
    G: nn.Module,
    z: torch.Tensor,
    noise_seed: int,
    device: torch.device,
    batch: int = 32,
    truncation_psi: float = 1.0,
    noise_mode: str = "random",
    labels: torch.Tensor | None = None,
    sample: Callable | None = None,
) -> Iterator[torch.Tensor]:
    """Like ``generate`` but yields each batch (float, [-1, 1], CPU), so a caller that
    streams (metrics over 50k images) never holds them all.

    ``sample(z, labels, truncation_psi)`` makes the images (a model's ``sample``, which a
    conditional model needs for its ``labels``); by default ``G(z)``. ``G`` is the network
    whose noise inputs are seeded and which is put in eval mode."""
    was_training = G.training
    G.eval()
    generator = torch.Generator().manual_seed(noise_seed)
    set_noise_mode(G, noise_mode)
    try:
        for start in range(0, len(z), batch):
            chunk = z[start : start + batch].to(device)
            set_noise_source(G, NoiseSource(generator, BatchPart(len(chunk), 0), len(chunk)))
            if sample is None and labels is None:
                images = generator_call(G, chunk, truncation_psi)
            else:
                classes = None if labels is None else labels[start : start + batch].to(device)
                images = (sample or _labelled_call(G))(chunk, classes, truncation_psi)
            yield images.float().cpu()
    finally:
        set_noise_source(G, None)
        set_noise_mode(G, "random")
        G.train(was_training)

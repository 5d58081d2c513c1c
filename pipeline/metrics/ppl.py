"""Perceptual path length (Karras et al., StyleGAN, 2019).

The perceptual distance between images at two latents ε apart along a random path, divided
by ε²: ``d(G(l(t)), G(l(t + ε))) / ε²``, with t = 0 (``end`` sampling) or t ~ U(0, 1)
(``full``). In Z the path is the great circle between two normalised latents (slerp); in W
it is the straight line between two mapped latents (lerp), for style-based generators only.
Distances outside the 1st–99th percentiles are dropped before averaging, as in the paper.
Both images of a pair get the same noise inputs, so only the latent moves.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.base import has_mapping, set_noise_mode, set_noise_source
from pipeline.training.sampling import generator_call

EPSILON = 1e-4
SPACES = ("z", "w")
SAMPLINGS = ("end", "full")
LPIPS_MAX_SIZE = 256  # images above this are box-downsampled first, as NVlabs do

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # two N×3×H×W → N


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between the directions of ``a`` and ``b`` (rows), at ``t``;
    the result has unit norm."""
    a = a / a.norm(dim=-1, keepdim=True)
    b = b / b.norm(dim=-1, keepdim=True)
    cos = (a * b).sum(dim=-1, keepdim=True).clamp(-1, 1)
    angle = torch.acos(cos) * t
    ortho = b - cos * a
    ortho = ortho / ortho.norm(dim=-1, keepdim=True)
    out = a * torch.cos(angle) + ortho * torch.sin(angle)
    return out / out.norm(dim=-1, keepdim=True)


def lerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return a + (b - a) * t


class PairedNoise:
    """Noise for a batch of 2N images whose row i and i + N are a pair: the same maps."""

    def __init__(self, generator: torch.Generator, pairs: int):
        self.generator, self.pairs = generator, pairs

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        noise = torch.randn((self.pairs, 1, *like.shape[2:]), generator=self.generator)
        return torch.cat([noise, noise]).to(like.device, like.dtype)


def downsample_for_lpips(images: torch.Tensor) -> torch.Tensor:
    size = images.shape[-1]
    if size > LPIPS_MAX_SIZE:
        images = F.avg_pool2d(images, size // LPIPS_MAX_SIZE)
    return images


def path_lengths(
    G: nn.Module,
    distance: Distance,
    z0: torch.Tensor,
    z1: torch.Tensor,
    t: torch.Tensor,
    space: str = "z",
    epsilon: float = EPSILON,
    truncation_psi: float = 1.0,
) -> torch.Tensor:
    """Per-pair ``distance(G(l(t)), G(l(t + ε))) / ε²`` for latents z0, z1 (N×latent_dim)
    and positions t (N×1), on the generator's device; returned on the CPU."""
    if space not in SPACES:
        raise ValueError(f"space {space!r}: use z or w")
    device = next(G.parameters()).device
    z0, z1, t = z0.to(device), z1.to(device), t.to(device)
    if space == "w":
        if not has_mapping(G):
            raise ValueError(f"{type(G).__name__} has no W space (no mapping network)")
        w0 = G.mapping(z0, truncation_psi=truncation_psi)
        w1 = G.mapping(z1, truncation_psi=truncation_psi)
        ts = t[:, :, None]
        ws = torch.cat([lerp(w0, w1, ts), lerp(w0, w1, ts + epsilon)])
        images = G.synthesis(ws)
    else:
        # slerp gives unit vectors; scale them back to the usual norm of a latent, √dim,
        # so G sees latents like those it was trained on (NVlabs feed them unscaled)
        scale = z0.shape[1] ** 0.5
        zs = torch.cat([slerp(z0, z1, t), slerp(z0, z1, t + epsilon)]) * scale
        images = generator_call(G, zs, truncation_psi)
    images = downsample_for_lpips(images.float())
    first, second = images.chunk(2)
    return (distance(first, second).float() / epsilon**2).cpu()


def filtered_mean(lengths: np.ndarray) -> float:
    """Mean of the values between the 1st and 99th percentiles (inclusive)."""
    lengths = np.asarray(lengths, dtype=np.float64)
    low = np.percentile(lengths, 1, method="lower")
    high = np.percentile(lengths, 99, method="higher")
    return float(lengths[(lengths >= low) & (lengths <= high)].mean())


@torch.no_grad()
def perceptual_path_length(
    G: nn.Module,
    distance: Distance,
    num_samples: int,
    latent_dim: int,
    space: str = "z",
    sampling: str = "end",
    epsilon: float = EPSILON,
    seed: int = 0,
    batch_size: int = 16,
    truncation_psi: float = 1.0,
    progress: Callable[[int], None] | None = None,
) -> float:
    """PPL of ``G`` over ``num_samples`` random pairs, reproducible by ``seed``."""
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling {sampling!r}: use end or full")
    generator = torch.Generator().manual_seed(seed)
    noise = torch.Generator().manual_seed(seed + 1)
    was_training = G.training
    G.eval()
    set_noise_mode(G, "const")  # layers with a stored map use it; the others get PairedNoise
    lengths = []
    try:
        for start in range(0, num_samples, batch_size):
            n = min(batch_size, num_samples - start)
            z0 = torch.randn(n, latent_dim, generator=generator)
            z1 = torch.randn(n, latent_dim, generator=generator)
            t = torch.rand(n, 1, generator=generator) * (1.0 if sampling == "full" else 0.0)
            set_noise_source(G, PairedNoise(noise, n))
            lengths.append(path_lengths(G, distance, z0, z1, t, space, epsilon, truncation_psi))
            if progress:
                progress(n)
    finally:
        set_noise_source(G, None)
        set_noise_mode(G, "random")
        G.train(was_training)
    return filtered_mean(torch.cat(lengths).numpy())

"""What every render shares: a generator on a device, latents from seeds, W space, noise.

Renders compare images that differ only in their latents (ψ, styles, a direction, a video
frame), so the noise inputs are held fixed while they are drawn: ``const`` and ``none`` do
that themselves; ``random`` becomes one random map per noise layer, the same for every
image (``FrozenNoise``), so that nothing flickers from one frame to the next.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from pipeline.errors import StageError
from pipeline.models.base import has_mapping, set_noise_mode, set_noise_source
from pipeline.training.sampling import seeded_latents


class FrozenNoise:
    """A noise source whose k-th draw after ``reset`` is the same map for every image.

    A forward pass asks its noise layers in the same order each time, so reseeding before
    each pass gives each layer the same map in every pass, whatever the batch.
    """

    def __init__(self, seed: int):
        self.seed = seed
        self.generator = torch.Generator()
        self.reset()

    def reset(self) -> None:
        self.generator.manual_seed(self.seed)

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        noise = torch.randn((1, 1, *like.shape[2:]), generator=self.generator)
        return noise.to(like.device, like.dtype).expand(like.shape[0], -1, -1, -1)


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation from ``a`` to ``b`` (rows) at fractions ``t`` (for Gaussian z,
    whose mass lies near a sphere: a straight line would pass through unlikely, small z)."""
    a_unit, b_unit = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    omega = torch.acos((a_unit * b_unit).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))
    t = t.reshape(-1, *([1] * (a.dim() - 1))).to(a.dtype)
    sin = torch.sin(omega)
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / sin


def lerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    t = t.reshape(-1, *([1] * (a.dim() - 1))).to(a.dtype)
    return a + (b - a) * t


@dataclass
class WStats:
    """W sampled from the mapping network: its mean, its overall std (the RMS distance to
    the mean) and its covariance (GANSpace's PCA and the scale of any direction)."""

    mean: torch.Tensor  # w_dim
    std: float
    covariance: torch.Tensor  # w_dim × w_dim

    def std_along(self, direction: torch.Tensor) -> float:
        unit = direction / direction.norm()
        return math.sqrt(max(float(unit @ self.covariance @ unit), 0.0))


class Synth:
    """A trained G in eval mode on ``device``, drawing batches with the noise held fixed."""

    def __init__(
        self,
        G: nn.Module,
        device: torch.device,
        batch: int = 16,
        noise_mode: str = "const",
        noise_seed: int = 0,
        sample: Callable | None = None,
    ):
        self.G, self.device, self.batch = G.eval(), device, batch
        # the model's own sample(z, labels, psi) (``TrainedGenerator.sample``): images from
        # z go through it, so a model whose sampling is not G(z) renders too
        self.sample = sample
        self.noise_mode, self.noise = noise_mode, FrozenNoise(noise_seed)
        self.latent_dim = G.latent_dim
        self.styled = has_mapping(G)
        # a class-conditional G draws every render for ``label`` (the fakes grid and the
        # class interpolation go through all classes)
        self.num_classes = getattr(G, "num_classes", 0)
        self.label = 0

    def classes(self, count: int, label: int | None = None) -> torch.Tensor | None:
        """``count`` copies of the class to draw (None for an unconditional G)."""
        if not self.num_classes:
            return None
        return torch.full((count,), self.label if label is None else label, device=self.device)

    @contextlib.contextmanager
    def _fixed_noise(self) -> Iterator[None]:
        set_noise_mode(self.G, self.noise_mode)
        set_noise_source(self.G, self.noise)
        try:
            yield
        finally:
            set_noise_source(self.G, None)
            set_noise_mode(self.G, "random")

    def require_mapping(self, what: str) -> None:
        if not self.styled:
            raise StageError(f"{what} needs a mapping network (W space); this model has none")

    def z(self, seeds: list[int]) -> torch.Tensor:
        return seeded_latents(seeds, self.latent_dim)

    @torch.no_grad()
    def images(self, z: torch.Tensor, psi: float = 1.0, cutoff: int | None = None) -> torch.Tensor:
        """G(z), truncated toward W's average for ψ < 1 (style-based G only)."""
        if psi != 1.0 or cutoff is not None:
            self.require_mapping("truncation")
            return self.synthesis(self.ws(z, psi, cutoff))
        out = []
        with self._fixed_noise():
            for start in range(0, len(z), self.batch):
                self.noise.reset()
                chunk = z[start : start + self.batch].to(self.device)
                c = self.classes(len(chunk))
                if self.sample is not None:
                    images = self.sample(chunk, c)
                else:
                    images = self.G(chunk) if c is None else self.G(chunk, c)
                out.append(images.float().cpu())
        return torch.cat(out)

    @torch.no_grad()
    def ws(
        self, z: torch.Tensor, psi: float = 1.0, cutoff: int | None = None, label=None
    ) -> torch.Tensor:
        """mapping(z): N×num_ws×w_dim, on the CPU (of class ``label``, default ``self.label``,
        for a conditional G)."""
        self.require_mapping("W space")
        out, batch = [], max(self.batch, 1024)  # the mapping network is small
        for start in range(0, len(z), batch):
            chunk = z[start : start + batch].to(self.device)
            extra = {} if not self.num_classes else {"c": self.classes(len(chunk), label)}
            ws = self.G.mapping(chunk, truncation_psi=psi, truncation_cutoff=cutoff, **extra)
            out.append(ws.float().cpu())
        return torch.cat(out)

    @torch.no_grad()
    def synthesis(self, ws: torch.Tensor) -> torch.Tensor:
        """synthesis(ws) for N×num_ws×w_dim ws, in batches, on the CPU."""
        out = []
        with self._fixed_noise():
            for start in range(0, len(ws), self.batch):
                self.noise.reset()
                chunk = ws[start : start + self.batch].to(self.device)
                out.append(self.G.synthesis(chunk).float().cpu())
        return torch.cat(out)

    def broadcast(self, w: torch.Tensor) -> torch.Tensor:
        """N×w_dim to N×num_ws×w_dim (the same w for every layer)."""
        return w[:, None, :].expand(-1, self.G.num_ws, -1).contiguous()

    def average_image(self) -> torch.Tensor:
        """synthesis of W's tracked average: the centre truncation pulls every image toward."""
        w_avg = self.G.w_avg.detach().float().cpu()[None]
        if self.num_classes:  # the class's own centre (conditional truncation's)
            w_avg = self.G.mapper.w_avg_class[self.label].detach().float().cpu()[None]
        return self.synthesis(self.broadcast(w_avg))

    @torch.no_grad()
    def w_stats(self, count: int, seed: int) -> WStats:
        """Mean, std and covariance of ``count`` ws of random z (ψ = 1)."""
        z = torch.randn(count, self.latent_dim, generator=torch.Generator().manual_seed(seed))
        w = self.ws(z)[:, 0].double()
        mean = w.mean(0)
        centred = w - mean
        covariance = centred.T @ centred / (count - 1)
        std = centred.pow(2).sum(1).mean().sqrt()
        return WStats(mean.float(), float(std), covariance.float())

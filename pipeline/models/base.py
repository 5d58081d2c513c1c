"""What a GAN must provide to the training engine, and the randomness the engine controls.

A model is a generator, a discriminator and its losses. The loop, data, precision, EMA,
checkpoints, logging and sampling belong to the engine (``pipeline.training``), written once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from pipeline.augment import BatchPart


@dataclass
class StepContext:
    """What the engine hands a loss: randomness for this process's rows of the batch."""

    generator: torch.Generator  # CPU generator in the same state on every rank
    part: BatchPart  # this rank's rows of the global (micro-)batch
    rows: int  # how many rows this rank has
    augment: Callable[[torch.Tensor], torch.Tensor]  # D's augmentation for this step
    logs: dict[str, float] = field(default_factory=dict)

    def draw(self, *shape: int) -> torch.Tensor:
        """Uniform numbers for the global batch, this rank's rows (on the CPU)."""
        values = torch.rand((self.part.total, *shape), generator=self.generator)
        return values[self.part.start : self.part.start + self.rows]

    def draw_shared(self, *shape: int) -> torch.Tensor:
        """Uniform numbers that are the same for the whole batch and every rank."""
        return torch.rand(shape, generator=self.generator)


class NoiseSource:
    """Per-pixel noise for noise-injection layers, drawn like everything else the engine
    draws: for the global batch from the shared generator, then sliced for this rank."""

    def __init__(self, generator: torch.Generator, part: BatchPart, size: int):
        self.generator, self.part, self.size = generator, part, size

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        shape = (self.part.total, 1, *like.shape[2:])
        noise = torch.randn(shape, generator=self.generator)
        return noise[self.part.start : self.part.start + self.size].to(like.device, like.dtype)


class NoiseInjection(nn.Module):
    """Add learned-scale Gaussian noise per pixel (StyleGAN's noise inputs)."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.source: NoiseSource | None = None  # set by the engine while training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.source is not None:
            noise = self.source(x)
        else:
            noise = torch.randn(x.shape[0], 1, *x.shape[2:], device=x.device, dtype=x.dtype)
        return x + self.weight * noise


def set_noise_source(module: nn.Module, source: NoiseSource | None) -> None:
    for layer in module.modules():
        if isinstance(layer, NoiseInjection):
            layer.source = source


class GANModel(nn.Module):
    """A generator ``G``, a discriminator ``D`` and their losses.

    ``d_loss`` and ``g_loss`` return a scalar loss (mean over this rank's rows) and fill
    ``ctx.logs``; the engine does backward, gradient sync, steps and everything else.
    """

    name: str = ""
    latent_dim: int = 0
    G: nn.Module
    D: nn.Module

    def optimizers(self) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        raise NotImplementedError

    def d_loss(self, real: torch.Tensor, fake: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        raise NotImplementedError

    def g_loss(self, fake: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        raise NotImplementedError

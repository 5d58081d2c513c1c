"""StarGAN v2's renders: real images translated into every domain, latent-guided (a few
seeded styles per domain) and reference-guided (one real reference per domain)."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.models.base import Capability, capabilities_of
from pipeline.render.grids import real_images
from pipeline.training.checkpoint import TrainedGenerator
from pipeline.training.data import ImageDataset
from pipeline.training.sampling import seeded_latents

STYLES_PER_DOMAIN = 2  # latent grid: the first two render.seeds


def translates(source) -> bool:
    """An image-to-image model (a ``TrainedGenerator``, a model or a bare G) that declares
    ``Capability.TRANSLATION``: it draws from real images, not from latents."""
    return Capability.TRANSLATION in capabilities_of(source)


@torch.no_grad()
def latent_grid(
    trained: TrainedGenerator, sources: torch.Tensor, seeds: list[int], device
) -> tuple[torch.Tensor, int]:
    """Per source row: the source, then per domain one translation per seed (the same
    latent in every domain). Returns the images row by row and the column count."""
    net, domains = trained.net, trained.num_classes
    z = seeded_latents(seeds, net.latent_dim).to(device)
    cells = []
    for source in sources.to(device):
        row = [source[None].cpu()]
        for domain in range(domains):
            codes = net.mapping(z, torch.full((len(seeds),), domain, device=device))
            row.append(net.translate(source[None].expand(len(seeds), -1, -1, -1), codes).cpu())
        cells.append(torch.cat(row))
    return torch.cat(cells).float(), 1 + domains * len(seeds)


def domain_references(data: str | Path, domains: int, size: int) -> torch.Tensor | None:
    """The first image of each domain in ``data`` (None if one has none or it is unlabelled)."""
    dataset = ImageDataset(data, "render.data")
    labels = getattr(dataset, "labels", None)
    if labels is None or not len(labels):
        return None
    picks = []
    for domain in range(domains):
        found = (labels == domain).nonzero()
        if not len(found):
            return None
        picks.append(int(found[0]))
    images = [dataset[i] for i in picks]
    if images[0].shape[-1] != size:
        return None
    return torch.stack(images).float() / 127.5 - 1


@torch.no_grad()
def reference_grid(
    trained: TrainedGenerator, sources: torch.Tensor, references: torch.Tensor, device
) -> torch.Tensor:
    """The official reference-guided picture: top row a blank then one reference per
    domain, each following row a source then it in each reference's style and domain."""
    net, domains = trained.net, len(references)
    codes = net.style_encoder(references.to(device), torch.arange(domains, device=device))
    cells = [torch.ones_like(references[:1]), references]
    for source in sources.to(device):
        translated = net.translate(source[None].expand(domains, -1, -1, -1), codes)
        cells += [source[None].cpu(), translated.cpu()]
    return torch.cat(cells).float()


def real_sources(data: str | Path, count: int, size: int) -> torch.Tensor:
    return real_images(data, count, size)[0]

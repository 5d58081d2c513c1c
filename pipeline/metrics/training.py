"""A cheap FID while training (``train.eval_every``): for the DVCLive curve, not for papers.

G_ema's images from fixed latents against the first ``count`` training images (features
computed once per run), Inception as ``evaluate.extractor: auto``, ``clean`` resize. With few
images FID is biased upwards: compare values of one run, or runs with the same count.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline.metrics.fid import frechet_distance
from pipeline.metrics.inception import FeatureSink, load_inception

LATENT_SEED_OFFSET = 30_000  # fixed latents for the training FID: seed + this
BATCH = 32


def image_of(item):
    """A dataset item's image (a labelled dataset gives ``(image, label)``)."""
    return item[0] if isinstance(item, tuple | list) else item


class TrainingFID:
    def __init__(self, dataset: torch.utils.data.Dataset, count: int, device: torch.device):
        self.count, self.device = min(count, len(dataset)), device
        self.model = load_inception("auto", device)
        sink = FeatureSink(self.model, "clean", self.count)
        for start in range(0, self.count, BATCH):
            chunk = [image_of(dataset[i]) for i in range(start, min(start + BATCH, self.count))]
            sink.add(torch.stack(chunk).permute(0, 2, 3, 1).numpy())
        self.real: np.ndarray = sink.result()[0]
        labels = getattr(dataset, "labels", None)
        self.labels = None if labels is None else labels[: self.count].clone()

    @property
    def name(self) -> str:
        return f"eval/fid_{self.count}"

    def __call__(self, G: nn.Module, latent_dim: int, seed: int, model=None) -> dict[str, float]:
        """FID of ``G``'s images (through ``model.sample`` when given: a conditional model
        draws the real images' classes, so both sets have the same class mix)."""
        from pipeline.training.sampling import fixed_latents, iter_generate, to_uint8

        z = fixed_latents(self.count, latent_dim, seed + LATENT_SEED_OFFSET)
        sink = FeatureSink(self.model, "clean", self.count)
        labels = None
        if model is not None and model.num_classes:
            labels = self.labels
        sample = model.sample if model is not None else None
        for batch in iter_generate(G, z, seed, self.device, BATCH, labels=labels, sample=sample):
            sink.add(to_uint8(batch))
        return {self.name: frechet_distance(self.real, sink.result()[0])}

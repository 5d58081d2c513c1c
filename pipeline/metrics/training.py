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


class TrainingFID:
    def __init__(self, dataset: torch.utils.data.Dataset, count: int, device: torch.device):
        self.count, self.device = min(count, len(dataset)), device
        self.model = load_inception("auto", device)
        sink = FeatureSink(self.model, "clean", self.count)
        for start in range(0, self.count, BATCH):
            chunk = [dataset[i] for i in range(start, min(start + BATCH, self.count))]
            sink.add(torch.stack(chunk).permute(0, 2, 3, 1).numpy())
        self.real: np.ndarray = sink.result()[0]

    @property
    def name(self) -> str:
        return f"eval/fid_{self.count}"

    def __call__(self, G: nn.Module, latent_dim: int, seed: int) -> dict[str, float]:
        from pipeline.training.sampling import fixed_latents, iter_generate, to_uint8

        z = fixed_latents(self.count, latent_dim, seed + LATENT_SEED_OFFSET)
        sink = FeatureSink(self.model, "clean", self.count)
        for batch in iter_generate(G, z, seed, self.device, BATCH):
            sink.add(to_uint8(batch))
        return {self.name: frechet_distance(self.real, sink.result()[0])}

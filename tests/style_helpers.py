"""A test fixture, not a product model: the smallest generator with StyleGAN2's interface.

It follows the contract of ``pipeline.models.base.has_mapping`` (mapping network with
truncation toward a tracked ``w_avg``, ``num_ws`` = 2·log2(resolution) − 2 ws, synthesis
from ws with noise inputs, ``modulation_weights``), so the style-based renders are tested
on a generator whose coarse layers really do decide the layout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.base import NoiseInjection


class TinyStyleGenerator(nn.Module):
    def __init__(self, resolution: int = 32, latent_dim: int = 16, channels: int = 16):
        super().__init__()
        with torch.random.fork_rng():  # the same weights every time; the caller's RNG untouched
            torch.manual_seed(0)
            self._build(resolution, latent_dim, channels)

    def _build(self, resolution: int, latent_dim: int, channels: int) -> None:
        self.latent_dim = self.w_dim = latent_dim
        self.num_ws = 2 * int(math.log2(resolution)) - 2
        self.net = nn.Sequential(
            nn.Linear(latent_dim, latent_dim), nn.LeakyReLU(0.2), nn.Linear(latent_dim, latent_dim)
        )
        self.const = nn.Parameter(torch.randn(1, channels, 4, 4))
        self.affines = nn.ModuleList(nn.Linear(latent_dim, channels) for _ in range(self.num_ws))
        self.convs = nn.ModuleList(
            nn.Conv2d(channels, channels, 3, padding=1) for _ in self.affines
        )
        self.noises = nn.ModuleList(NoiseInjection(self.resolution_of(i)) for i in self.layers)
        for noise in self.noises:
            nn.init.constant_(noise.weight, 0.1)
        for affine in self.affines:  # styles that matter: scales around 1, spread ±0.5
            nn.init.normal_(affine.weight, std=0.5 / math.sqrt(latent_dim))
            nn.init.ones_(affine.bias)
        self.to_rgb = nn.Conv2d(channels, 3, 1)
        self.register_buffer("w_avg", torch.zeros(latent_dim))
        with torch.no_grad():
            self.w_avg.copy_(self.net(torch.randn(2048, latent_dim)).mean(0))

    @property
    def layers(self) -> range:
        return range(self.num_ws)

    @staticmethod
    def resolution_of(index: int) -> int:
        return 4 * 2 ** (index // 2)

    def mapping(self, z, truncation_psi=1.0, truncation_cutoff=None):
        z = z * (z.square().mean(1, keepdim=True) + 1e-8).rsqrt()
        ws = self.net(z)[:, None].repeat(1, self.num_ws, 1)
        if truncation_psi != 1:
            cut = slice(None, truncation_cutoff)
            ws[:, cut] = self.w_avg.lerp(ws[:, cut], truncation_psi)
        return ws

    def synthesis(self, ws):
        x = self.const.expand(len(ws), -1, -1, -1)
        for i in self.layers:
            if i and i % 2 == 0:
                x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            style = self.affines[i](ws[:, i])[:, :, None, None]
            x = F.instance_norm(self.convs[i](x)) * style  # AdaIN-like: a style sets the scales
            x = F.leaky_relu(self.noises[i](x), 0.2)
        return torch.tanh(self.to_rgb(x))

    def forward(self, z, truncation_psi=1.0, truncation_cutoff=None):
        return self.synthesis(self.mapping(z, truncation_psi, truncation_cutoff))

    def modulation_weights(self) -> list[torch.Tensor]:
        return [affine.weight for affine in self.affines]

"""Lightweight GAN: "Towards Faster and Stabilized GAN Training for High-fidelity Few-shot
Image Synthesis" (Liu et al., ICLR 2021), a.k.a. FastGAN.

Generator: GLU blocks with noise injection, Skip-Layer Excitation (a low-resolution feature
map gates the channels of one 16× larger), optional linear attention. Discriminator: hinge
loss plus self-supervised reconstruction: small decoders rebuild the (augmented) real image
from D's 8×8 features and one quadrant of it from a quadrant of D's 16×16 features (MSE, or
LPIPS-VGG16 when its weights are available), which keeps D learning useful features on tiny
datasets. Convolutions are spectrally normalised, as
in the paper's code.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from pipeline.lpips import load_lpips, lpips_recon_loss
from pipeline.models.base import Batch, DLoss, GANModel, NoiseInjection, StepContext
from pipeline.models.registry import LightweightParams

# Feature-map width per resolution, as a multiple of ``channels`` (the paper's table).
WIDTH = {4: 16, 8: 8, 16: 4, 32: 2, 64: 2, 128: 1, 256: 0.5, 512: 0.25, 1024: 0.125}


def width(resolution: int, channels: int) -> int:
    return max(8, int(WIDTH[resolution] * channels))


def conv(cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0) -> nn.Module:
    return spectral_norm(nn.Conv2d(cin, cout, kernel, stride, padding, bias=False))


class Blur(nn.Module):
    """[1 2 1]² low-pass filter, for anti-aliased upsampling."""

    def __init__(self):
        super().__init__()
        kernel = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("kernel", (kernel[:, None] * kernel[None, :] / 16)[None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = self.kernel.to(x.dtype).expand(x.shape[1], 1, 3, 3)
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), kernel, groups=x.shape[1])


def upsample(antialias: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Upsample(scale_factor=2, mode="nearest")]
    return [*layers, Blur()] if antialias else layers


class UpBlock(nn.Module):
    """×2: upsample, 3×3 conv to twice the width, [noise], batch norm, GLU (halves it back);
    ``double`` repeats conv-noise-norm-GLU (the paper's UpBlockComp)."""

    def __init__(self, cin: int, cout: int, double: bool, antialias: bool):
        super().__init__()
        layers = [*upsample(antialias), conv(cin, cout * 2, 3, 1, 1)]
        if double:
            layers += [NoiseInjection(), nn.BatchNorm2d(cout * 2), nn.GLU(dim=1)]
            layers += [conv(cout, cout * 2, 3, 1, 1), NoiseInjection()]
        layers += [nn.BatchNorm2d(cout * 2), nn.GLU(dim=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class SkipLayerExcitation(nn.Module):
    """Channel gates for a high-resolution map, computed from a low-resolution one."""

    def __init__(self, c_low: int, c_high: int):
        super().__init__()
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(4),
            conv(c_low, c_high, 4),
            nn.SiLU(),
            conv(c_high, c_high, 1),
            nn.Sigmoid(),
        )

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        return high * self.gate(low)


class LinearAttention(nn.Module):
    """Residual linear (softmax-kernel) attention over all pixels: O(pixels), not O(pixels²)."""

    def __init__(self, dim: int, heads: int = 4, dim_head: int = 32):
        super().__init__()
        self.heads, inner = heads, heads * dim_head
        self.to_qkv = nn.Conv2d(dim, inner * 3, 1, bias=False)
        self.to_out = nn.Conv2d(inner, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        q, k, v = self.to_qkv(x).reshape(n, 3, self.heads, -1, h * w).unbind(1)
        q = q.softmax(dim=-2)  # over features
        k = k.softmax(dim=-1)  # over pixels
        context = torch.einsum("bhdn,bhen->bhde", k, v)
        out = torch.einsum("bhde,bhdn->bhen", context, q).reshape(n, -1, h, w)
        return x + self.to_out(out)


def resolutions(low: int, high: int) -> list[int]:
    return [2**i for i in range(int(math.log2(low)), int(math.log2(high)) + 1)]


class LightweightGenerator(nn.Module):
    def __init__(self, image_size: int, cfg: LightweightParams, for_sampling: bool = False):
        super().__init__()
        self.image_size, self.latent_dim = image_size, cfg.latent_dim
        ch = cfg.channels
        self.init = nn.Sequential(
            # no bias: the batch norm that follows removes any constant shift
            spectral_norm(nn.ConvTranspose2d(cfg.latent_dim, width(4, ch) * 2, 4, bias=False)),
            nn.BatchNorm2d(width(4, ch) * 2),
            nn.GLU(dim=1),
        )
        self.blocks = nn.ModuleDict()
        self.attention = nn.ModuleDict()
        self.excite = nn.ModuleDict()
        for index, res in enumerate(resolutions(8, image_size)):
            self.blocks[str(res)] = UpBlock(
                width(res // 2, ch), width(res, ch), double=index % 2 == 0, antialias=cfg.antialias
            )
            if res in cfg.attn_res:
                self.attention[str(res)] = LinearAttention(width(res, ch))
            if res >= 64:  # the paper's pairs: 4→64, 8→128, 16→256, 32→512
                self.excite[str(res)] = SkipLayerExcitation(width(res // 16, ch), width(res, ch))
        self.to_rgb = conv(width(image_size, ch), 3, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.init(z[:, :, None, None])
        features = {4: x}
        for key, block in self.blocks.items():
            res = int(key)
            x = block(x)
            if key in self.attention:
                x = self.attention[key](x)
            if key in self.excite:
                x = self.excite[key](features[res // 16], x)
            features[res] = x
        return torch.tanh(self.to_rgb(x))


class DownBlock(nn.Module):
    """÷2 with two paths averaged: 4×4 stride-2 conv + 3×3 conv, and average pool + 1×1."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.main = nn.Sequential(
            conv(cin, cout, 4, 2, 1),
            nn.BatchNorm2d(cout),
            nn.LeakyReLU(0.2),
            conv(cout, cout, 3, 1, 1),
            nn.BatchNorm2d(cout),
            nn.LeakyReLU(0.2),
        )
        self.direct = nn.Sequential(
            nn.AvgPool2d(2), conv(cin, cout, 1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.main(x) + self.direct(x)) / 2


class Decoder(nn.Module):
    """Rebuilds an image of ``size`` pixels from an 8×8 feature map (D's self-supervision)."""

    def __init__(self, cin: int, size: int, ch: int):
        super().__init__()
        layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(8)]
        previous = cin
        for res in resolutions(16, size):
            layers += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                conv(previous, width(res, ch) * 2, 3, 1, 1),
                nn.BatchNorm2d(width(res, ch) * 2),
                nn.GLU(dim=1),
            ]
            previous = width(res, ch)
        layers += [conv(previous, 3, 3, 1, 1), nn.Tanh()]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def quadrant(x: torch.Tensor, index: int) -> torch.Tensor:
    """One of the four quadrants of a batch of maps: 0 top-left, 1 top-right, 2, 3 bottom."""
    h, w = x.shape[2] // 2, x.shape[3] // 2
    top, left = (index // 2) * h, (index % 2) * w
    return x[:, :, top : top + h, left : left + w]


class LightweightDiscriminator(nn.Module):
    def __init__(self, image_size: int, cfg: LightweightParams, for_sampling: bool = False):
        super().__init__()
        ch = cfg.channels
        half = image_size // 2
        self.stem = nn.Sequential(conv(3, width(half, ch), 4, 2, 1), nn.LeakyReLU(0.2))
        self.downs = nn.ModuleDict()
        self.excite = nn.ModuleDict()
        for res in reversed(resolutions(8, half // 2)):
            self.downs[str(res)] = DownBlock(width(res * 2, ch), width(res, ch))
            if res * 16 <= half:  # gate res from the map 16× larger, as in the paper's D
                self.excite[str(res)] = SkipLayerExcitation(width(res * 16, ch), width(res, ch))
        c8 = width(8, ch)
        self.to_logits = nn.Sequential(
            conv(c8, c8 * 4, 1), nn.BatchNorm2d(c8 * 4), nn.LeakyReLU(0.2), conv(c8 * 4, 1, 4)
        )
        self.recon_size = min(128, image_size)
        self.decode_whole = Decoder(c8, self.recon_size, ch)
        self.decode_part = Decoder(width(16, ch), self.recon_size, ch)

    def forward(self, x: torch.Tensor, part: int | None = None):
        """Logits (N×25); with ``part`` (a quadrant index) also the two reconstructions."""
        x = self.stem(x)
        features = {x.shape[-1]: x}
        for key, block in self.downs.items():
            x = block(x)
            if key in self.excite:
                x = self.excite[key](features[int(key) * 16], x)
            features[int(key)] = x
        logits = self.to_logits(x).flatten(1)
        if part is None:
            return logits
        whole = self.decode_whole(features[8])
        piece = self.decode_part(quadrant(features[16], part))
        return logits, whole, piece


class LightweightGAN(GANModel):
    name = "lightweight"

    def __init__(
        self,
        image_size: int,
        cfg: LightweightParams,
        batch_size: int = 0,
        *,
        for_sampling: bool = False,
        num_classes: int = 0,  # unconditional: a labelled dataset's labels are not used
    ):
        super().__init__()
        if image_size < 32:
            raise ValueError(f"lightweight needs image_size >= 32, got {image_size}")
        self.cfg = cfg
        self.lpips = None
        if cfg.recon_loss == "lpips" and not for_sampling:
            self.lpips = load_lpips(
                cfg.lpips_vgg, cfg.lpips_lin, cfg.weights_dir, cfg.download_weights
            )
        self.latent_dim = cfg.latent_dim
        self.G = LightweightGenerator(image_size, cfg)
        self.D = LightweightDiscriminator(image_size, cfg)

    def optimizers(self):
        betas = tuple(self.cfg.betas)
        return {
            "G": torch.optim.Adam(self.G.parameters(), lr=self.cfg.lr, betas=betas),
            "D": torch.optim.Adam(self.D.parameters(), lr=self.cfg.lr, betas=betas),
        }

    def d_loss(self, batch: Batch, ctx: StepContext) -> DLoss:
        with torch.no_grad():
            fake = self.fakes(batch, ctx)
        real = batch.images
        part = int(ctx.draw_shared(1).item() * 4)  # one quadrant for the whole batch
        real = ctx.augment(real)
        logits_real, whole, piece = self.D(real, part=part)
        size = self.D.recon_size
        target_whole = F.interpolate(real, size=size, mode="area")
        target_piece = F.interpolate(quadrant(real, part), size=size, mode="area")
        recon = self.recon_loss(whole, target_whole) + self.recon_loss(piece, target_piece)
        logits_fake = self.D(ctx.augment(fake))
        hinge_real = F.relu(1 - logits_real.float()).mean()
        hinge_fake = F.relu(1 + logits_fake.float()).mean()
        ctx.logs.update(
            {
                "loss/D_real": hinge_real.detach(),
                "loss/D_fake": hinge_fake.detach(),
                "loss/D_recon": recon.detach(),
            }
        )
        return DLoss(hinge_real + hinge_fake + recon, logits_real)

    def recon_loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.lpips is not None:
            return lpips_recon_loss(self.lpips, output, target)
        return F.mse_loss(output.float(), target.float())

    def g_loss(self, batch: Batch, ctx: StepContext) -> torch.Tensor:
        loss = -self.D(ctx.augment(self.fakes(batch, ctx))).float().mean()
        ctx.logs["loss/G"] = loss.detach()
        return loss

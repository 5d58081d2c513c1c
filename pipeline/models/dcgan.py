"""DCGAN: "Unsupervised Representation Learning with Deep Convolutional Generative
Adversarial Networks" (Radford et al. 2015), with PokeGAN's training tricks.

G projects z to a ``latent_size``² map and doubles it with (transposed or upsample+conv)
blocks up to the image size; D mirrors it with strided convolutions and dropout (masks
drawn from the engine's generator, so runs resume bit for bit). Weights
start from N(0, 0.02), as in the paper. D's BCE targets can be smoothed, noised and swapped
(PokeGAN); the loss is the standard (non-saturating) one, hinge, relativistic, relativistic
average (RaGAN) or WGAN-GP with an optional consistency term (CT-GAN).

Both networks keep an RGB layer per size they may run at (``rgb_sizes``), so the
progressive model (``pipeline.models.progan``) is the same networks run up to a stage.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from pipeline.models.base import Batch, DLoss, GANModel, MinibatchStd, StepContext
from pipeline.models.registry import DCGANParams

INIT_STD = 0.02  # the DCGAN paper's N(0, 0.02)


def widths(image_size: int, cfg: DCGANParams) -> dict[int, int]:
    """Feature width per resolution: ``channels`` at full size, doubling per halving."""
    sizes = [2**i for i in range(int(math.log2(cfg.latent_size)), int(math.log2(image_size)) + 1)]
    return {r: min(cfg.channel_max, cfg.channels * (image_size // r)) for r in sizes}


def weighted(layer: nn.Module, cfg: DCGANParams, feeds: str = "leaky_relu") -> nn.Module:
    """A conv/linear layer initialised as ``init`` says (torch's global RNG, which the
    engine seeds): N(0, 0.02), or He normal over the fan-out for the nonlinearity it
    ``feeds`` (convolutions; a linear layer keeps torch's default), spectrally normalised
    when ``norm: spectral``."""
    if cfg.init == "normal":
        nn.init.normal_(layer.weight, 0.0, INIT_STD)
    elif not isinstance(layer, nn.Linear):
        nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity=feeds)
    if layer.bias is not None and (cfg.init == "normal" or not isinstance(layer, nn.Linear)):
        nn.init.zeros_(layer.bias)
    return spectral_norm(layer) if cfg.norm == "spectral" else layer


def g_activation(cfg: DCGANParams) -> nn.Module:
    return nn.ReLU() if cfg.g_activation == "relu" else nn.LeakyReLU(0.2)


def feature_norm(channels: int, cfg: DCGANParams) -> nn.Module:
    """The per-layer normalisation ``norm`` names (spectral and none: none here)."""
    if cfg.norm == "batch":
        layer: nn.Module = nn.BatchNorm2d(channels)
    elif cfg.norm == "instance":
        layer = nn.InstanceNorm2d(channels, affine=True)
    elif cfg.norm == "layer":
        layer = nn.GroupNorm(1, channels)  # over channels and pixels: layer norm for maps
    else:
        return nn.Identity()
    if cfg.init == "normal":
        nn.init.normal_(layer.weight, 1.0, INIT_STD)
    else:
        nn.init.ones_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def d_kernel(cfg: DCGANParams) -> int:
    """D's kernel size: ``d_kernel``, or G's when it is null (D mirrors G)."""
    return cfg.d_kernel or cfg.g_kernel


def has_bias(cfg: DCGANParams) -> bool:
    """A bias only where no normalisation follows that would remove it."""
    return cfg.norm in ("spectral", "none")


class DrawnDropout(nn.Module):
    """Dropout whose masks come from the engine's generator (``source``, set each step):
    resumable and the same over any number of processes, unlike ``nn.Dropout``'s global RNG
    (which, among others, the data loader also draws from). Without a source (a network
    used outside the engine), plain dropout."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.source: StepContext | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.p:
            return x
        if self.source is None:
            return F.dropout(x, self.p, training=True)
        ctx = self.source
        seed = int(torch.randint(0, 2**62, (1,), generator=ctx.generator))
        device_generator = torch.Generator(device=x.device).manual_seed(seed)
        shape = (ctx.part.total, *x.shape[1:])  # for the global batch, this rank's rows
        draws = torch.rand(shape, generator=device_generator, device=x.device)
        keep = draws[ctx.part.start : ctx.part.start + x.shape[0]] >= self.p
        return x * keep.to(x.dtype) / (1 - self.p)


def set_dropout_source(module: nn.Module, ctx: StepContext | None) -> None:
    for layer in module.modules():
        if isinstance(layer, DrawnDropout):
            layer.source = ctx


class UpBlock(nn.Module):
    """×2: transposed conv (or nearest upsample + conv), norm, ReLU."""

    def __init__(self, cin: int, cout: int, cfg: DCGANParams):
        super().__init__()
        k = cfg.g_kernel
        if cfg.upsample == "transposed":
            conv = nn.ConvTranspose2d(cin, cout, k, 2, k // 2, output_padding=1, bias=has_bias(cfg))
            layers = [weighted(conv, cfg)]
        else:
            conv = nn.Conv2d(cin, cout, k, 1, k // 2, bias=has_bias(cfg))
            layers = [nn.Upsample(scale_factor=2, mode="nearest"), weighted(conv, cfg)]
        self.layers = nn.Sequential(
            *layers, feature_norm(cout, cfg), g_activation(cfg), DrawnDropout(cfg.g_dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DownBlock(nn.Module):
    """÷2: strided conv, norm, LeakyReLU(0.2), dropout."""

    def __init__(self, cin: int, cout: int, cfg: DCGANParams):
        super().__init__()
        k = d_kernel(cfg)
        conv = weighted(nn.Conv2d(cin, cout, k, 2, k // 2, bias=has_bias(cfg)), cfg)
        self.layers = nn.Sequential(
            conv, feature_norm(cout, cfg), nn.LeakyReLU(0.2), DrawnDropout(cfg.dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DCGANGenerator(nn.Module):
    """z → ``latent_size``² map → up blocks → tanh(toRGB) at any size in ``rgb_sizes``.

    ``forward(z, size, alpha)`` (training) runs the blocks up to ``size``; with ``alpha``
    < 1 the image is blended with the one the previous size's RGB layer makes, upsampled
    (ProGAN's fade-in). ``forward(z)`` (sampling: grids, evaluate, render) runs at the
    stage in the buffers ``stage_size``/``stage_alpha`` (the full size for a DCGAN; a
    progressive model keeps them at its current stage) and upscales the images (nearest)
    to ``image_size``, so every caller of G gets full-size images at any stage."""

    def __init__(self, image_size: int, cfg: DCGANParams, rgb_sizes: list[int] | None = None):
        super().__init__()
        self.image_size, self.latent_size = image_size, cfg.latent_size
        self.latent_dim = cfg.latent_dim
        width = widths(image_size, cfg)
        first = width[cfg.latent_size]
        self.project = nn.Sequential(
            weighted(nn.Linear(cfg.latent_dim, first * cfg.latent_size**2, has_bias(cfg)), cfg),
            nn.Unflatten(1, (first, cfg.latent_size, cfg.latent_size)),
            feature_norm(first, cfg),
            g_activation(cfg),
        )
        self.blocks = nn.ModuleDict(
            {str(r): UpBlock(width[r // 2], width[r], cfg) for r in width if r > cfg.latent_size}
        )
        self.to_rgb = nn.ModuleDict(
            {
                str(r): weighted(
                    nn.Conv2d(width[r], 3, cfg.g_kernel, 1, cfg.g_kernel // 2), cfg, "tanh"
                )
                for r in rgb_sizes or [image_size]
            }
        )
        self.register_buffer("stage_size", torch.tensor(image_size))
        self.register_buffer("stage_alpha", torch.tensor(1.0))

    def forward(
        self, z: torch.Tensor, size: int | None = None, alpha: float | None = None
    ) -> torch.Tensor:
        if size is None:
            image = self(z, int(self.stage_size), float(self.stage_alpha))
            if image.shape[-1] == self.image_size:
                return image
            return F.interpolate(image, size=self.image_size, mode="nearest")
        alpha = 1.0 if alpha is None else alpha
        x, previous = self.project(z), None
        for key, block in self.blocks.items():
            if int(key) > size:
                break
            if int(key) == size and alpha < 1:
                previous = x
            x = block(x)
        image = torch.tanh(self.to_rgb[str(size)](x))
        if previous is None:
            return image
        older = torch.tanh(self.to_rgb[str(size // 2)](previous))
        # autocast runs interpolate in fp32 and the convolutions in fp16/bf16: lerp needs one
        # dtype (seen on CUDA)
        upsampled = F.interpolate(older, scale_factor=2, mode="nearest").to(image.dtype)
        return torch.lerp(upsampled, image, alpha)


class DCGANDiscriminator(nn.Module):
    """fromRGB at any size in ``rgb_sizes`` → down blocks to ``latent_size``² → linear
    logit. ``forward(x, alpha, features=True)`` also returns the flattened last map (the
    second-last layer, CT-GAN's D_)."""

    def __init__(self, image_size: int, cfg: DCGANParams, rgb_sizes: list[int] | None = None):
        super().__init__()
        width = widths(image_size, cfg)
        k = d_kernel(cfg)
        self.from_rgb = nn.ModuleDict(
            {
                str(r): nn.Sequential(
                    weighted(nn.Conv2d(3, width[r], k, 1, k // 2), cfg), nn.LeakyReLU(0.2)
                )
                for r in rgb_sizes or [image_size]
            }
        )
        self.blocks = nn.ModuleDict(
            {
                str(r): DownBlock(width[r], width[r // 2], cfg)
                for r in sorted(width, reverse=True)
                if r > cfg.latent_size
            }
        )
        # the minibatch-stddev map (one channel at latent_size²) goes to the logit only
        self.minibatch_std = MinibatchStd(cfg.minibatch_std) if cfg.minibatch_std else None
        last = (width[cfg.latent_size] + bool(self.minibatch_std)) * cfg.latent_size**2
        self.to_logit = weighted(nn.Linear(last, 1), cfg)

    def forward(self, x: torch.Tensor, alpha: float = 1.0, features: bool = False):
        size = x.shape[-1]
        h = self.from_rgb[str(size)](x)
        if alpha < 1:  # fade in: the new block's output and the previous size's input
            older = self.from_rgb[str(size // 2)](F.avg_pool2d(x, 2))
            h = torch.lerp(older, self.blocks[str(size)](h), alpha)
            size //= 2
        for key, block in self.blocks.items():
            if int(key) <= size:
                h = block(h)
        flat = h.flatten(1)
        head = flat if self.minibatch_std is None else self.minibatch_std(h).flatten(1)
        logits = self.to_logit(head).squeeze(1)
        return (logits, flat) if features else logits


# -- losses ------------------------------------------------------------------------------


def bce_targets(ctx: StepContext, cfg: DCGANParams, device) -> tuple[torch.Tensor, torch.Tensor]:
    """D's BCE targets for this rank's rows (PokeGAN's tricks): reals 1 - ``label_smoothing``,
    fakes 0; each pulled towards the other class by a uniform amount up to ``label_noise``;
    in a ``label_swap`` share of rows the two are swapped. Drawn from the engine's generator."""
    real = 1 - cfg.label_smoothing - cfg.label_noise * ctx.draw()
    fake = cfg.label_noise * ctx.draw()
    swap = ctx.draw() < cfg.label_swap
    real, fake = torch.where(swap, fake, real), torch.where(swap, real, fake)
    return real.to(device), fake.to(device)


def bce(logits: torch.Tensor, target: torch.Tensor | float) -> torch.Tensor:
    if not isinstance(target, torch.Tensor):
        target = torch.full_like(logits, target)
    return F.binary_cross_entropy_with_logits(logits, target)


def d_adversarial(
    loss: str,
    real: torch.Tensor,
    fake: torch.Tensor,
    real_target: torch.Tensor | float = 1.0,
    fake_target: torch.Tensor | float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """D's loss on its (float) logits as (real part, fake part). WGAN-GP's penalty and the
    consistency term come on top (``DCGAN.d_loss``)."""
    if loss == "standard":
        return bce(real, real_target), bce(fake, fake_target)
    if loss == "hinge":
        return F.relu(1 - real).mean(), F.relu(1 + fake).mean()
    if loss == "relativistic":  # RSGAN, written symmetrically so both targets act
        return bce(real - fake, real_target) / 2, bce(fake - real, fake_target) / 2
    if loss == "relativistic_average":  # RaGAN
        return bce(real - fake.mean(), real_target), bce(fake - real.mean(), fake_target)
    if loss == "wgan_gp":
        return -real.mean(), fake.mean()
    raise ValueError(f"unknown loss {loss!r}")


def g_adversarial(loss: str, fake: torch.Tensor, real: torch.Tensor | None) -> torch.Tensor:
    """G's loss on D's (float) logits for its fakes (and the reals, relativistic losses)."""
    if loss == "standard":
        return bce(fake, 1.0)  # non-saturating
    if loss in ("hinge", "wgan_gp"):
        return -fake.mean()
    if loss == "relativistic":
        return bce(fake - real, 1.0)
    if loss == "relativistic_average":
        return bce(fake - real.mean(), 1.0) + bce(real - fake.mean(), 0.0)
    raise ValueError(f"unknown loss {loss!r}")


RELATIVISTIC = ("relativistic", "relativistic_average")
TARGETED = ("standard", *RELATIVISTIC)  # the losses with BCE targets (label tricks)


def gradient_penalty(D, real, fake, ctx: StepContext, alpha: float = 1.0) -> torch.Tensor:
    """WGAN-GP: (‖∇D(x̂)‖ - 1)² on x̂ between each real and a fake, mixed by a drawn ε."""
    eps = ctx.draw(1, 1, 1).to(real.device)
    mixed = torch.lerp(fake.detach().float(), real.detach().float(), eps).requires_grad_(True)
    # D's pass for the penalty runs in fp32 whatever the engine's autocast: in fp16 its
    # double backward, scaled by GradScaler, overflowed to NaN at every step however far
    # the scale backed off (the CUDA check; DCGAN has no activation clamp as StyleGAN2 has)
    with torch.autocast(real.device.type, enabled=False):
        (grad,) = torch.autograd.grad(D(mixed, alpha).float().sum(), mixed, create_graph=True)
    return (grad.float().flatten(1).norm(dim=1) - 1).square().mean()


def consistency_term(D, real, first, first_features, margin, alpha=1.0) -> torch.Tensor:
    """CT-GAN: a second pass of D on the same reals (another dropout draw) should agree
    with the first: relu(d(D(x'), D(x'')) + 0.1 d(D_(x'), D_(x'')) - M')."""
    second, second_features = D(real, alpha, features=True)
    distance = (first.float() - second.float()).abs()
    features = (first_features.float() - second_features.float()).norm(dim=1)
    return F.relu(distance + 0.1 * features - margin).mean()


class DCGAN(GANModel):
    name = "dcgan"
    default_augment = "none"  # the DCGAN paper and PokeGAN had none

    def __init__(
        self,
        image_size: int,
        cfg: DCGANParams,
        batch_size: int = 0,
        *,
        for_sampling: bool = False,
        num_classes: int = 0,  # unconditional: a labelled dataset's labels are not used
        rgb_sizes: list[int] | None = None,
    ):
        super().__init__()
        if image_size & (image_size - 1) or image_size <= cfg.latent_size:
            raise ValueError(
                f"{self.name}: image_size {image_size} must be a power of two above "
                f"latent_size {cfg.latent_size}"
            )
        self.cfg, self.image_size = cfg, image_size
        self.latent_dim = cfg.latent_dim
        self.G = DCGANGenerator(image_size, cfg, rgb_sizes)
        self.D = DCGANDiscriminator(image_size, cfg, rgb_sizes)

    def optimizers(self):
        cfg = self.cfg
        adam = dict(betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
        return {
            "G": torch.optim.Adam(self.G.parameters(), cfg.lr * cfg.g_lr_scale, **adam),
            "D": torch.optim.Adam(self.D.parameters(), cfg.lr, **adam),
        }

    # the size and fade D and G train at this step (a progressive model overrides these)
    def stage_at(self, ctx: StepContext, phase: str) -> tuple[int, float]:
        return self.image_size, 1.0

    def reals(self, batch: Batch, size: int, alpha: float) -> torch.Tensor:
        """The real images as D sees them at ``size`` (a progressive model shrinks them)."""
        return batch.images

    def d_loss(self, batch: Batch, ctx: StepContext) -> DLoss:
        cfg = self.cfg
        size, alpha = self.stage_at(ctx, "D")
        set_dropout_source(self, ctx)  # D's dropout, and G's (g_dropout)
        with torch.no_grad():
            fake = self.G(ctx.latents(self.latent_dim, batch.images.device), size, alpha)
        real = ctx.augment(self.reals(batch, size, alpha))
        fake = ctx.augment(fake)
        want_features = cfg.loss == "wgan_gp" and cfg.consistency > 0
        real_out = self.D(real, alpha, features=want_features)
        real_logits, real_features = real_out if want_features else (real_out, None)
        fake_logits = self.D(fake, alpha)
        targets = bce_targets(ctx, cfg, real.device) if cfg.loss in TARGETED else (1.0, 0.0)
        loss_real, loss_fake = d_adversarial(
            cfg.loss, real_logits.float(), fake_logits.float(), *targets
        )
        loss = loss_real + loss_fake
        ctx.logs.update({"loss/D_real": loss_real.detach(), "loss/D_fake": loss_fake.detach()})
        if cfg.loss == "wgan_gp":
            penalty = gradient_penalty(self.D, real, fake, ctx, alpha)
            loss = loss + cfg.gp_weight * penalty
            ctx.logs["loss/D_gp"] = penalty.detach()
            if cfg.consistency:
                ct = consistency_term(
                    self.D, real, real_logits, real_features, cfg.consistency_margin, alpha
                )
                loss = loss + cfg.consistency * ct
                ctx.logs["loss/D_ct"] = ct.detach()
        return DLoss(loss, real_logits)

    def g_loss(self, batch: Batch, ctx: StepContext) -> torch.Tensor:
        size, alpha = self.stage_at(ctx, "G")
        set_dropout_source(self, ctx)  # D's dropout, and G's (g_dropout)
        fake = self.G(ctx.latents(self.latent_dim, batch.images.device), size, alpha)
        fake_logits = self.D(ctx.augment(fake), alpha).float()
        real_logits = None
        if self.cfg.loss in RELATIVISTIC:
            real = ctx.augment(self.reals(batch, size, alpha))
            real_logits = self.D(real, alpha).float()
        loss = g_adversarial(self.cfg.loss, fake_logits, real_logits)
        ctx.logs["loss/G"] = loss.detach()
        return loss

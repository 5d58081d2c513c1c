"""StarGAN v2: "Diverse Image Synthesis for Multiple Domains" (Choi et al., CVPR 2020).

One generator translates an image into any of the dataset's domains (its classes), in a
style given either by the mapping network (latent-guided: z and a domain → style code) or by
the style encoder (reference-guided: a reference image of the domain → style code). The
networks follow the official release (clovaai/stargan-v2, ``core/model.py``): G is an
encoder (residual blocks with instance norm) and a decoder (residual blocks with AdaIN from
the style code), ``log2(size) − 4`` down/up blocks plus two bottleneck blocks each; the
mapping network is a shared MLP with one head per domain, the style encoder and D a shared
conv trunk with one output per domain (the one of the target or real domain is used).

Losses (``core/solver.py``): non-saturating adversarial with R1 on reals; style
reconstruction; diversity sensitivity (subtracted, its weight decayed linearly to 0); cycle
consistency. The official code takes a latent-guided and a reference-guided step each
iteration; the engine takes one D and one G step per iteration, so they alternate: even
steps latent-guided, odd steps reference-guided. References are other real images of the
same batch (a shuffled copy: their labels are the target domains), so no second loader.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.base import Batch, Capability, DLoss, GANModel, StepContext
from pipeline.models.registry import StarGAN2Params

CROP_SCALE = (0.8, 1.0)  # the official RandomResizedCrop's area and aspect-ratio ranges
CROP_RATIO = (0.9, 1.1)
HPF_SIZES = (32, 64, 128)  # feature sizes with high-pass skips (the official face models)


def he_init(module: nn.Module) -> None:
    """The official initialisation: He-normal (fan in) weights, zero biases."""
    if isinstance(module, nn.Conv2d | nn.Linear):
        nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def down_blocks(image_size: int, hpf: bool) -> int:
    """G's down (and up) blocks: log2(size) − 4 (the official repeat_num), one more with
    high-pass skips; at least one."""
    return max(1, int(math.log2(image_size)) - 4 + (1 if hpf else 0))


class ResBlock(nn.Module):
    """Pre-activation residual block (optional instance norm, ÷2 average pooling),
    output scaled by 1/√2 to keep unit variance."""

    def __init__(self, cin: int, cout: int, normalize: bool = False, downsample: bool = False):
        super().__init__()
        self.normalize, self.downsample = normalize, downsample
        self.conv1 = nn.Conv2d(cin, cin, 3, 1, 1)
        self.conv2 = nn.Conv2d(cin, cout, 3, 1, 1)
        if normalize:
            self.norm1 = nn.InstanceNorm2d(cin, affine=True)
            self.norm2 = nn.InstanceNorm2d(cin, affine=True)
        self.shortcut = nn.Conv2d(cin, cout, 1, bias=False) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.shortcut is None else self.shortcut(x)
        if self.downsample:
            skip = F.avg_pool2d(skip, 2)
        h = self.norm1(x) if self.normalize else x
        h = self.conv1(F.leaky_relu(h, 0.2))
        if self.downsample:
            h = F.avg_pool2d(h, 2)
        h = self.norm2(h) if self.normalize else h
        h = self.conv2(F.leaky_relu(h, 0.2))
        return (skip + h) / math.sqrt(2)


class AdaIN(nn.Module):
    """Instance norm whose scale (1 + γ) and shift β come from the style code."""

    def __init__(self, style_dim: int, channels: int):
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.fc = nn.Linear(style_dim, channels * 2)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.fc(s)[:, :, None, None].chunk(2, dim=1)
        return (1 + gamma) * self.norm(x) + beta


class AdaINResBlock(nn.Module):
    """Decoder block: AdaIN, LeakyReLU, [×2 nearest], conv, twice; with high-pass skips
    the residual alone (the official w_hpf > 0)."""

    def __init__(self, cin: int, cout: int, style_dim: int, upsample: bool, residual: bool):
        super().__init__()
        self.upsample, self.residual = upsample, residual
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.norm1 = AdaIN(style_dim, cin)
        self.norm2 = AdaIN(style_dim, cout)
        self.shortcut = nn.Conv2d(cin, cout, 1, bias=False) if cin != cout else None

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.norm1(x, s), 0.2)
        if self.upsample:
            h = F.interpolate(h, scale_factor=2, mode="nearest")
        h = self.conv2(F.leaky_relu(self.norm2(self.conv1(h), s), 0.2))
        if not self.residual:
            return h
        skip = F.interpolate(x, scale_factor=2, mode="nearest") if self.upsample else x
        skip = skip if self.shortcut is None else self.shortcut(skip)
        return (h + skip) / math.sqrt(2)


class HighPass(nn.Module):
    """3×3 Laplacian-like high-pass filter, divided by w_hpf (the official HighPass)."""

    def __init__(self, w_hpf: float):
        super().__init__()
        kernel = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, 8.0, -1.0], [-1.0, -1.0, -1.0]])
        self.register_buffer("kernel", kernel / w_hpf, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = self.kernel.to(x.dtype).expand(x.shape[1], 1, 3, 3)
        return F.conv2d(x, kernel, padding=1, groups=x.shape[1])


def first_width(image_size: int, cfg: StarGAN2Params) -> int:
    return min(cfg.channels or max(2**14 // image_size, 1), cfg.max_channels)


class StarGAN2Generator(nn.Module):
    """Image + style code → image. Holds ``sample_sources``: real images (the first
    training batch's) that ``StarGAN2.sample`` translates."""

    def __init__(self, image_size: int, cfg: StarGAN2Params):
        super().__init__()
        width = first_width(image_size, cfg)
        self.from_rgb = nn.Conv2d(3, width, 3, 1, 1)
        self.encode = nn.ModuleList()
        self.decode = nn.ModuleList()
        self.to_rgb = nn.Sequential(
            nn.InstanceNorm2d(width, affine=True), nn.LeakyReLU(0.2), nn.Conv2d(width, 3, 1)
        )
        hpf = cfg.hpf > 0
        cout = width
        for _ in range(down_blocks(image_size, hpf)):
            cout = min(width * 2, cfg.max_channels)
            self.encode.append(ResBlock(width, cout, normalize=True, downsample=True))
            self.decode.insert(0, AdaINResBlock(cout, width, cfg.style_dim, True, not hpf))
            width = cout
        for _ in range(2):  # bottleneck
            self.encode.append(ResBlock(cout, cout, normalize=True))
            self.decode.insert(0, AdaINResBlock(cout, cout, cfg.style_dim, False, not hpf))
        self.hpf = HighPass(cfg.hpf) if hpf else None
        self.register_buffer(
            "sample_sources", torch.zeros(cfg.sample_sources, 3, *(image_size,) * 2)
        )
        self.register_buffer("sources_filled", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor, s: torch.Tensor | None = None) -> torch.Tensor:
        if s is None:  # a z → G(z) caller (a sampler that does not go through model.sample)
            raise ValueError(
                "stargan2's G translates an image in a style code, not G(z): sample it with "
                "the model's sample(z, labels) (trained.sample) or the translate stage"
            )
        x = self.from_rgb(x)
        cache = {}
        for block in self.encode:
            if self.hpf is not None and x.shape[2] in HPF_SIZES:
                cache[x.shape[2]] = x
            x = block(x)
        for block in self.decode:
            x = block(x, s)
            if self.hpf is not None and x.shape[2] in cache:
                x = x + self.hpf(cache[x.shape[2]])
        return self.to_rgb(x)


class MappingNetwork(nn.Module):
    """z → style code of each domain: four shared layers, four per domain (official)."""

    def __init__(self, cfg: StarGAN2Params, num_domains: int):
        super().__init__()
        dim = cfg.mapping_dim
        layers: list[nn.Module] = []
        for index in range(4):
            layers += [nn.Linear(cfg.latent_dim if index == 0 else dim, dim), nn.ReLU()]
        self.shared = nn.Sequential(*layers)
        self.heads = nn.ModuleList(
            nn.Sequential(
                *(m for _ in range(3) for m in (nn.Linear(dim, dim), nn.ReLU())),
                nn.Linear(dim, cfg.style_dim),
            )
            for _ in range(num_domains)
        )

    def forward(self, z: torch.Tensor, domains: torch.Tensor) -> torch.Tensor:
        h = self.shared(z)
        styles = torch.stack([head(h) for head in self.heads], 1)  # N×K×style_dim
        return styles[torch.arange(len(z), device=z.device), domains]


def conv_trunk(image_size: int, cfg: StarGAN2Params) -> tuple[nn.Sequential, int]:
    """The trunk shared by D and the style encoder: 3×3 conv, log2(size) − 2 down blocks
    to 4×4, a 4×4 conv to 1×1; returns it and its width."""
    width = first_width(image_size, cfg)
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, 1, 1)]
    for _ in range(int(math.log2(image_size)) - 2):
        cout = min(width * 2, cfg.max_channels)
        layers.append(ResBlock(width, cout, downsample=True))
        width = cout
    layers += [nn.LeakyReLU(0.2), nn.Conv2d(width, width, 4, 1, 0), nn.LeakyReLU(0.2)]
    return nn.Sequential(*layers), width


class StyleEncoder(nn.Module):
    """Image → style code in a given domain (one linear head per domain)."""

    def __init__(self, image_size: int, cfg: StarGAN2Params, num_domains: int):
        super().__init__()
        self.trunk, width = conv_trunk(image_size, cfg)
        self.num_domains, self.style_dim = num_domains, cfg.style_dim
        self.heads = nn.Linear(width, num_domains * cfg.style_dim)  # K heads in one matrix

    def forward(self, x: torch.Tensor, domains: torch.Tensor) -> torch.Tensor:
        h = self.trunk(x).flatten(1)
        styles = self.heads(h).view(len(x), self.num_domains, self.style_dim)
        return styles[torch.arange(len(x), device=x.device), domains]


class StarGAN2Discriminator(nn.Module):
    """Image → one real/fake logit per domain; the one of ``domains`` is returned."""

    def __init__(self, image_size: int, cfg: StarGAN2Params, num_domains: int):
        super().__init__()
        self.trunk, width = conv_trunk(image_size, cfg)
        self.out = nn.Conv2d(width, num_domains, 1)

    def forward(self, x: torch.Tensor, domains: torch.Tensor) -> torch.Tensor:
        logits = self.out(self.trunk(x)).flatten(1)  # N×K
        return logits[torch.arange(len(x), device=x.device), domains]


def random_resized_crop(images: torch.Tensor, ctx: StepContext, prob: float) -> torch.Tensor:
    """Per row, with probability ``prob``, a random crop of 80–100 % of the area at an
    aspect ratio of 0.9–1.1, resized back (bilinear): the official loader's
    RandomResizedCrop, done on the batch with the engine's draws. Every row draws its five
    numbers whether it is cropped or not, so the draws do not depend on the outcome."""
    draws = ctx.draw(5).to(images.device)
    if prob <= 0:
        return images
    apply, area, log_ratio, du, dv = draws.unbind(1)
    area = CROP_SCALE[0] + area * (CROP_SCALE[1] - CROP_SCALE[0])
    low, high = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    ratio = torch.exp(low + log_ratio * (high - low))
    width = torch.sqrt(area * ratio).clamp(max=1.0)  # fractions of the side
    height = torch.sqrt(area / ratio).clamp(max=1.0)
    theta = torch.zeros(len(images), 2, 3, device=images.device)
    theta[:, 0, 0], theta[:, 1, 1] = width, height
    theta[:, 0, 2] = (2 * du - 1) * (1 - width)
    theta[:, 1, 2] = (2 * dv - 1) * (1 - height)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    cropped = F.grid_sample(images.float(), grid, "bilinear", "border", align_corners=False)
    chosen = (apply < prob)[:, None, None, None]
    return torch.where(chosen, cropped.to(images.dtype), images)


class StarGAN2(GANModel):
    name = "stargan2"
    default_augment = "none"
    capabilities = frozenset({Capability.TRANSLATION})
    d_optimizers = ("D",)
    g_optimizers = ("G", "mapping", "style")

    def __init__(
        self,
        image_size: int,
        cfg: StarGAN2Params,
        batch_size: int = 0,
        *,
        for_sampling: bool = False,
        num_classes: int = 0,
    ):
        super().__init__()
        if not num_classes:
            raise ValueError(
                "train.model stargan2 translates between domains: it needs a labelled dataset "
                "(dataset.labels: tags or folders)"
            )
        if image_size < 16:
            raise ValueError(f"stargan2 needs image_size >= 16, got {image_size}")
        self.cfg, self.image_size = cfg, image_size
        self.latent_dim, self.num_classes = cfg.latent_dim, num_classes
        self.G = StarGAN2Generator(image_size, cfg)
        self.mapping = MappingNetwork(cfg, num_classes)
        self.style_encoder = StyleEncoder(image_size, cfg, num_classes)
        # sampling needs no D: a placeholder keeps the attribute
        self.D = (
            nn.Identity() if for_sampling else StarGAN2Discriminator(image_size, cfg, num_classes)
        )
        self.apply(he_init)
        self._sources_ready = False

    # -- what the engine drives ---------------------------------------------------------

    def optimizers(self):
        cfg = self.cfg

        def adam(module: nn.Module, lr: float) -> torch.optim.Adam:
            return torch.optim.Adam(
                module.parameters(), lr=lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay
            )

        return {
            "G": adam(self.G, cfg.lr),
            "mapping": adam(self.mapping, cfg.mapping_lr),
            "style": adam(self.style_encoder, cfg.lr),
            "D": adam(self.D, cfg.lr),
        }

    def trained_modules(self) -> dict[str, nn.Module]:
        return {"G": self.G, "mapping": self.mapping, "style_encoder": self.style_encoder,
                "D": self.D}  # fmt: skip

    def ema_modules(self) -> dict[str, nn.Module]:
        return {"G": self.G, "mapping": self.mapping, "style_encoder": self.style_encoder}

    def lambda_ds(self, kimg: float) -> float:
        """The diversity weight at ``kimg``: linearly from lambda_ds to 0 over
        ds_decay_kimg (the official decays it per iteration over ds_iter)."""
        if self.cfg.ds_decay_kimg is None:
            return self.cfg.lambda_ds
        return self.cfg.lambda_ds * max(0.0, 1.0 - kimg / self.cfg.ds_decay_kimg)

    @staticmethod
    def reference_guided(ctx: StepContext) -> bool:
        """Odd steps take their styles from reference images, even ones from latents."""
        return ctx.step % 2 == 1

    def d_loss(self, batch: Batch, ctx: StepContext) -> DLoss:
        labels = self._labels(batch)
        self._keep_sources(batch.images)
        real = random_resized_crop(batch.images, ctx, self.cfg.random_crop)
        with torch.no_grad():
            targets, styles = self._target_styles(real, labels, ctx, count=1)
            fake = self.G(real, styles[0])
        real = real.detach().requires_grad_(self.cfg.r1_gamma > 0)
        logits_real = self.D(ctx.augment(real), labels)
        loss_real = F.softplus(-logits_real.float()).mean()
        logits_fake = self.D(ctx.augment(fake), targets)
        loss_fake = F.softplus(logits_fake.float()).mean()
        loss = loss_real + loss_fake
        if self.cfg.r1_gamma > 0:
            (grads,) = torch.autograd.grad(logits_real.float().sum(), real, create_graph=True)
            r1 = 0.5 * grads.float().square().sum((1, 2, 3)).mean()
            loss = loss + self.cfg.r1_gamma * r1
            ctx.logs["loss/r1_penalty"] = r1.detach()
        ctx.logs.update({"loss/D_real": loss_real.detach(), "loss/D_fake": loss_fake.detach()})
        return DLoss(loss, logits_real.detach())

    def g_loss(self, batch: Batch, ctx: StepContext) -> torch.Tensor:
        cfg, labels = self.cfg, self._labels(batch)
        real = random_resized_crop(batch.images, ctx, cfg.random_crop)
        targets, (style, style2) = self._target_styles(real, labels, ctx, count=2)
        fake = self.G(real, style)
        adv = F.softplus(-self.D(ctx.augment(fake), targets).float()).mean()
        sty = (self.style_encoder(fake, targets) - style).float().abs().mean()
        with torch.no_grad():  # the official detaches the second translation
            fake2 = self.G(real, style2)
        ds = (fake - fake2).float().abs().mean()
        recovered = self.G(fake, self.style_encoder(real, labels))
        cyc = (recovered - real).float().abs().mean()
        weight_ds = self.lambda_ds(ctx.kimg)
        loss = adv + cfg.lambda_sty * sty - weight_ds * ds + cfg.lambda_cyc * cyc
        ctx.logs.update(
            {"loss/G": adv.detach(), "loss/style": sty.detach(), "loss/diversity": ds.detach(),
             "loss/cycle": cyc.detach(), "lambda_ds": weight_ds}
        )  # fmt: skip
        return loss

    # -- pieces -------------------------------------------------------------------------

    def _labels(self, batch: Batch) -> torch.Tensor:
        if batch.labels is None:
            raise ValueError("stargan2 needs labelled batches (a dataset with dataset.labels)")
        return batch.labels

    def _target_styles(
        self, real: torch.Tensor, labels: torch.Tensor, ctx: StepContext, count: int,
        reference: bool | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:  # fmt: skip
        """Target domains and ``count`` style codes in them for this step's kind: from the
        mapping network (random domains, fresh z each) or from the style encoder (the
        batch's rows shuffled as references, the second of another row of the domain)."""
        device = real.device
        if not (self.reference_guided(ctx) if reference is None else reference):
            targets = (ctx.draw() * self.num_classes).long().clamp(max=self.num_classes - 1)
            targets = targets.to(device)
            styles = [self.mapping(ctx.latents(self.latent_dim, device), targets)
                      for _ in range(count)]  # fmt: skip
            return targets, styles
        order = ctx.draw().argsort().to(device)
        targets = labels[order]
        references = [order]
        if count > 1:
            references.append(same_domain_rows(labels, order, ctx.draw(len(labels)).to(device)))
        return targets, [self.style_encoder(real[rows], targets) for rows in references]

    @torch.no_grad()
    def _keep_sources(self, images: torch.Tensor) -> None:
        """Fill G's ``sample_sources`` from the first real batch (rows repeated when the
        batch is smaller); kept in the checkpoint, so once per run."""
        if self._sources_ready:
            return
        G = self.G
        if not int(G.sources_filled):
            rows = torch.arange(len(G.sample_sources), device=images.device) % len(images)
            G.sample_sources.copy_(images[rows].to(G.sample_sources.dtype))
            G.sources_filled.fill_(1)
        self._sources_ready = True

    # -- sampling -----------------------------------------------------------------------

    def source_index(self, z: torch.Tensor) -> torch.Tensor:
        """Which of the kept source images latent ``z`` translates: Φ(z₀) picks one
        uniformly, the same for a latent whatever the batch it is drawn in."""
        count = len(self.G.sample_sources)
        return (torch.special.ndtr(z[:, 0].float()) * count).long().clamp(0, count - 1)

    def sample(self, z, labels=None, truncation_psi=1.0, truncation_cutoff=None):
        """Latent-guided translation of one of G's kept real images (``source_index(z)``)
        into domain ``labels`` in the style ``mapping(z, labels)``."""
        if labels is None:
            raise ValueError("stargan2 translates into a domain: give a class per latent")
        if truncation_psi != 1.0 or truncation_cutoff is not None:
            raise ValueError("stargan2 has no truncation (use truncation 1)")
        sources = self.G.sample_sources[self.source_index(z).to(self.G.sample_sources.device)]
        return self.translate(sources, self.mapping(z, labels))

    def translate(self, images: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
        """``images`` ([-1, 1]) in the given style codes, clamped to [-1, 1]."""
        return self.G(images, styles).clamp(-1, 1)

    def load_ema(self, checkpoint: dict) -> None:
        super().load_ema(checkpoint)
        self._sources_ready = bool(int(self.G.sources_filled))


def same_domain_rows(
    labels: torch.Tensor, first: torch.Tensor, draws: torch.Tensor
) -> torch.Tensor:
    """For each row i, a random row j with ``labels[j] == labels[first[i]]``, other than
    ``first[i]`` where the batch has one (``draws``: N×N uniform numbers)."""
    wanted = labels[first]
    rows = torch.arange(len(labels), device=labels.device)
    same = labels[None, :] == wanted[:, None]
    other = same & (rows[None, :] != first[:, None])
    candidates = torch.where(other.any(1, keepdim=True), other, same)
    return torch.where(candidates, draws + 1, torch.zeros_like(draws)).argmax(1)

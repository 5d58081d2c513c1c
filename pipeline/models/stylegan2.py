"""StyleGAN2 (Karras et al., CVPR 2020) trained as in StyleGAN2-ADA (NeurIPS 2020), in plain
PyTorch: no custom CUDA extension to build.

Generator: a mapping network z → w (tracking the average w for truncation), and a synthesis
network of modulated/demodulated convolutions with noise inputs and a skip (toRGB)
architecture. Discriminator: residual, with minibatch standard deviation. Loss: the
non-saturating logistic loss, lazy R1 on reals and lazy path-length regularisation, with
style mixing. Resampling uses the [1, 3, 3, 1] FIR filter as depthwise (transposed)
convolutions, which cuDNN runs well, instead of NVlabs' upfirdn2d kernel.

Precision: the highest ``reduced_precision_res`` resolutions run under the engine's autocast
(bf16 or fp16); the others run in fp32 whatever the engine asks, and activations are clamped
to ±``conv_clamp`` as the original does, so fp16 cannot overflow.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from pipeline.models.base import (
    Batch,
    Capability,
    DLoss,
    GANModel,
    MinibatchStd,
    NoiseInjection,
    StepContext,
)
from pipeline.models.registry import StyleGAN2Params

SQRT2 = math.sqrt(2)
LRELU_SLOPE = 0.2


# -- presets -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StyleGAN2Config:
    """Every hyperparameter a preset decides, resolved for one resolution and batch."""

    map_layers: int
    channel_base: int
    lr: float
    r1_gamma: float
    mbstd_group: int


def resolve_config(cfg: StyleGAN2Params, image_size: int, batch_size: int) -> StyleGAN2Config:
    """``train.stylegan2.config`` with its null keys filled in.

    ``auto`` is NVlabs' rule for new datasets (γ = 0.0002·res²/batch, a 2-layer mapping,
    half width below 512 px); ``paper256`` the settings of the paper's 256 px runs;
    ``config-e`` StyleGAN2's config E (8-layer mapping, half width, γ = 10).
    """
    if cfg.config == "auto":
        preset = StyleGAN2Config(
            map_layers=2,
            channel_base=32768 if image_size >= 512 else 16384,
            lr=0.002 if image_size >= 1024 else 0.0025,
            r1_gamma=0.0002 * image_size**2 / batch_size,
            mbstd_group=min(batch_size, 4),
        )
    elif cfg.config == "paper256":
        preset = StyleGAN2Config(8, 16384, 0.0025, 1.0, 8)
    else:  # config-e
        preset = StyleGAN2Config(8, 16384, 0.002, 10.0, 4)
    return StyleGAN2Config(
        map_layers=cfg.map_layers if cfg.map_layers is not None else preset.map_layers,
        channel_base=cfg.channel_base if cfg.channel_base is not None else preset.channel_base,
        lr=cfg.lr if cfg.lr is not None else preset.lr,
        r1_gamma=cfg.r1_gamma if cfg.r1_gamma is not None else preset.r1_gamma,
        mbstd_group=cfg.mbstd_group if cfg.mbstd_group is not None else preset.mbstd_group,
    )


def channels_at(resolution: int, channel_base: int, channel_max: int) -> int:
    return min(channel_base // resolution, channel_max)


# -- building blocks -----------------------------------------------------------------------


def lrelu(x: torch.Tensor, clamp: float | None) -> torch.Tensor:
    x = F.leaky_relu(x, LRELU_SLOPE) * SQRT2
    return x.clamp(-clamp, clamp) if clamp is not None else x


class FIR(nn.Module):
    """The [1, 3, 3, 1] binomial filter: anti-aliased 2× up- and downsampling."""

    def __init__(self):
        super().__init__()
        taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
        kernel = taps[:, None] * taps[None, :]
        self.register_buffer("kernel", kernel / kernel.sum(), persistent=False)

    def _depthwise(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        channels = x.shape[1]
        return (self.kernel * gain).to(x.dtype).expand(channels, 1, 4, 4)

    def up(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-insertion upsampling then filtering, as one transposed convolution."""
        return F.conv_transpose2d(
            x, self._depthwise(x, 4.0), stride=2, padding=1, groups=x.shape[1]
        )

    def down(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self._depthwise(x), stride=2, padding=1, groups=x.shape[1])

    def blur(self, x: torch.Tensor, pad: int, gain: float = 1.0) -> torch.Tensor:
        return F.conv2d(x, self._depthwise(x, gain), padding=pad, groups=x.shape[1])


class EqualLinear(nn.Module):
    """Fully connected layer with the equalised learning rate (weights scaled at run time)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias_init: float = 0.0,
        lr_mul: float = 1.0,
        activate: bool = False,
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init)))
        self.weight_gain = lr_mul / math.sqrt(in_features)
        self.lr_mul, self.activate = lr_mul, activate

    def scaled_weight(self) -> torch.Tensor:
        return self.weight * self.weight_gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.scaled_weight().to(x.dtype), (self.bias * self.lr_mul).to(x.dtype))
        return lrelu(x, None) if self.activate else x


class EqualConv2d(nn.Module):
    """Convolution with the equalised learning rate; ``down`` filters then strides by 2."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        bias: bool = True,
        activate: bool = True,
        down: bool = False,
        clamp: float | None = None,
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.gain = 1 / math.sqrt(in_channels * kernel_size**2)
        self.activate, self.down, self.clamp = activate, down, clamp
        self.fir = FIR() if down else None
        self.kernel_size = kernel_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = (self.weight * self.gain).to(x.dtype)
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        if self.down and self.kernel_size == 1:
            x = F.conv2d(self.fir.down(x), weight, bias)
        elif self.down:
            x = F.conv2d(self.fir.blur(x, pad=2), weight, bias, stride=2)
        else:
            x = F.conv2d(x, weight, bias, padding=self.kernel_size // 2)
        if self.activate:
            return lrelu(x, self.clamp)
        return x.clamp(-self.clamp, self.clamp) if self.clamp is not None else x


def precision_scope(x: torch.Tensor, reduced: bool):
    """Autocast as the engine set it for reduced-precision layers; fp32 for the others."""
    if reduced:
        return contextlib.nullcontext()
    return torch.autocast(x.device.type, enabled=False)


def block_input(x: torch.Tensor, reduced: bool) -> torch.Tensor:
    """A block's input in its own precision: the autocast dtype, or fp32."""
    if reduced and torch.is_autocast_enabled(x.device.type):
        return x.to(torch.get_autocast_dtype(x.device.type))
    return x.float()


# -- generator -----------------------------------------------------------------------------


def normalize_2nd_moment(x: torch.Tensor) -> torch.Tensor:
    return x * (x.square().mean(1, keepdim=True) + 1e-8).rsqrt()


class MappingNetwork(nn.Module):
    """z → w through ``layers`` fully connected layers at 1/100 learning rate, tracking the
    average w (the centre truncation pulls towards).

    Conditional (``num_classes`` > 0): the class's learned embedding (w_dim wide) is
    normalised and concatenated to the normalised z, and an average w is kept per class, so
    truncation pulls towards the class's own centre instead of the mean over all classes."""

    def __init__(
        self, z_dim: int, w_dim: int, num_ws: int, layers: int, w_avg_beta=0.995,
        num_classes: int = 0,
    ):  # fmt: skip
        super().__init__()
        dims = [z_dim + (w_dim if num_classes else 0)] + [w_dim] * layers
        self.layers = nn.Sequential(
            *[EqualLinear(a, b, lr_mul=0.01, activate=True) for a, b in itertools.pairwise(dims)]
        )
        self.num_ws, self.w_avg_beta, self.num_classes = num_ws, w_avg_beta, num_classes
        self.register_buffer("w_avg", torch.zeros(w_dim))
        if num_classes:
            self.embed = EqualLinear(num_classes, w_dim)
            self.register_buffer("w_avg_class", torch.zeros(num_classes, w_dim))

    def forward(
        self,
        z: torch.Tensor,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        update_w_avg: bool = False,
        c: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.num_classes and c is None:
            raise ValueError("this generator is class-conditional: give a class per latent")
        with torch.autocast(z.device.type, enabled=False):
            x = normalize_2nd_moment(z.float())
            if self.num_classes:
                onehot = F.one_hot(c.long(), self.num_classes).float()
                x = torch.cat([x, normalize_2nd_moment(self.embed(onehot))], 1)
            w = self.layers(x)
        if update_w_avg:
            self.w_avg.copy_(w.detach().mean(0).lerp(self.w_avg, self.w_avg_beta))
            if self.num_classes:
                self._update_class_averages(w.detach(), c.long())
        ws = w[:, None].repeat(1, self.num_ws, 1)
        if truncation_psi != 1:
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            centre = self.w_avg if not self.num_classes else self.w_avg_class[c.long()][:, None]
            ws[:, :cutoff] = centre.lerp(ws[:, :cutoff], truncation_psi)
        return ws

    def _update_class_averages(self, w: torch.Tensor, c: torch.Tensor) -> None:
        """Move each class's average w towards its mean in this batch (classes present)."""
        sums = torch.zeros_like(self.w_avg_class).index_add_(0, c, w.float())
        counts = torch.bincount(c, minlength=self.num_classes).to(w.dtype)[:, None]
        means = sums / counts.clamp(min=1)
        moved = means.lerp(self.w_avg_class, self.w_avg_beta)
        self.w_avg_class.copy_(torch.where(counts > 0, moved, self.w_avg_class))


class ModulatedConv2d(nn.Module):
    """A convolution whose input channels are scaled per sample by a style from w, then
    normalised back to unit variance per output channel (demodulation)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        kernel_size: int,
        demodulate: bool = True,
        up: bool = False,
    ):
        super().__init__()
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.gain = 1 / math.sqrt(in_channels * kernel_size**2)
        self.demodulate, self.up, self.padding = demodulate, up, kernel_size // 2
        self.fir = FIR() if up else None

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused: bool) -> torch.Tensor:
        n, in_channels = x.shape[:2]
        styles = self.affine(w.to(x.dtype))
        weight = self.weight.to(x.dtype) * self.gain
        if self.demodulate and x.dtype == torch.float16:
            # Rescale before the products so fp16 cannot overflow; demodulation undoes it.
            weight = weight / weight.flatten(1).abs().amax(1).view(-1, 1, 1, 1)
            styles = styles / styles.abs().amax(1, keepdim=True)
        if self.demodulate:
            # Σ_ik (w_oik·s_ni)² = Σ_i s_ni²·Σ_k w_oik²: one N×I by I×O product, not the
            # N×O×I×k×k per-sample weights (at 512 channels and batch 32, 75M numbers a
            # layer, whose products and squares took 44% of a CPU training step)
            energy = weight.float().square().sum((2, 3)).t()
            dcoefs = (styles.float().square() @ energy + 1e-8).rsqrt().to(x.dtype)
        if not fused:
            # Scale activations instead of weights: one shared weight, cuDNN's fast path.
            x = x * styles[:, :, None, None]
            x = self._conv(x, weight, groups=1, shared=True)
            return x * dcoefs[:, :, None, None] if self.demodulate else x
        # One grouped convolution with a weight per sample (fast for small batches).
        modulated = weight[None] * styles[:, None, :, None, None]
        per_sample = modulated * dcoefs[:, :, None, None, None] if self.demodulate else modulated
        out_channels, k = per_sample.shape[1], per_sample.shape[-1]
        x = x.reshape(1, n * in_channels, *x.shape[2:])
        if self.up:
            per_sample = per_sample.transpose(1, 2).reshape(n * in_channels, out_channels, k, k)
        else:
            per_sample = per_sample.reshape(n * out_channels, in_channels, k, k)
        x = self._conv(x, per_sample, groups=n)
        return x.reshape(n, out_channels, *x.shape[2:])

    def _conv(
        self, x: torch.Tensor, weight: torch.Tensor, groups: int, shared: bool = False
    ) -> torch.Tensor:
        if not self.up:
            return F.conv2d(x, weight, padding=self.padding, groups=groups)
        if shared:  # out×in×k×k; the per-sample weights arrive as (n·in)×out×k×k already
            weight = weight.transpose(0, 1)
        # Transposed convolution at stride 2 (2H+1 pixels), then the FIR filter (2H pixels).
        x = F.conv_transpose2d(x, weight, stride=2, groups=groups)
        return self.fir.blur(x, pad=1, gain=4.0)


class SynthesisLayer(nn.Module):
    def __init__(self, cin: int, cout: int, w_dim: int, resolution: int, up: bool, clamp):
        super().__init__()
        self.conv = ModulatedConv2d(cin, cout, w_dim, 3, up=up)
        self.noise = NoiseInjection(resolution)
        self.bias = nn.Parameter(torch.zeros(cout))
        self.clamp = clamp

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused: bool) -> torch.Tensor:
        x = self.noise(self.conv(x, w, fused))
        return lrelu(x + self.bias.to(x.dtype)[:, None, None], self.clamp)


class ToRGB(nn.Module):
    def __init__(self, cin: int, w_dim: int, clamp):
        super().__init__()
        self.conv = ModulatedConv2d(cin, 3, w_dim, 1, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(3))
        self.clamp = clamp

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused: bool) -> torch.Tensor:
        x = self.conv(x, w, fused) + self.bias.to(x.dtype)[:, None, None]
        return x.clamp(-self.clamp, self.clamp) if self.clamp is not None else x


class SynthesisBlock(nn.Module):
    """One resolution: (upsampling conv,) conv, and its toRGB added to the upsampled image."""

    def __init__(self, cin, cout, w_dim, resolution, reduced: bool, clamp):
        super().__init__()
        self.first = cin == 0
        if self.first:
            self.const = nn.Parameter(torch.randn(cout, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(cin, cout, w_dim, resolution, up=True, clamp=clamp)
        self.conv1 = SynthesisLayer(cout, cout, w_dim, resolution, up=False, clamp=clamp)
        self.torgb = ToRGB(cout, w_dim, clamp)
        self.fir = FIR()
        self.reduced, self.resolution = reduced, resolution
        self.num_conv = 1 if self.first else 2

    def forward(self, x, img, ws: torch.Tensor, fused: bool):
        with precision_scope(ws, self.reduced):
            if self.first:
                x = self.const[None].expand(ws.shape[0], -1, -1, -1)
                x = self.conv1(block_input(x, self.reduced), ws[:, 0], fused)
            else:
                x = self.conv0(block_input(x, self.reduced), ws[:, 0], fused)
                x = self.conv1(x, ws[:, 1], fused)
            y = self.torgb(x, ws[:, self.num_conv], fused).float()
        img = y if img is None else self.fir.up(img) + y
        return x, img


class SynthesisNetwork(nn.Module):
    def __init__(self, image_size, w_dim, channel_base, channel_max, reduced_res, clamp):
        super().__init__()
        log2 = int(math.log2(image_size))
        resolutions = [2**i for i in range(2, log2 + 1)]
        reduced_from = 2 ** max(log2 + 1 - reduced_res, 3) if reduced_res else image_size * 2
        blocks, cin = [], 0
        for res in resolutions:
            cout = channels_at(res, channel_base, channel_max)
            reduced = res >= reduced_from
            blocks.append(SynthesisBlock(cin, cout, w_dim, res, reduced, clamp))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.num_ws = sum(b.num_conv for b in blocks) + 1

    def forward(self, ws: torch.Tensor, fused: bool) -> torch.Tensor:
        x = img = None
        index = 0
        for block in self.blocks:
            x, img = block(x, img, ws[:, index : index + block.num_conv + 1], fused)
            index += block.num_conv
        return img


class StyleGAN2Generator(nn.Module):
    """``G(z) = synthesis(mapping(z))`` with truncation; see ``base.has_mapping``."""

    def __init__(
        self, image_size: int, cfg: StyleGAN2Params, config: StyleGAN2Config,
        num_classes: int = 0,
    ):  # fmt: skip
        super().__init__()
        self.image_size, self.latent_dim, self.w_dim = image_size, cfg.latent_dim, cfg.w_dim
        self.num_classes = num_classes
        clamp = cfg.conv_clamp
        self.synthesis_net = SynthesisNetwork(
            image_size,
            cfg.w_dim,
            config.channel_base,
            cfg.channel_max,
            cfg.reduced_precision_res,
            clamp,
        )
        self.num_ws = self.synthesis_net.num_ws
        self.mapper = MappingNetwork(
            cfg.latent_dim, cfg.w_dim, self.num_ws, config.map_layers, num_classes=num_classes
        )
        # running mean of path lengths (path-length regularisation); kept with the weights so
        # a resumed run continues it
        self.register_buffer("pl_mean", torch.zeros([]))
        self.fused_modconv = cfg.fused_modconv

    @property
    def w_avg(self) -> torch.Tensor:
        return self.mapper.w_avg

    def mapping(
        self, z, truncation_psi: float = 1.0, truncation_cutoff=None, update_w_avg=False,
        c=None,
    ):  # fmt: skip
        return self.mapper(z, truncation_psi, truncation_cutoff, update_w_avg, c)

    def synthesis(self, ws: torch.Tensor) -> torch.Tensor:
        # A weight per sample is faster for inference batches; a shared weight with scaled
        # activations is faster (and needed for double backward speed) in training.
        fused = {"auto": not self.training, "always": True, "never": False}[self.fused_modconv]
        return self.synthesis_net(ws, fused)

    def forward(
        self, z, c=None, truncation_psi: float = 1.0, truncation_cutoff=None
    ) -> torch.Tensor:
        return self.synthesis(self.mapping(z, truncation_psi, truncation_cutoff, c=c))

    def modulation_weights(self) -> list[torch.Tensor]:
        """Per ws index, the style (affine) weights of the layers that index drives,
        concatenated along output channels (C×w_dim): SeFa's closed-form directions."""
        per_index: list[list[torch.Tensor]] = [[] for _ in range(self.num_ws)]
        index = 0
        for block in self.synthesis_net.blocks:
            layers = [block.conv1] if block.first else [block.conv0, block.conv1]
            for offset, layer in enumerate(layers):
                per_index[index + offset].append(layer.conv.affine.scaled_weight())
            per_index[index + block.num_conv].append(block.torgb.conv.affine.scaled_weight())
            index += block.num_conv
        return [torch.cat(weights).detach() for weights in per_index]


# -- discriminator -------------------------------------------------------------------------


class DiscriminatorBlock(nn.Module):
    """Two 3×3 convolutions (the second downsampling) plus a 1×1 downsampling skip."""

    def __init__(self, cin, cout, from_rgb: bool, reduced: bool, clamp):
        super().__init__()
        self.fromrgb = EqualConv2d(3, cin, 1, clamp=clamp) if from_rgb else None
        self.conv0 = EqualConv2d(cin, cin, 3, clamp=clamp)
        self.conv1 = EqualConv2d(cin, cout, 3, down=True, clamp=clamp)
        self.skip = EqualConv2d(cin, cout, 1, bias=False, activate=False, down=True)
        self.reduced = reduced

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with precision_scope(x, self.reduced):
            x = block_input(x, self.reduced)
            if self.fromrgb is not None:
                x = self.fromrgb(x)
            y = self.skip(x) * math.sqrt(0.5)
            x = self.conv1(self.conv0(x)) * math.sqrt(0.5)
            return x + y


class DiscriminatorEpilogue(nn.Module):
    """The 4×4 head. Conditional: a projection discriminator (Miyato & Koyama 2018): the
    head gives ``cmap_dim`` features whose dot product with the class's learned embedding
    is the logit, so D judges "a real image of this class", not only "a real image"."""

    def __init__(self, channels: int, mbstd_group: int, clamp, num_classes: int = 0):
        super().__init__()
        self.mbstd = MinibatchStd(mbstd_group)
        self.conv = EqualConv2d(channels + 1, channels, 3, clamp=clamp)
        self.fc = EqualLinear(channels * 16, channels, activate=True)
        self.num_classes = num_classes
        self.out = EqualLinear(channels, channels if num_classes else 1)
        if num_classes:
            self.cmap = EqualLinear(num_classes, channels)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            x = self.conv(self.mbstd(x.float()))
            out = self.out(self.fc(x.flatten(1)))
            if not self.num_classes:
                return out
            if c is None:
                raise ValueError("this discriminator is class-conditional: give the classes")
            cmap = self.cmap(F.one_hot(c.long(), self.num_classes).float())
            return (out * cmap).sum(1, keepdim=True) / math.sqrt(out.shape[1])


class StyleGAN2Discriminator(nn.Module):
    """Residual discriminator. ``blocks`` run from the full resolution down; ``freeze_d``
    counts them from the top (transfer learning freezes the layers nearest the pixels)."""

    def __init__(
        self, image_size: int, cfg: StyleGAN2Params, config: StyleGAN2Config,
        num_classes: int = 0,
    ):  # fmt: skip
        super().__init__()
        log2 = int(math.log2(image_size))
        reduced_res = cfg.reduced_precision_res
        reduced_from = 2 ** max(log2 + 1 - reduced_res, 3) if reduced_res else image_size * 2
        blocks = []
        for i, res in enumerate(2**k for k in range(log2, 2, -1)):
            cin = channels_at(res, config.channel_base, cfg.channel_max)
            cout = channels_at(res // 2, config.channel_base, cfg.channel_max)
            blocks.append(
                DiscriminatorBlock(cin, cout, i == 0, res >= reduced_from, cfg.conv_clamp)
            )
        self.blocks = nn.ModuleList(blocks)
        channels = channels_at(4, config.channel_base, cfg.channel_max)
        self.epilogue = DiscriminatorEpilogue(
            channels, config.mbstd_group, cfg.conv_clamp, num_classes
        )

    def layers(self) -> list[nn.Module]:
        return [*self.blocks, self.epilogue]

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.epilogue(x, c)


# -- the GAN -------------------------------------------------------------------------------


class StyleGAN2(GANModel):
    name = "stylegan2"
    default_augment = "ada"
    capabilities = frozenset({Capability.W_SPACE, Capability.STYLE_WEIGHTS})

    def __init__(
        self,
        image_size: int,
        cfg: StyleGAN2Params,
        batch_size: int,
        *,
        for_sampling: bool = False,
        num_classes: int = 0,
    ):
        super().__init__()
        if image_size < 8:
            raise ValueError(f"stylegan2 needs image_size >= 8, got {image_size}")
        if cfg.conditional is True and not num_classes:
            raise ValueError(
                "train.stylegan2.conditional: true needs a labelled dataset (dataset.labels: "
                "tags or folders); set it to auto or false"
            )
        self.cfg = cfg
        self.config = resolve_config(cfg, image_size, batch_size)
        self.latent_dim = cfg.latent_dim
        self.num_classes = num_classes if cfg.conditional is not False else 0
        self.G = StyleGAN2Generator(image_size, cfg, self.config, self.num_classes)
        self.D = StyleGAN2Discriminator(image_size, cfg, self.config, self.num_classes)
        self.d_reg_interval = cfg.r1_interval if self.config.r1_gamma > 0 else None
        self.g_reg_interval = cfg.pl_interval if cfg.pl_weight > 0 else None
        frozen = self.D.layers()[: cfg.freeze_d]
        for layer in frozen:
            layer.requires_grad_(False)

    def optimizers(self):
        def adam(params, interval: int | None) -> torch.optim.Adam:
            # Lazy regularisation steps the optimizer more often: shrink lr and momentum so
            # the main loss keeps the dynamics it would have without the extra steps.
            ratio = interval / (interval + 1) if interval else 1.0
            betas = tuple(b**ratio for b in self.cfg.betas)
            trainable = [p for p in params if p.requires_grad]
            return torch.optim.Adam(trainable, lr=self.config.lr * ratio, betas=betas, eps=1e-8)

        return {
            "G": adam(self.G.parameters(), self.g_reg_interval),
            "D": adam(self.D.parameters(), self.d_reg_interval),
        }

    def generate(
        self, z: torch.Tensor, ctx: StepContext, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.G.synthesis(self._mixed_ws(z, ctx, labels))

    def _classes(self, batch: Batch) -> torch.Tensor | None:
        """The batch's labels when the model is conditional (then they must be there)."""
        if not self.num_classes:
            return None
        if batch.labels is None:
            raise ValueError("conditional StyleGAN2 needs a labelled dataset")
        return batch.labels

    def _mixed_ws(
        self, z: torch.Tensor, ctx: StepContext, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """w for each sample, with the layers from a random cutoff on taken from a second
        latent (of the same class) with probability ``style_mixing`` (one cutoff for the
        batch)."""
        G = self.G
        ws = G.mapping(z, update_w_avg=G.training, c=labels)
        mix, cutoff = ctx.draw_shared(2)
        other = ctx.normal(self.latent_dim)[: z.shape[0]].to(z.device, z.dtype)
        if mix < self.cfg.style_mixing:
            first = 1 + int(cutoff * (G.num_ws - 1))
            ws = ws.clone()
            ws[:, first:] = G.mapping(other, update_w_avg=False, c=labels)[:, first:]
        return ws

    def d_loss(self, batch: Batch, ctx: StepContext) -> DLoss:
        with torch.no_grad():
            fake = self.fakes(batch, ctx)
        labels = self._classes(batch)
        logits_fake = self.D(ctx.augment(fake), labels).float()
        logits_real = self.D(ctx.augment(batch.images), labels).float()
        loss_fake = F.softplus(logits_fake).mean()
        loss_real = F.softplus(-logits_real).mean()
        ctx.logs.update(
            {
                "loss/D_real": loss_real.detach(),
                "loss/D_fake": loss_fake.detach(),
                "scores/real": logits_real.detach().mean(),
                "scores/fake": logits_fake.detach().mean(),
            }
        )
        return DLoss(loss_real + loss_fake, logits_real)

    def g_loss(self, batch: Batch, ctx: StepContext) -> torch.Tensor:
        fake = self.fakes(batch, ctx)
        loss = F.softplus(-self.D(ctx.augment(fake), self._classes(batch)).float()).mean()
        ctx.logs["loss/G"] = loss.detach()
        return loss

    def d_reg_loss(self, batch: Batch, ctx: StepContext) -> torch.Tensor:
        """Lazy R1: γ/2·‖∇D(real)‖², weighted by the interval it is computed every."""
        real = batch.images.detach().requires_grad_(True)
        logits = self.D(ctx.augment(real), self._classes(batch)).float()
        (grads,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
        penalty = grads.float().square().sum((1, 2, 3))
        ctx.logs["loss/r1_penalty"] = penalty.detach().mean()
        return penalty.mean() * (self.config.r1_gamma / 2) * self.d_reg_interval

    def g_reg_loss(self, batch: Batch, ctx: StepContext) -> torch.Tensor:
        """Lazy path-length regularisation: keep ‖Jᵀy‖ (image change per unit w change, y a
        random image-space direction) near its running mean, on a shrunken batch."""
        cfg, G = self.cfg, self.G
        rows = max(ctx.rows // cfg.pl_batch_shrink, 1)
        device = G.w_avg.device
        z = ctx.normal(self.latent_dim)[:rows].to(device)
        labels = self._classes(batch)
        ws = self._mixed_ws(z, ctx, None if labels is None else labels[:rows])
        images = G.synthesis(ws)
        size = images.shape[2] * images.shape[3]
        y = ctx.normal_on(device, *images.shape[1:])[:rows].to(images.dtype) / math.sqrt(size)
        (grads,) = torch.autograd.grad((images * y).sum(), ws, create_graph=True)
        lengths = grads.float().square().sum(2).mean(1).sqrt()
        with torch.no_grad():
            batch_mean = lengths.mean()
            if dist.is_available() and dist.is_initialized():  # the same mean on every rank
                dist.all_reduce(batch_mean)
                batch_mean /= dist.get_world_size()
            G.pl_mean.copy_(G.pl_mean.lerp(batch_mean, cfg.pl_decay))
        penalty = (lengths - G.pl_mean).square().mean()
        ctx.logs.update({"loss/pl_penalty": penalty.detach(), "pl_mean": G.pl_mean.clone()})
        return penalty * cfg.pl_weight * self.g_reg_interval

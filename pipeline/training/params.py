"""The ``train`` section of params.yaml: the engine's settings and one sub-section per model."""

from __future__ import annotations

import itertools
from typing import Annotated, Literal

from pydantic import Field, model_validator

from pipeline.param_types import (
    BatchSize,
    GridSide,
    NonNegativeInt,
    PositiveInt,
    Probability,
    Section,
    StepCount,
    Threads,
    Workers,
)

AugType = Literal["translation", "color", "cutout", "offset"]


class AugStep(Section):
    """From optimizer step ``at`` on, augment with ``types``."""

    at: NonNegativeInt
    types: list[AugType]


class AugParams(Section):
    """DiffAugment for D: ``types`` at probability ``prob``; ``schedule`` changes the types."""

    types: list[AugType] = Field(default_factory=lambda: ["translation"])
    prob: Probability = 0.4
    # The seed's schedule: translation only, + color at 27k steps, + cutout at 54k.
    schedule: list[AugStep] = Field(
        default_factory=lambda: [
            AugStep(at=27_000, types=["translation", "color"]),
            AugStep(at=54_000, types=["translation", "color", "cutout"]),
        ]
    )

    def types_at(self, step: int) -> list[str]:
        types = list(self.types)
        for change in sorted(self.schedule, key=lambda s: s.at):
            if step >= change.at:
                types = list(change.types)
        return types


class EmaParams(Section):
    """EMA of G: a per-step ``decay``, or a ``half_life_kimg`` (NVlabs' form) with ramp-up."""

    decay: Annotated[float, Field(gt=0, lt=1)] | None = None
    half_life_kimg: Annotated[float, Field(gt=0)] | None = 10.0
    rampup: Annotated[float, Field(gt=0)] | None = 0.05  # half-life ≤ rampup × kimg so far

    @model_validator(mode="after")
    def _one_form(self) -> EmaParams:
        if (self.decay is None) == (self.half_life_kimg is None):
            raise ValueError("set exactly one of decay and half_life_kimg (the other null)")
        return self


class LightweightParams(Section):
    """Lightweight GAN (FastGAN, ICLR 2021); defaults are the seed's settings."""

    latent_dim: PositiveInt = 256
    channels: PositiveInt = 64  # width multiplier (ngf/ndf)
    # resolutions with linear attention in G
    attn_res: list[PositiveInt] = Field(default_factory=lambda: [32])
    antialias: bool = False  # blur after upsampling (anti-aliased upsampling)
    recon_loss: Literal["mse", "lpips"] = "mse"
    # LPIPS-VGG16 weights for recon_loss: lpips. Null: torchvision's vgg16-397923af.pth and
    # LPIPS' vgg.pth from the weights registry, in weights_dir (null: torch.hub's cache),
    # downloaded if missing and download_weights is on.
    lpips_vgg: str | None = None
    lpips_lin: str | None = None
    weights_dir: str | None = None
    download_weights: bool = True
    lr: Annotated[float, Field(gt=0)] = 2e-4
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (
        0.5,
        0.9,
    )


class AdaParams(Section):
    """Adaptive discriminator augmentation (StyleGAN2-ADA): the strength p follows how
    sure D is about reals, r_t = E[sign(D(real))], towards ``target``."""

    # b: blit (flips, 90° rotations, whole-pixel shifts), g: geometric, c: colour
    stages: Literal["bgc", "bg", "bc", "gc", "b", "g", "c"] = "bgc"
    target: Annotated[float, Field(gt=0, lt=1)] = 0.6
    fixed_p: Probability | None = None  # a constant p instead (null: adaptive)
    initial_p: Probability = 0.0
    interval: PositiveInt = 4  # steps between adjustments of p
    speed_kimg: Annotated[float, Field(gt=0)] = 500  # kimg p would take to go from 0 to 1


class StyleGAN2Params(Section):
    """StyleGAN2 and its ADA training setup. Keys left null take ``config``'s value."""

    config: Literal["auto", "paper256", "config-e"] = "auto"
    latent_dim: PositiveInt = 512
    w_dim: PositiveInt = 512
    map_layers: PositiveInt | None = 8  # StyleGAN2's 8; null: the config's (auto: 2)
    channel_base: PositiveInt | None = None  # width at resolution r: min(base / r, channel_max)
    channel_max: PositiveInt = 512
    mbstd_group: PositiveInt | None = None  # minibatch-stddev group; auto: min(batch, 4)
    lr: Annotated[float, Field(gt=0)] | None = None  # auto: 0.0025 (0.002 at 1024 px)
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (
        0.0,
        0.99,
    )
    r1_gamma: Annotated[float, Field(ge=0)] | None = None  # auto: 0.0002·res²/batch; 0: off
    r1_interval: PositiveInt = 16  # lazy R1 every N steps
    pl_weight: Annotated[float, Field(ge=0)] = 2.0  # path-length regularisation; 0: off
    pl_interval: PositiveInt = 4
    pl_batch_shrink: PositiveInt = 2
    pl_decay: Annotated[float, Field(gt=0, lt=1)] = 0.01
    style_mixing: Probability = 0.9
    reduced_precision_res: NonNegativeInt = 4  # highest resolutions in bf16/fp16 (NVlabs: 4)
    conv_clamp: Annotated[float, Field(gt=0)] | None = 256  # clamp activations (fp16 safety)
    fused_modconv: Literal["auto", "always", "never"] = "auto"  # auto: fused when sampling
    freeze_d: NonNegativeInt = 0  # freeze D's first N blocks from the top (transfer learning)
    # class-conditional (c embedded into the mapping, a projection D); auto: when the
    # dataset has labels (dataset.labels)
    conditional: Literal["auto"] | bool = "auto"


DCGANLoss = Literal["standard", "hinge", "relativistic", "relativistic_average", "wgan_gp"]
DCGANNorm = Literal["batch", "instance", "layer", "spectral", "none"]


class DCGANParams(Section):
    """DCGAN (Radford et al. 2015) with PokeGAN's training tricks; defaults are PokeGAN's
    main.py (which trained with batch 32: train.batch_size)."""

    latent_dim: PositiveInt = 96
    latent_size: Annotated[int, Field(ge=2, le=64)] = 4  # G projects z to this map size
    channels: PositiveInt = 64  # width at full resolution (ngf/ndf), doubling per halving
    channel_max: PositiveInt = 512
    upsample: Literal["transposed", "nearest"] = "transposed"  # nearest: upsample + conv
    g_kernel: Literal[3, 5] = 5  # G's kernel
    d_kernel: Literal[3, 5] | None = None  # D's kernel; null: g_kernel's (PokeGAN's D: 3)
    norm: DCGANNorm = "batch"
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.3  # in D
    loss: DCGANLoss = "standard"
    gp_weight: Annotated[float, Field(ge=0)] = 10.0  # wgan_gp's lambda
    consistency: Annotated[float, Field(ge=0)] = 0.0  # CT-GAN's weight (wgan_gp); 0: off
    consistency_margin: Annotated[float, Field(ge=0)] = 0.2  # CT-GAN's M'
    # BCE targets (standard and relativistic losses): reals 1 - smoothing, both pulled
    # towards the other class by up to label_noise, and swapped in a label_swap of rows
    label_smoothing: Annotated[float, Field(ge=0, lt=0.5)] = 0.1
    label_noise: Annotated[float, Field(ge=0, lt=0.5)] = 0.1
    label_swap: Annotated[float, Field(ge=0, lt=0.5)] = 0.03
    lr: Annotated[float, Field(gt=0)] = 1e-3
    g_lr_scale: Annotated[float, Field(gt=0, le=1)] = 1.0  # G's lr is lr x this
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (
        0.5,
        0.999,
    )
    weight_decay: Annotated[float, Field(ge=0)] = 0.0  # Adam's L2 penalty, G and D

    @model_validator(mode="after")
    def _checks(self) -> DCGANParams:
        if self.latent_size & (self.latent_size - 1):
            raise ValueError(f"latent_size {self.latent_size} must be a power of two")
        if self.consistency and self.loss != "wgan_gp":
            raise ValueError("consistency (CT-GAN) needs loss: wgan_gp, or set it to 0")
        if self.consistency and not self.dropout:
            raise ValueError("consistency (CT-GAN) compares two dropout passes: set dropout > 0")
        return self


class ProStage(Section):
    """One stage of progressive growing: train at ``size`` for ``kimg`` thousand images."""

    size: Annotated[int, Field(ge=2, le=1024)]
    kimg: Annotated[float, Field(gt=0)]
    lr: Annotated[float, Field(gt=0)] | None = None  # null: the section's lr


def default_growth(image_size: int, latent_size: int) -> list[dict]:
    """``progan.stages: null``: grow from 16 px (or 4 × latent_size, if larger) doubling up
    to ``image_size``, with PokeGAN's schedule (16 px: 200 kimg at lr 5e-4, 32 px: 400 at
    2e-4, 64 px: 800 at 2e-4) extended the same way: each stage twice the images of the one
    before, at 2e-4. The last stage lasts to the end of training whatever its kimg."""
    size = min(max(16, 4 * latent_size), image_size)
    stages = []
    while size <= image_size:
        lr = 2e-4 if stages else 5e-4
        stages.append({"size": size, "kimg": 200.0 * 2 ** len(stages), "lr": lr})
        size *= 2
    return stages


class ProGANParams(DCGANParams):
    """Progressive DCGAN (PokeGAN): the DCGAN grows one block per stage."""

    # null: PokeGAN's schedule up to train.image_size (default_growth); or a list of
    # {size, kimg, lr} whose sizes double and end at train.image_size
    stages: list[ProStage] | None = None
    freeze_previous: bool = True  # train only the newest block (PokeGAN)
    fade_kimg: Annotated[float, Field(ge=0)] = 0.0  # fade new blocks in (ProGAN); 0: switch

    def growth(self, image_size: int) -> list[ProStage]:
        """The stages a run at ``image_size`` goes through: the list given, or the default."""
        if self.stages is not None:
            return list(self.stages)
        return [ProStage(**stage) for stage in default_growth(image_size, self.latent_size)]

    @model_validator(mode="after")
    def _growth(self) -> ProGANParams:
        if self.stages is None:
            return self
        sizes = [stage.size for stage in self.stages]
        if not sizes:
            raise ValueError("stages: give at least one {size, kimg}")
        if sizes[0] < self.latent_size or sizes[0] & (sizes[0] - 1):
            raise ValueError(
                f"stages: the first size {sizes[0]} must be a power of two >= latent_size "
                f"{self.latent_size}"
            )
        for before, after in itertools.pairwise(sizes):
            if after != 2 * before:
                raise ValueError(f"stages: each size doubles the one before ({before} -> {after})")
        return self


class StarGAN2Params(Section):
    """StarGAN v2 (Choi et al., CVPR 2020): multi-domain image-to-image translation; the
    defaults are the official release's (clovaai/stargan-v2) non-face settings."""

    latent_dim: PositiveInt = 16  # z of the mapping network
    style_dim: PositiveInt = 64
    # width of the first conv of G, D and the style encoder (doubling per down block up to
    # max_channels); null: 2**14 / image_size (the official: 64 at 256 px)
    channels: PositiveInt | None = None
    max_channels: PositiveInt = 512
    mapping_dim: PositiveInt = 512  # hidden width of the mapping network
    # high-pass filter skips (the paper's face models, w_hpf); 0: off. No face landmarks
    # here: the whole image's high frequencies pass (mask of ones)
    hpf: Annotated[float, Field(ge=0)] = 0.0
    lambda_sty: Annotated[float, Field(ge=0)] = 1.0  # style reconstruction
    lambda_ds: Annotated[float, Field(ge=0)] = 1.0  # diversity sensitivity (faces: 2)
    lambda_cyc: Annotated[float, Field(ge=0)] = 1.0  # cycle consistency
    # lambda_ds falls linearly to 0 over this many kimg (the official 100k iterations of 8);
    # null: constant
    ds_decay_kimg: Annotated[float, Field(gt=0)] | None = 800.0
    r1_gamma: Annotated[float, Field(ge=0)] = 1.0  # R1 on reals, every step: γ/2·‖∇D‖²
    lr: Annotated[float, Field(gt=0)] = 1e-4  # G, style encoder and D
    mapping_lr: Annotated[float, Field(gt=0)] = 1e-6  # the mapping network
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (
        0.0,
        0.99,
    )
    weight_decay: Annotated[float, Field(ge=0)] = 1e-4
    # probability of a random resized crop of a real image (scale 0.8-1, ratio 0.9-1.1)
    random_crop: Probability = 0.5
    # real images kept in G for sample() (grids, evaluate, render): the first batch's
    sample_sources: Annotated[int, Field(ge=1, le=64)] = 8


class TrainParams(Section):
    model: Literal["lightweight", "stylegan2", "dcgan", "progan", "stargan2"] = "lightweight"
    data: str = "data/dataset"  # a dataset folder, a dataset.zip, or a folder holding one
    image_size: Annotated[int, Field(ge=16, le=1024)] = 256
    steps: StepCount = 150_000  # optimizer steps of G
    batch_size: BatchSize = 64  # per optimizer step, over all GPUs and accumulation rounds
    accumulate: Annotated[int, Field(ge=1, le=4096)] = 1  # gradient accumulation rounds per step
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    channels_last: bool = True
    compile: bool = False
    mirror: bool = False  # random x-flips of real images, on the fly
    balance_classes: bool = False  # draw every class equally often (a labelled dataset)
    ema: EmaParams = EmaParams()
    # D's augmentation: auto picks the model's (lightweight: diffaugment, stylegan2: ada)
    augment: Literal["auto", "diffaugment", "ada", "none"] = "auto"
    aug: AugParams = AugParams()
    ada: AdaParams = AdaParams()
    seed: NonNegativeInt = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    workers: Workers = 2  # data-loading processes
    threads: Threads = "auto"  # torch CPU threads (pipeline.devices.cpu_threads), CPU runs
    checkpoint_every: PositiveInt = 1000
    sample_every: PositiveInt = 1000
    # steps between G_ema snapshots (data/train/snapshots/step-NNNNNNNN.pt, for render's
    # progress strip and evaluating earlier points of a run); null: none
    snapshot_every: PositiveInt | None = 10_000
    log_every: PositiveInt = 50
    eval_every: Annotated[float, Field(ge=0)] = 0  # kimg between cheap FIDs; 0: none
    eval_images: Annotated[int, Field(ge=2, le=1_000_000)] = 5000  # per cheap FID (and reals)
    grid: tuple[GridSide, GridSide] = (4, 8)  # sample grid rows, cols
    nan_tolerance: PositiveInt = 10
    nan_lr_factor: Annotated[float, Field(gt=0, le=1)] = 0.5
    resume_from: str | None = None  # a checkpoint to start from (transfer learning)
    lightweight: LightweightParams = LightweightParams()
    stylegan2: StyleGAN2Params = StyleGAN2Params()
    dcgan: DCGANParams = DCGANParams()
    progan: ProGANParams = ProGANParams()
    stargan2: StarGAN2Params = StarGAN2Params()

    @model_validator(mode="after")
    def _divisible_batch(self) -> TrainParams:
        if self.batch_size % self.accumulate:
            raise ValueError(
                f"batch_size {self.batch_size} must be a multiple of accumulate {self.accumulate}"
            )
        if self.image_size & (self.image_size - 1):
            raise ValueError(f"image_size {self.image_size} must be a power of two")
        if self.model in ("dcgan", "progan"):
            section = getattr(self, self.model)
            if self.image_size <= section.latent_size:
                raise ValueError(
                    f"{self.model}.latent_size {section.latent_size} must be below image_size "
                    f"{self.image_size}"
                )
        stages = self.progan.stages
        if self.model == "progan" and stages is not None and stages[-1].size != self.image_size:
            raise ValueError(
                f"progan.stages: the stages end at {stages[-1].size} px but image_size is "
                f"{self.image_size} (leave stages null to grow to image_size, or end them at "
                f"{self.image_size})"
            )
        return self

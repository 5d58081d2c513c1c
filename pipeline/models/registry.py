"""The models ``train.model`` can name: one row each in ``MODELS`` (its class and its params
section) and the params sections themselves.

A new model is its own file in ``pipeline/models/`` (a ``GANModel`` subclass), its params
class and row here, and its section in params.yaml: ``train.model``'s choices, the
``train.<name>`` sections, ``build_model``, the checks of params.yaml and the tests all read
this table. It imports no torch (every stage validates params.yaml, and most never train):
a row names its class as ``module:Class``, imported only when the model is built.
"""

from __future__ import annotations

import importlib
import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from pipeline.param_types import NonNegativeInt, PositiveInt, Probability, Section

if TYPE_CHECKING:
    from pipeline.models.base import GANModel


class ModelParams(Section):
    """A model's section of ``train`` (``train.<name>``), with what the engine asks of it."""

    # keys added after runs existed, with the value that means what those runs did: left
    # out of the params hash at that value, so upgrading does not set old runs aside
    later_keys: ClassVar[dict[str, Any]] = {}

    def check(self, image_size: int) -> None:
        """Raise ValueError if this section cannot train at ``image_size``."""

    @classmethod
    def resolved(cls, section: dict, image_size: Any) -> dict:
        """The section's dump as the params hash sees it: a null that stands for a value
        computed from the rest is replaced by that value (so both are one run)."""
        return section


class LightweightParams(ModelParams):
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


class StyleGAN2Params(ModelParams):
    """StyleGAN2 and its ADA training setup. Keys left null take ``config``'s value."""

    later_keys: ClassVar[dict[str, Any]] = {"conditional": "auto"}

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


class DCGANParams(ModelParams):
    """DCGAN (Radford et al. 2015) with PokeGAN's training tricks; defaults are PokeGAN's
    main.py (which trained with batch 32: train.batch_size)."""

    later_keys: ClassVar[dict[str, Any]] = {
        "d_kernel": None, "init": "normal", "g_activation": "relu", "g_dropout": 0.0,
    }  # fmt: skip

    latent_dim: PositiveInt = 96
    latent_size: Annotated[int, Field(ge=2, le=64)] = 4  # G projects z to this map size
    channels: PositiveInt = 64  # width at full resolution (ngf/ndf), doubling per halving
    channel_max: PositiveInt = 512
    upsample: Literal["transposed", "nearest"] = "transposed"  # nearest: upsample + conv
    g_kernel: Literal[3, 5] = 5  # G's kernel
    d_kernel: Literal[3, 5] | None = None  # D's kernel; null: g_kernel's (PokeGAN's D: 3)
    # PokeGAN's choices by default (they won the race against its trainer, docs/quality.md);
    # the paper's: init normal, g_activation relu, g_dropout 0 (later_keys: what runs from
    # before these keys did). weights: kaiming (PokeGAN's He normal, fan-out, convolutions
    # only; linear layers keep torch's default) or normal (the paper's N(0, 0.02))
    init: Literal["normal", "kaiming"] = "kaiming"
    g_activation: Literal["relu", "leaky_relu"] = "leaky_relu"  # G's (PokeGAN: LeakyReLU 0.2)
    g_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.3  # in G's blocks (PokeGAN: dropout's)
    norm: DCGANNorm = "batch"
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.3  # in D
    # ProGAN's minibatch standard deviation before D's logit: the group size; 0: off
    minibatch_std: Annotated[int, Field(ge=0)] = 0
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

    def check(self, image_size: int) -> None:
        if image_size <= self.latent_size:
            raise ValueError(
                f"latent_size {self.latent_size} must be below image_size {image_size}"
            )


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


def stage_ends(kimgs: Iterable[float]) -> list[int]:
    """Where each stage of a growth schedule ends, in images shown (its kimg summed)."""
    return list(itertools.accumulate(round(kimg * 1000) for kimg in kimgs))


def stage_at(ends: list[int], nimg: int) -> int:
    """The stage that runs once ``nimg`` images were shown (the last runs on to the end)."""
    return next((i for i, end in enumerate(ends) if nimg < end), len(ends) - 1)


class ProGANParams(DCGANParams):
    """Progressive DCGAN (PokeGAN): the DCGAN grows one block per stage."""

    # null: PokeGAN's schedule up to train.image_size (default_growth); or a list of
    # {size, kimg, lr} whose sizes double and end at train.image_size
    stages: list[ProStage] | None = None
    # train only the newest block (PokeGAN freezes its old blocks; ours grow at the fine end,
    # where freezing lost the race: docs/quality.md)
    freeze_previous: bool = False
    fade_kimg: Annotated[float, Field(ge=0)] = 0.0  # fade new blocks in (ProGAN); 0: switch

    def check(self, image_size: int) -> None:
        super().check(image_size)
        if self.stages is not None and self.stages[-1].size != image_size:
            raise ValueError(
                f"stages: the stages end at {self.stages[-1].size} px but image_size is "
                f"{image_size} (leave stages null to grow to image_size, or end them at "
                f"{image_size})"
            )

    @classmethod
    def resolved(cls, section: dict, image_size: Any) -> dict:
        """``stages: null`` as the list it stands for (``default_growth``)."""
        latent = section.get("latent_size")
        if (
            section.get("stages") is None
            and isinstance(image_size, int)
            and isinstance(latent, int)
        ):
            return {**section, "stages": default_growth(image_size, latent)}
        return section

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


class StarGAN2Params(ModelParams):
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


@dataclass(frozen=True)
class ModelSpec:
    """One row of the table: ``train.model``'s name, the ``GANModel`` subclass (as
    ``module:Class``, imported when built) and its params section (``train.<name>``)."""

    name: str
    model: str
    params: type[ModelParams]
    summary: str

    def load(self) -> type[GANModel]:
        module, _, cls = self.model.partition(":")
        return getattr(importlib.import_module(module), cls)


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "lightweight", "pipeline.models.lightweight:LightweightGAN", LightweightParams,
            "Lightweight GAN (FastGAN): few-shot, fast",
        ),
        ModelSpec(
            "stylegan2", "pipeline.models.stylegan2:StyleGAN2", StyleGAN2Params,
            "StyleGAN2(-ADA): W space, style mixing, projection",
        ),
        ModelSpec("dcgan", "pipeline.models.dcgan:DCGAN", DCGANParams, "DCGAN (PokeGAN)"),
        ModelSpec(
            "progan", "pipeline.models.progan:ProGAN", ProGANParams,
            "progressive DCGAN (PokeGAN)",
        ),
        ModelSpec(
            "stargan2", "pipeline.models.stargan2:StarGAN2", StarGAN2Params,
            "StarGAN v2: image-to-image translation between domains",
        ),
    )
}  # fmt: skip
DEFAULT_MODEL = "lightweight"


def model_spec(name: str) -> ModelSpec:
    """The row of ``train.model``'s ``name``; ValueError naming the choices otherwise."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: use one of {', '.join(MODELS)}")
    return MODELS[name]

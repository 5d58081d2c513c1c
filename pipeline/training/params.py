"""The ``train`` section of params.yaml: the engine's settings and one sub-section per model."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, create_model, model_validator

from pipeline.models.registry import (  # noqa: F401 (the sections' old home)
    DEFAULT_MODEL,
    MODELS,
    DCGANParams,
    LightweightParams,
    ModelParams,
    ProGANParams,
    ProStage,
    StarGAN2Params,
    StyleGAN2Params,
    default_growth,
)
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


class EngineParams(Section):
    """The engine's keys of ``train``; ``TrainParams`` adds ``model`` and every model's
    section from the table of models (``pipeline.models.registry.MODELS``)."""

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
    # D's augmentation: auto picks the model's own (its class's default_augment)
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

    @model_validator(mode="after")
    def _divisible_batch(self) -> EngineParams:
        if self.batch_size % self.accumulate:
            raise ValueError(
                f"batch_size {self.batch_size} must be a multiple of accumulate {self.accumulate}"
            )
        if self.image_size & (self.image_size - 1):
            raise ValueError(f"image_size {self.image_size} must be a power of two")
        try:
            self.model_section().check(self.image_size)
        except ValueError as exc:
            raise ValueError(f"{self.model}.{exc}") from None
        return self

    def model_section(self) -> ModelParams:
        """The chosen model's section (``train.<model>``)."""
        return getattr(self, self.model)


# ``model`` and one section per row of the table, built from it: a new model adds no key here
TrainParams = create_model(
    "TrainParams",
    __base__=EngineParams,
    __module__=__name__,
    model=(Literal[tuple(MODELS)], DEFAULT_MODEL),
    **{name: (spec.params, spec.params()) for name, spec in MODELS.items()},
)
TrainParams.__doc__ = (
    "The ``train`` section: the engine's keys, ``model`` and every model's section."
)

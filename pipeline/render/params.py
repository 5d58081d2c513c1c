"""The ``render`` section of params.yaml: what to draw from a trained generator, and how."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from pipeline.param_types import BatchSize, GridSide, NonNegativeInt, PositiveInt, Section

Seeds = Annotated[list[NonNegativeInt], Field(min_length=1, max_length=1000)]
Psi = Annotated[float, Field(ge=0, le=2)]


class MixingParams(Section):
    """Style mixing: each cell takes its row seed's ws below ``crossover`` (coarse styles)
    and its column seed's ws from ``crossover`` on (middle and fine styles)."""

    rows: Seeds = Field(default_factory=lambda: [85, 100, 75, 458, 1500])
    cols: Seeds = Field(default_factory=lambda: [55, 821, 1789, 293])
    # ws index where the column seed takes over: 4 keeps the 4-8 px layers of the row seed
    crossover: PositiveInt = 4


class DirectionsParams(Section):
    """Latent directions (GANSpace, SeFa): one row of edits per direction."""

    count: Annotated[int, Field(ge=1, le=512)] = 5  # the top-k directions rendered
    steps: Annotated[int, Field(ge=2, le=1000)] = 7  # images per row, -strength to +strength
    strength: Annotated[float, Field(gt=0)] = 3.0  # in standard deviations of W along it
    seed: NonNegativeInt = 0  # the image that is edited
    # ws indices edited (SeFa: whose modulation weights it factorises); null: all
    layers: list[NonNegativeInt] | None = None


class ProjectParams(Section):
    """Projection of real images into W or W+ (Karras et al. 2020, appendix D)."""

    targets: Annotated[int, Field(ge=0, le=10_000)] = 4  # real images projected, evenly spaced
    space: Literal["w", "w_plus"] = "w"
    # optimisation steps; auto: 1,000 on CUDA (the paper's), CPU_PROJECT_STEPS on a CPU,
    # where 1,000 steps of a 32 px StyleGAN2 took hours
    steps: Annotated[int, Field(ge=1, le=1_000_000)] | Literal["auto"] = "auto"
    lr: Annotated[float, Field(gt=0)] = 0.1
    lr_rampup: Annotated[float, Field(ge=0, le=1)] = 0.05  # fraction of steps
    lr_rampdown: Annotated[float, Field(ge=0, le=1)] = 0.25  # fraction of steps
    initial_noise: Annotated[float, Field(ge=0)] = 0.05  # noise on w, × W's std, ramped to 0
    noise_ramp: Annotated[float, Field(gt=0, le=1)] = 0.75  # fraction of steps
    noise_regularize: Annotated[float, Field(ge=0)] = 1e5  # weight of the noise maps' penalty
    loss: Literal["auto", "lpips", "pixel_inception"] = "auto"
    pixel_weight: Annotated[float, Field(ge=0)] = 1.0  # pixel_inception: MSE weight
    feature_weight: Annotated[float, Field(ge=0)] = 1.0  # pixel_inception: features weight
    video_every: PositiveInt = 10  # steps between frames of the optimisation video
    lpips_vgg: str | None = None
    lpips_lin: str | None = None
    weights_dir: str | None = None
    download_weights: bool = True


# Every part render can draw, in the order it draws them (a model draws those it supports).
RenderPart = Literal[
    "fakes", "reals", "progress", "interpolation_z", "class_interpolation", "truncation",
    "mixing", "interpolation_w", "ganspace", "sefa", "projection", "translation",
    "translation_reference",
]  # fmt: skip
GPU_PROJECT_STEPS = 1000
# on the CPU a step of a 32 px StyleGAN2 at the shipped widths (4 targets, G and Inception
# forward and backward) took 10-25 s: 20 steps show the optimisation in a few minutes
CPU_PROJECT_STEPS = 20
# video frames per seed-to-seed leg: 60 on CUDA; on the CPU a frame of a 32 px StyleGAN2 at
# the shipped widths took 0.3 s, and the two interpolations' 720 frames four minutes
GPU_FRAMES = 60
CPU_FRAMES = 12


class RenderParams(Section):
    checkpoint: str = "data/train/checkpoints/latest.pt"  # or a snapshot
    parts: list[RenderPart] | None = None  # the parts to draw; null: every one the model can
    mix: bool = False  # true: draw the mix stage's data/mix/mixed.pt instead of checkpoint
    snapshots: str | None = "data/train/snapshots"  # the progress strip's; null: no strip
    data: str = "data/dataset"  # real images: their grid and the projection targets
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: BatchSize = 16
    noise_mode: Literal["random", "const", "none"] = "const"
    grid: tuple[GridSide, GridSide] = (4, 8)  # rows, cols; fakes are seeds 0…rows·cols-1
    seeds: Seeds = Field(default_factory=lambda: [0, 1, 2, 3, 4, 5])
    truncation: list[Psi] = Field(default_factory=lambda: [0.75, 0.5])
    truncation_cutoff: PositiveInt | None = None  # truncate only ws below this index
    # video frames from one seed to the next; auto: GPU_FRAMES on CUDA, CPU_FRAMES on a CPU
    frames: Annotated[int, Field(ge=1, le=100_000)] | Literal["auto"] = "auto"
    fps: Annotated[int, Field(ge=1, le=240)] = 30
    # a class-conditional G: images per class-to-class step of the class interpolation
    class_steps: Annotated[int, Field(ge=1, le=1000)] = 6
    progress_columns: Annotated[int, Field(ge=2, le=1000)] = 16  # snapshots in the progress strip
    w_samples: Annotated[int, Field(ge=2, le=10_000_000)] = (
        10_000  # W samples: PCA, W's mean and std
    )
    mixing: MixingParams = MixingParams()
    directions: DirectionsParams = DirectionsParams()
    project: ProjectParams = ProjectParams()

    @field_validator("seeds")
    @classmethod
    def _two_seeds_to_interpolate(cls, value: list[int]) -> list[int]:
        if len(value) < 2:
            raise ValueError("at least two seeds: the interpolation goes from one to the next")
        return value

    def wants(self, part: str) -> bool:
        return self.parts is None or part in self.parts

    def for_device(self, device_type: str) -> RenderParams:
        """``project.steps: auto`` and ``frames: auto`` resolved for the device the stage
        runs on."""
        cuda = device_type == "cuda"
        resolved = self
        if self.project.steps == "auto":
            steps = GPU_PROJECT_STEPS if cuda else CPU_PROJECT_STEPS
            project = self.project.model_copy(update={"steps": steps})
            resolved = resolved.model_copy(update={"project": project})
        if self.frames == "auto":
            resolved = resolved.model_copy(update={"frames": GPU_FRAMES if cuda else CPU_FRAMES})
        return resolved

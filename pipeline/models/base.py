"""What a GAN must provide to the training engine, and the randomness the engine controls.

A model is its networks, its optimizers and its losses; it makes its own fakes from the real
batch it is given (so image-to-image models fit as well as z→G ones) and samples itself. The
loop, data, precision, EMA, augmentation, checkpoints, logging and sampling grids belong to the
engine (``pipeline.training``), written once.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

import torch
from torch import nn

from pipeline.augment import BatchPart
from pipeline.training.ema import ema_state


class Batch(NamedTuple):
    """This process's rows of one real (micro-)batch, on the training device."""

    images: torch.Tensor  # N×3×H×W in [-1, 1] (mirrored by the engine when train.mirror)
    labels: torch.Tensor | None = None  # N class indices (int64); None: unlabelled data


@dataclass
class StepContext:
    """What the engine hands a loss: randomness for this process's rows of the batch, and
    where training stands (schedules and fade-ins read ``step`` and ``kimg``)."""

    generator: torch.Generator  # CPU generator in the same state on every rank
    part: BatchPart  # this rank's rows of the global (micro-)batch
    rows: int  # how many rows this rank has
    augment: Callable[[torch.Tensor], torch.Tensor]  # D's augmentation for this step
    step: int = 0  # optimizer steps of G done before this one
    kimg: float = 0.0  # thousands of real images shown to D before this step
    # values to log: detached tensors (read only at log time: no GPU sync per step) or floats
    logs: dict[str, torch.Tensor | float] = field(default_factory=dict)

    def latents(self, dim: int, device) -> torch.Tensor:
        """Standard normal latents (N×dim) for this rank's rows, on ``device``."""
        return self.normal(dim).to(device)

    def draw(self, *shape: int) -> torch.Tensor:
        """Uniform numbers for the global batch, this rank's rows (on the CPU)."""
        values = torch.rand((self.part.total, *shape), generator=self.generator)
        return values[self.part.start : self.part.start + self.rows]

    def draw_shared(self, *shape: int) -> torch.Tensor:
        """Uniform numbers that are the same for the whole batch and every rank."""
        return torch.rand(shape, generator=self.generator)

    def normal(self, *shape: int) -> torch.Tensor:
        """Standard normal numbers for the global batch, this rank's rows (on the CPU)."""
        values = torch.randn((self.part.total, *shape), generator=self.generator)
        return values[self.part.start : self.part.start + self.rows]

    def normal_on(self, device, *shape: int) -> torch.Tensor:
        """Like ``normal`` but made on ``device`` (large draws: see ``device_normal``)."""
        values = device_normal(self.generator, (self.part.total, *shape), device)
        return values[self.part.start : self.part.start + self.rows]


class DLoss(NamedTuple):
    """What ``d_loss`` returns: the loss, and D's raw outputs on this rank's real images,
    which the engine watches for adaptive augmentation (sign(D(real)) drives ADA's p)."""

    loss: torch.Tensor
    real_logits: torch.Tensor


def device_normal(
    generator: torch.Generator, shape: tuple[int, ...], device, dtype=torch.float32
) -> torch.Tensor:
    """Normal numbers made on ``device`` from a seed drawn from the (CPU) ``generator``:
    as reproducible as drawing them on the CPU, without generating and copying megabytes
    per step there (noise maps are N×1×H×W per layer)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    device_generator = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(shape, generator=device_generator, device=device, dtype=dtype)


class NoiseSource:
    """Per-pixel noise for noise-injection layers, drawn like everything else the engine
    draws: for the global batch from the shared generator, then sliced for this rank."""

    def __init__(self, generator: torch.Generator, part: BatchPart, size: int):
        self.generator, self.part, self.size = generator, part, size

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        shape = (self.part.total, 1, *like.shape[2:])
        noise = device_normal(self.generator, shape, like.device, like.dtype)
        rows = like.shape[0]  # ``size``, or fewer (path-length regularisation's batch)
        return noise[self.part.start : self.part.start + rows]


NoiseMode = str  # "random" (fresh noise), "const" (a fixed map per layer) or "none"
NOISE_MODES = ("random", "const", "none")


class NoiseInjection(nn.Module):
    """Add learned-scale Gaussian noise per pixel (StyleGAN's noise inputs).

    ``mode`` picks the noise at sampling time: ``random`` (the engine's ``source`` while
    training, else fresh noise), ``const`` (a fixed map drawn once per layer and saved with
    the weights; needs ``resolution``) or ``none``.
    """

    def __init__(self, resolution: int | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.source: NoiseSource | None = None  # set by the engine while training
        self.mode: NoiseMode = "random"
        if resolution is not None:
            self.register_buffer("const", torch.randn(1, 1, resolution, resolution))

    def noise(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.mode == "none":
            return None
        if self.mode == "const" and hasattr(self, "const"):
            return self.const.to(x.dtype)
        if self.source is not None:
            return self.source(x)
        return torch.randn(x.shape[0], 1, *x.shape[2:], device=x.device, dtype=x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        noise = self.noise(x)
        return x if noise is None else x + self.weight.to(x.dtype) * noise


def set_noise_source(module: nn.Module, source: NoiseSource | None) -> None:
    for layer in module.modules():
        if isinstance(layer, NoiseInjection):
            layer.source = source


def set_noise_mode(module: nn.Module, mode: NoiseMode) -> None:
    if mode not in NOISE_MODES:
        raise ValueError(f"noise mode {mode!r}: use one of {', '.join(NOISE_MODES)}")
    for layer in module.modules():
        if isinstance(layer, NoiseInjection):
            layer.mode = mode


class MinibatchStd(nn.Module):
    """Append the standard deviation over groups of samples (ProGAN): D sees a batch's
    variety, so a G that makes one image for every z is easy to tell apart. Used by
    StyleGAN2's D and, with ``minibatch_std``, by DCGAN's and progan's."""

    def __init__(self, group_size: int):
        super().__init__()
        self.group_size = group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        group = min(self.group_size, n)
        while n % group:
            group -= 1
        y = x.float().reshape(group, -1, c, h, w)
        y = (y.var(0, unbiased=False) + 1e-8).sqrt().mean((1, 2, 3))  # per group column
        y = y.reshape(-1, 1, 1, 1).repeat(group, 1, h, w)
        return torch.cat([x, y.to(x.dtype)], 1)


def has_mapping(G: nn.Module) -> bool:
    """True for style-based generators (a mapping network to W, then synthesis).

    Such a G has ``mapping(z, truncation_psi=1, truncation_cutoff=None) -> ws`` (N×num_ws×
    w_dim), ``synthesis(ws) -> images``, a tracked ``w_avg`` buffer and ``num_ws``/``w_dim``,
    and ``G(z, truncation_psi, truncation_cutoff)`` is ``synthesis(mapping(...))``. Other
    generators are plain ``G(z) -> images``: no truncation, no W space.
    """
    return all(hasattr(G, name) for name in ("mapping", "synthesis", "w_avg", "num_ws"))


class Capability(StrEnum):
    """What a model can do beyond drawing images from latents, declared on its class
    (``GANModel.capabilities``): evaluate, render and translate read the declaration instead
    of guessing from the model's name or attributes."""

    # G is style-based: mapping(z) → ws, synthesis(ws), w_avg (truncation, the W-space
    # renders, projection, PPL in W); see ``has_mapping``
    W_SPACE = "w_space"
    # G.modulation_weights(): its style layers' weights (render's SeFa directions)
    STYLE_WEIGHTS = "style_weights"
    # image-to-image between the dataset's domains: ``translate(images, styles)``,
    # ``mapping(z, domains)`` and ``style_encoder(images, domains)`` on the model (the
    # translate stage, render's translation grids, evaluate's translation metrics)
    TRANSLATION = "translation"


# What a model declaring a capability must have once built: (on which object, members).
CAPABILITY_MEMBERS: dict[Capability, tuple[str, tuple[str, ...]]] = {
    Capability.W_SPACE: ("G", ("mapping", "synthesis", "w_avg", "num_ws")),
    Capability.STYLE_WEIGHTS: ("G", ("modulation_weights",)),
    Capability.TRANSLATION: ("model", ("translate", "mapping", "style_encoder")),
}


class MissingCapability(ValueError):
    """A stage asked a model for something its class does not declare."""


def capabilities_of(source) -> frozenset[Capability]:
    """What ``source`` can do: a model's (or a ``TrainedGenerator``'s) declaration; for a
    bare generator built in code (no model around it: tests, benches), what its members
    show, as no class declares them."""
    if not isinstance(source, nn.Module) or isinstance(source, GANModel):
        return source.capabilities
    shown = set()
    if has_mapping(source):
        shown.add(Capability.W_SPACE)
        if callable(getattr(source, "modulation_weights", None)):
            shown.add(Capability.STYLE_WEIGHTS)
    return frozenset(shown)


class GANModel(nn.Module):
    """A generator ``G``, a discriminator ``D`` (and any other networks) and their losses.

    Each step the engine hands the model this process's rows of a real ``Batch``: ``d_loss``
    returns a ``DLoss`` (the loss, a mean over the rows, and D's logits on the reals, which
    the engine's augmenter watches), ``g_loss`` a scalar loss; both fill ``ctx.logs``. The
    G step sees the same real batch as the D step before it (no extra data is read). The
    engine does backward, gradient sync, optimizer steps, EMA, augmentation and the rest.

    The default ``fakes`` keeps the classic z→G(z) (with the batch's labels for a
    conditional G); an image-to-image model overrides it or ignores it.
    """

    name: str = ""
    latent_dim: int = 0
    num_classes: int = 0  # > 0: conditional (G and D take class labels)
    G: nn.Module
    D: nn.Module
    default_augment: str = "diffaugment"  # train.augment: auto picks this
    # Lazy regularisation: every N steps the engine runs d_reg_loss / g_reg_loss as an extra
    # optimizer step (None: the model has none).
    d_reg_interval: int | None = None
    g_reg_interval: int | None = None
    # which of ``optimizers()`` the D step and the G step drive (None: every other one)
    d_optimizers: tuple[str, ...] = ("D",)
    g_optimizers: tuple[str, ...] | None = None
    capabilities: frozenset[Capability] = frozenset()  # beyond z → image (``Capability``)

    def can(self, capability: Capability) -> bool:
        return capability in self.capabilities

    def require(self, capability: Capability, what: str) -> None:
        """Stop, naming the model and what it lacks, unless it declares ``capability``."""
        if capability not in self.capabilities:
            raise MissingCapability(
                f"{self.name} cannot {what}: it does not declare {capability.value} "
                f"(GANModel.capabilities)"
            )

    def check_capabilities(self) -> None:
        """Fail loudly when a declared capability's members are missing (the engine calls
        this on every model it builds), not later inside evaluate or render."""
        for capability in self.capabilities:
            owner, members = CAPABILITY_MEMBERS[capability]
            target = self if owner == "model" else getattr(self, owner)
            missing = [name for name in members if not hasattr(target, name)]
            if missing:
                raise TypeError(
                    f"{type(self).__name__} declares {capability.value} but its {owner} has "
                    f"no {', '.join(missing)}"
                )

    def sampling_note(self) -> str | None:
        """A caveat about samples drawn now (a progressive model not grown to full size),
        which evaluate reports as a warning; None: none."""
        return None

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Optimizers by name; the checkpoint keeps each under its name. A model with
        per-group learning rates (a slower mapping network) gives param groups."""
        raise NotImplementedError

    def lr_factors(self, kimg: float) -> dict[str, float]:
        """Learning-rate multipliers by optimizer name at ``kimg`` (a schedule, such as a
        progressive model's per-stage rates); missing names keep their optimizer's lr."""
        return {}

    def trained_modules(self) -> dict[str, nn.Module]:
        """The networks a checkpoint saves and restores, by name (not loss networks with
        fixed weights, such as LPIPS)."""
        return {"G": self.G, "D": self.D}

    def d_loss(self, batch: Batch, ctx: StepContext) -> DLoss:
        raise NotImplementedError

    def g_loss(self, batch: Batch, ctx: StepContext) -> torch.Tensor:
        raise NotImplementedError

    def fakes(self, batch: Batch, ctx: StepContext) -> torch.Tensor:
        """G's images for this step: latents drawn by the engine's generator, the real
        batch's labels for a conditional G (so fakes follow the data's class balance)."""
        z = ctx.latents(self.latent_dim, batch.images.device)
        return self.generate(z, ctx, batch.labels if self.num_classes else None)

    def generate(
        self, z: torch.Tensor, ctx: StepContext, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """G's images while training (a model may add style mixing and statistics)."""
        return self.G(z) if labels is None else self.G(z, labels)

    def ema_modules(self) -> dict[str, nn.Module]:
        """The modules whose moving average the engine keeps and samples with, by name.
        ``G``'s is the checkpoint's ``G_ema``; any other's goes under ``ema/<name>``."""
        return {"G": self.G}

    def load_ema(self, checkpoint: dict) -> None:
        """Load a checkpoint's averaged weights into this model's own modules (sampling)."""
        for name, module in self.ema_modules().items():
            module.load_state_dict(ema_state(checkpoint, name))

    def sample(
        self,
        z: torch.Tensor,
        labels: torch.Tensor | None = None,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
    ) -> torch.Tensor:
        """Images in [-1, 1] for latents ``z`` (N×latent_dim), with class ``labels`` (N
        ints) for a conditional model: what training grids, evaluate and render call."""
        if labels is not None and not self.num_classes:
            raise ValueError(f"{self.name} is not conditional: sample it without labels")
        if self.num_classes:
            if labels is None:
                raise ValueError(f"{self.name} is conditional: give a class per latent")
            return self.G(z, labels, truncation_psi=truncation_psi,
                          truncation_cutoff=truncation_cutoff)  # fmt: skip
        if truncation_psi == 1.0 and truncation_cutoff is None:
            return self.G(z)
        if not self.can(Capability.W_SPACE):
            raise MissingCapability(
                f"{self.name} has no mapping network: truncation needs a model with a W space "
                "(use truncation 1)"
            )
        return self.G(z, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)

    def d_reg_loss(self, batch: Batch, ctx: StepContext) -> torch.Tensor:
        raise NotImplementedError

    def g_reg_loss(self, batch: Batch, ctx: StepContext) -> torch.Tensor:
        raise NotImplementedError


def with_modules(model: GANModel, replacements: dict[str, nn.Module]) -> GANModel:
    """A view of ``model`` whose named child modules are swapped (its EMA networks, for
    sampling) and everything else shared: no second copy of D or of the loss networks."""
    view = copy.copy(model)
    view._modules = dict(model._modules)  # a shallow copy shares these dicts: copy them
    view._parameters = dict(model._parameters)
    view._buffers = dict(model._buffers)
    for name, module in replacements.items():
        view._modules[name] = module
    return view

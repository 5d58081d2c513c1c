"""Differentiable augmentation for the discriminator (DiffAugment: Zhao et al., NeurIPS 2020).

The same augmentation is applied to real and fake images before D sees them, so D cannot
memorise a small dataset, and gradients flow through it back to G.

Written here rather than with kornia's augmentation modules: DiffAugment's colour ops work on
[-1, 1] images without clamping and its saturation is a scale around the per-pixel channel
mean (kornia's clamp to [0, 1] and go through HSV), and every random number is drawn from the
engine's own generator for the whole global batch. That keeps training bit-identical after a
resume and identical between one process and DDP ranks that each take a slice of the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

Draw = Callable[..., torch.Tensor]


class BatchPart(NamedTuple):
    """This process's rows of the global batch: random numbers are drawn for all ``total``
    rows and rows ``start:start+n`` are used, so every rank sees the numbers one process
    with the whole batch would."""

    total: int
    start: int


class BatchDraws:
    """Uniform and normal numbers drawn for the global batch from the engine's CPU
    generator, this rank's ``n`` rows, moved to ``device``."""

    def __init__(self, generator: torch.Generator, part: BatchPart, n: int, device):
        self.generator, self.part, self.n, self.device = generator, part, n, device

    def _rows(self, values: torch.Tensor) -> torch.Tensor:
        return values[self.part.start : self.part.start + self.n].to(self.device)

    def uniform(self, *shape: int) -> torch.Tensor:
        return self._rows(torch.rand((self.part.total, *shape), generator=self.generator))

    def normal(self, *shape: int) -> torch.Tensor:
        return self._rows(torch.randn((self.part.total, *shape), generator=self.generator))

    def gate(self, values: torch.Tensor, p: float, neutral: float) -> torch.Tensor:
        """Each image's value with probability p, else the value that does nothing."""
        return torch.where(self.uniform() < p, values, torch.full_like(values, neutral))


def _brightness(x: torch.Tensor, draw: Draw) -> torch.Tensor:
    return x + (draw(1, 1, 1) - 0.5)


def _saturation(x: torch.Tensor, draw: Draw) -> torch.Tensor:
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (draw(1, 1, 1) * 2) + mean


def _contrast(x: torch.Tensor, draw: Draw) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (draw(1, 1, 1) + 0.5) + mean


def _shifts(x: torch.Tensor, draw: Draw, ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer shifts in [-ratio·size, ratio·size] per image, for rows and columns."""
    height, width = x.shape[2:]
    max_y, max_x = int(height * ratio + 0.5), int(width * ratio + 0.5)
    shift_y = (draw() * (2 * max_y + 1)).floor().long() - max_y
    shift_x = (draw() * (2 * max_x + 1)).floor().long() - max_x
    return shift_y, shift_x


def _gather(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``out[n, c, i, j] = x[n, c, rows[n, i], cols[n, j]]``."""
    batch = torch.arange(x.shape[0], device=x.device)[:, None, None]
    return x.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def _translation(x: torch.Tensor, draw: Draw, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by whole pixels; what moves in is zero (mid-grey in [-1, 1])."""
    height, width = x.shape[2:]
    shift_y, shift_x = _shifts(x, draw, ratio)
    padded = F.pad(x, (1, 1, 1, 1))  # a zero border that out-of-range indices clamp to
    rows = (torch.arange(height, device=x.device) + 1 - shift_y[:, None]).clamp(0, height + 1)
    cols = (torch.arange(width, device=x.device) + 1 - shift_x[:, None]).clamp(0, width + 1)
    return _gather(padded, rows, cols)


def _offset(x: torch.Tensor, draw: Draw, ratio: float = 1.0) -> torch.Tensor:
    """Roll each image by up to ``ratio`` of its size, wrapping around (lightweight-gan's
    ``offset``)."""
    height, width = x.shape[2:]
    shift_y, shift_x = _shifts(x, draw, ratio / 2)
    rows = (torch.arange(height, device=x.device) - shift_y[:, None]) % height
    cols = (torch.arange(width, device=x.device) - shift_x[:, None]) % width
    return _gather(x, rows, cols)


def _cutout(x: torch.Tensor, draw: Draw, ratio: float = 0.5) -> torch.Tensor:
    """Zero a square of ``ratio`` × the image size at a random place in each image."""
    height, width = x.shape[2:]
    size_y, size_x = int(height * ratio + 0.5), int(width * ratio + 0.5)
    top = (draw() * (height + 1 - size_y % 2)).floor().long() - size_y // 2
    left = (draw() * (width + 1 - size_x % 2)).floor().long() - size_x // 2
    ys = torch.arange(height, device=x.device)[None, :]
    xs = torch.arange(width, device=x.device)[None, :]
    in_rows = (ys >= top[:, None]) & (ys < top[:, None] + size_y)
    in_cols = (xs >= left[:, None]) & (xs < left[:, None] + size_x)
    hole = in_rows[:, :, None] & in_cols[:, None, :]
    return x * (~hole)[:, None].to(x.dtype)


OPS: dict[str, tuple[Callable[[torch.Tensor, Draw], torch.Tensor], ...]] = {
    "color": (_brightness, _saturation, _contrast),
    "translation": (_translation,),
    "cutout": (_cutout,),
    "offset": (_offset,),
}


def diff_augment(
    x: torch.Tensor,
    types: Sequence[str],
    prob: float,
    generator: torch.Generator,
    part: BatchPart | None = None,
) -> torch.Tensor:
    """Augment each image of ``x`` (N×C×H×W, [-1, 1]) with probability ``prob``.

    Random numbers come from ``generator`` (a CPU generator), drawn for the global batch
    described by ``part`` (default: ``x`` is the whole batch).
    """
    if not types or prob <= 0:
        return x
    n = x.shape[0]
    part = part or BatchPart(n, 0)

    draws = BatchDraws(generator, part, n, x.device)

    def draw(*shape: int) -> torch.Tensor:
        return draws.uniform(*shape).to(x.dtype)

    chosen = draw(1, 1, 1) < prob
    out = x
    for name in types:
        for op in OPS[name]:
            out = op(out, draw)
    return torch.where(chosen, out, x)


# -- resampling that R1 can differentiate twice ---------------------------------------------

_PADDING = {"zeros": 0, "border": 1, "reflection": 2}


class _GridSample(torch.autograd.Function):
    """Bilinear ``grid_sample`` whose backward is itself differentiable in the images.

    R1 and the gradient penalty differentiate D's gradient w.r.t. the real images, which
    passes through ADA's warp. On CUDA PyTorch has no derivative for
    ``grid_sampler_2d_backward`` ("derivative ... is not implemented", seen on the H200),
    and kornia's ``warp_affine`` calls ``F.grid_sample`` directly, so no library fits.
    Sampling is linear in the image: the backward w.r.t. the images is the transposed
    sampling, whose own derivative is the sampling again. The grid is drawn, never learnt,
    so second-order terms through the grid are not needed (its first-order gradient is
    still returned)."""

    @staticmethod
    def forward(ctx, images, grid, padding, align_corners):
        ctx.save_for_backward(images, grid)
        ctx.padding, ctx.align_corners = padding, align_corners
        return torch.ops.aten.grid_sampler_2d(images, grid, 0, padding, align_corners)

    @staticmethod
    def backward(ctx, grad_out):
        images, grid = ctx.saved_tensors
        grad_images, grad_grid = _GridSampleBackward.apply(
            grad_out, images, grid, ctx.padding, ctx.align_corners, ctx.needs_input_grad[:2]
        )
        return grad_images, grad_grid, None, None


class _GridSampleBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, grad_out, images, grid, padding, align_corners, mask):
        ctx.save_for_backward(grid)
        ctx.padding, ctx.align_corners = padding, align_corners
        op = torch.ops.aten.grid_sampler_2d_backward
        return op(grad_out, images, grid, 0, padding, align_corners, list(mask))

    @staticmethod
    def backward(ctx, grad_grad_images, _grad_grad_grid):
        (grid,) = ctx.saved_tensors
        grad_grad_out = None
        if ctx.needs_input_grad[0] and grad_grad_images is not None:
            grad_grad_out = _GridSample.apply(
                grad_grad_images, grid, ctx.padding, ctx.align_corners
            )
        return grad_grad_out, None, None, None, None, None


def grid_sample(
    images: torch.Tensor,
    grid: torch.Tensor,
    padding_mode: str = "reflection",
    align_corners: bool = True,
) -> torch.Tensor:
    """``F.grid_sample(images, grid, "bilinear", padding_mode, align_corners)`` that can be
    differentiated twice w.r.t. ``images`` on every device (see ``_GridSample``)."""
    return _GridSample.apply(images, grid.to(images.dtype), _PADDING[padding_mode], align_corners)


# -- ADA: adaptive discriminator augmentation (Karras et al., NeurIPS 2020) -----------------

ADA_STAGES = {"b": "blit", "g": "geometric", "c": "colour"}


def _affine(n: int, device, a=None, b=None, c=None, d=None, tx=None, ty=None) -> torch.Tensor:
    """N×3×3 matrices [[a, b, tx], [c, d, ty], [0, 0, 1]] (missing entries: identity)."""
    m = torch.eye(3, device=device).repeat(n, 1, 1)
    for (i, j), value in {
        (0, 0): a,
        (0, 1): b,
        (1, 0): c,
        (1, 1): d,
        (0, 2): tx,
        (1, 2): ty,
    }.items():
        if value is not None:
            m[:, i, j] = value
    return m


def _rotation(n: int, device, angle: torch.Tensor) -> torch.Tensor:
    cos, sin = angle.cos(), angle.sin()
    return _affine(n, device, cos, -sin, sin, cos)


def _geometric_matrix(draws: BatchDraws, n: int, p: float, size: int, stages: str) -> torch.Tensor:
    """One matrix (normalised coordinates, centre origin, ±1 at the borders) that composes
    the blit and geometric transforms, so the image is resampled once."""
    device = draws.device
    m = torch.eye(3, device=device).repeat(n, 1, 1)
    if "b" in stages:
        flip = draws.gate((draws.uniform() * 2).floor(), p, 0.0)
        m = m @ _affine(n, device, a=1 - 2 * flip)
        quarter = draws.gate((draws.uniform() * 4).floor(), p, 0.0)
        m = m @ _rotation(n, device, quarter * (math.pi / 2))
        # whole-pixel shifts up to 1/8 of the size (2/(size-1) per pixel: ±1 at the centres
        # of the border pixels)
        pixel = 2 / (size - 1)
        tx = draws.gate(((draws.uniform() * 2 - 1) * 0.125 * size).round() * pixel, p, 0.0)
        ty = draws.gate(((draws.uniform() * 2 - 1) * 0.125 * size).round() * pixel, p, 0.0)
        m = m @ _affine(n, device, tx=tx, ty=ty)
    if "g" in stages:
        p_rot = 1 - math.sqrt(1 - min(p, 1.0))  # two rotations: either happens with prob p
        scale = draws.gate(torch.exp2(draws.normal() * 0.2), p, 1.0)
        m = m @ _affine(n, device, a=scale, d=scale)
        angle = draws.gate((draws.uniform() * 2 - 1) * math.pi, p_rot, 0.0)
        m = m @ _rotation(n, device, angle)
        aniso = draws.gate(torch.exp2(draws.normal() * 0.2), p, 1.0)
        m = m @ _affine(n, device, a=aniso, d=1 / aniso)
        angle = draws.gate((draws.uniform() * 2 - 1) * math.pi, p_rot, 0.0)
        m = m @ _rotation(n, device, angle)
        tx = draws.gate(draws.normal() * 0.125 * 2, p, 0.0)  # std 1/8 of the size
        ty = draws.gate(draws.normal() * 0.125 * 2, p, 0.0)
        m = m @ _affine(n, device, tx=tx, ty=ty)
    return m


def _colour_matrix(draws: BatchDraws, n: int, p: float) -> torch.Tensor:
    """One 4×4 matrix per image on (r, g, b, 1): brightness, contrast, luma flip, hue
    rotation about the grey axis and saturation, composed."""
    device = draws.device
    eye = torch.eye(4, device=device)
    grey = torch.tensor([1.0, 1.0, 1.0, 0.0], device=device) / math.sqrt(3)
    along_grey = torch.outer(grey, grey)
    m = eye.repeat(n, 1, 1)
    brightness = draws.gate(draws.normal() * 0.2, p, 0.0)
    shift = eye.repeat(n, 1, 1)
    shift[:, :3, 3] = brightness[:, None]
    m = shift @ m
    contrast = draws.gate(torch.exp2(draws.normal() * 0.5), p, 1.0)
    m = torch.diag_embed(torch.stack([contrast] * 3 + [torch.ones_like(contrast)], 1)) @ m
    flip = draws.gate((draws.uniform() * 2).floor(), p, 0.0)
    m = (eye - 2 * along_grey * flip[:, None, None]) @ m
    theta = draws.gate((draws.uniform() * 2 - 1) * math.pi, p, 0.0)[:, None, None]
    cross = torch.zeros(4, 4, device=device)  # [grey]×, the cross-product matrix
    g = grey[:3]
    cross[:3, :3] = torch.tensor(
        [[0, -g[2], g[1]], [g[2], 0, -g[0]], [-g[1], g[0], 0]], device=device
    )
    rotate = theta.cos() * (eye - along_grey) + theta.sin() * cross + along_grey
    rotate[:, 3, 3] = 1
    m = rotate @ m
    saturation = draws.gate(torch.exp2(draws.normal()), p, 1.0)[:, None, None]
    m = (along_grey + (eye - along_grey) * saturation) @ m
    m[:, 3] = eye[3]
    return m


def ada_augment(
    x: torch.Tensor,
    p: float,
    generator: torch.Generator,
    part: BatchPart | None = None,
    stages: str = "bgc",
) -> torch.Tensor:
    """ADA's augmentation pipeline at strength ``p`` on N×3×H×W images in [-1, 1].

    Each transform is applied to each image with probability ``p`` (the two free rotations
    with 1 − √(1 − p), so that a rotation happens with probability p). ``stages``: ``b``
    blit (x-flip, 90° rotations, whole-pixel shifts), ``g`` geometric (isotropic and
    anisotropic scaling, rotation, fractional shifts), ``c`` colour (brightness, contrast,
    luma flip, hue rotation, saturation). Geometric transforms are composed into one matrix
    and applied by one bilinear resampling with reflection padding (``grid_sample`` above:
    differentiable twice, for R1, on CUDA too); the colour transforms are one 4×4 matrix
    per image written here, since kornia's colour augmentations clamp to [0, 1] and go
    through HSV. NVlabs'
    pipeline also upsamples 2× with a wavelet filter around the warp to limit aliasing;
    this one warps at the image's own size. Random numbers are drawn as ``diff_augment``'s.
    """
    if p <= 0:
        return x
    n, _, height, width = x.shape
    part = part or BatchPart(n, 0)
    # The per-image matrices are built on the CPU (where the numbers are drawn) and moved
    # to the images' device once each.
    draws = BatchDraws(generator, part, n, torch.device("cpu"))
    out = x
    if "b" in stages or "g" in stages:
        m = _geometric_matrix(draws, n, p, height, stages)
        moved = ((m - torch.eye(3)).abs().amax((1, 2)) > 1e-7).to(x.device)
        # m maps each source point to its place in the output (normalised coordinates,
        # ±1 at the border pixels' centres); sampling needs the way back
        back = torch.linalg.inv(m)[:, :2].to(x.device)
        grid = F.affine_grid(back, [n, x.shape[1], height, width], align_corners=True)
        warped = grid_sample(out.float(), grid).to(x.dtype)
        out = torch.where(moved[:, None, None, None], warped, out)
    if "c" in stages:
        c = _colour_matrix(draws, n, p).to(x.device, x.dtype)
        out = torch.einsum("nij,njhw->nihw", c[:, :3, :3], out) + c[:, :3, 3, None, None]
    return out


class Augmenter:
    """D's augmentation, driven by the engine for every model: ``for_step`` gives this step's
    transform (the same for reals and fakes), ``observe`` takes D's logits on the reals and
    ``adjust`` moves ADA's p from them, so no model has to remember to report anything.

    ``kind``: ``diffaugment`` (a schedule of DiffAugment types), ``ada`` (adaptive strength
    p, or ``ada.fixed_p``) or ``none``. ``state_dict`` is what a checkpoint needs to resume.
    """

    def __init__(self, kind: str, aug, ada, batch_size: int, device, world: int = 1):
        self.kind, self.aug, self.ada = kind, aug, ada
        self.batch_size, self.world = batch_size, world
        self.p = ada.fixed_p if ada.fixed_p is not None else ada.initial_p
        # sum of sign(D(real)) and how many outputs it covers since p last moved, kept on
        # the device so that observing costs no sync
        self.stats = torch.zeros(2, device=device)

    @property
    def adaptive(self) -> bool:
        return self.kind == "ada" and self.ada.fixed_p is None

    def for_step(
        self, step: int, generator: torch.Generator, part: BatchPart
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        if self.kind == "diffaugment":
            types, prob = self.aug.types_at(step), self.aug.prob
            return lambda x: diff_augment(x, types, prob, generator, part)
        if self.kind == "ada":
            p, stages = self.p, self.ada.stages
            return lambda x: ada_augment(x, p, generator, part, stages)
        return lambda x: x

    def observe(self, real_logits: torch.Tensor) -> None:
        if self.kind != "ada":
            return
        logits = real_logits.detach().float()
        self.stats += torch.stack([logits.sign().sum(), self.stats.new_tensor(logits.numel())])

    def adjust(self, step: int) -> dict[str, float]:
        """After ``step`` optimizer steps: every ``ada.interval`` steps move p towards
        r_t = E[sign(D(real))] = target, at a speed that would take p from 0 to 1 in
        ``ada.speed_kimg``. Returns r_t to log when p was adjusted."""
        ada = self.ada
        if not self.adaptive or step % ada.interval:
            return {}
        stats = self.stats.clone()
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(stats)
        sign_sum, count = stats.tolist()
        self.stats.zero_()
        if count == 0:
            return {}
        r_t = sign_sum / count
        change = self.batch_size * ada.interval / (ada.speed_kimg * 1000)
        direction = (r_t > ada.target) - (r_t < ada.target)
        self.p = min(max(self.p + direction * change, 0.0), 1.0)
        return {"augment/r_t": r_t}

    def describe(self, step: int) -> dict:
        """The kind and settings in force at ``step`` (checkpoint header, run metrics)."""
        if self.kind == "diffaugment":
            return {"kind": self.kind, "types": self.aug.types_at(step), "prob": self.aug.prob}
        if self.kind == "ada":
            return {"kind": self.kind, "stages": self.ada.stages, "prob": self.p}
        return {"kind": self.kind, "prob": 0.0}

    def state_dict(self) -> dict[str, float]:
        sign_sum, count = self.stats.tolist()
        return {"p": self.p, "sign_sum": sign_sum, "count": int(count)}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.p = state["p"]
        self.stats = self.stats.new_tensor([state["sign_sum"], state["count"]])

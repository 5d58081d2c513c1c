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

    def draw(*shape: int) -> torch.Tensor:
        values = torch.rand((part.total, *shape), generator=generator)
        return values[part.start : part.start + n].to(x.device, x.dtype)

    chosen = draw(1, 1, 1) < prob
    out = x
    for name in types:
        for op in OPS[name]:
            out = op(out, draw)
    return torch.where(chosen, out, x)

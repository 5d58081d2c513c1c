"""Interpolation videos: a closed loop through seeds, spherical in Z or linear in W."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from pipeline.render.synthesis import Synth, lerp, slerp
from pipeline.training.sampling import to_uint8


def loop_path(keys: torch.Tensor, frames: int, spherical: bool) -> torch.Tensor:
    """``frames`` points from each key to the next, the last key back to the first:
    len(keys)·frames points, starting on the first key (each key is a frame)."""
    step = torch.arange(frames, dtype=torch.float64) / frames
    mix = slerp if spherical else lerp
    legs = []
    for i in range(len(keys)):
        a = keys[i : i + 1].double().expand(frames, *keys.shape[1:])
        b = keys[(i + 1) % len(keys)][None].double().expand_as(a)
        legs.append(mix(a, b, step))
    return torch.cat(legs).to(keys.dtype)


def z_frames(synth: Synth, seeds: list[int], frames: int) -> Iterator[np.ndarray]:
    """uint8 frames (in batches) of the slerp loop through the seeds' z: any generator."""
    path = loop_path(synth.z(seeds), frames, spherical=True)
    for chunk in path.split(synth.batch):
        yield to_uint8(synth.images(chunk))


def w_frames(synth: Synth, seeds: list[int], frames: int, psi: float = 1.0) -> Iterator[np.ndarray]:
    """uint8 frames (in batches) of the linear loop through the seeds' ws (W is meant to be
    flat enough for straight lines; style-based generators only)."""
    path = loop_path(synth.ws(synth.z(seeds), psi), frames, spherical=False)
    for chunk in path.split(synth.batch):
        yield to_uint8(synth.synthesis(chunk))

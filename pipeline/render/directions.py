"""Interpretable directions in W, and rows of edits along them.

- GANSpace (Härkönen et al., NeurIPS 2020): principal components of sampled ws.
- SeFa (Shen & Zhou, CVPR 2021): closed form, no sampling: the directions that the style
  (affine) layers of the chosen ws stretch most, the top eigenvectors of AᵀA where A stacks
  those layers' weights.

Edits are measured in standard deviations of W along each direction (GANSpace's σ), so a
strength means the same for both methods.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.errors import StageError
from pipeline.render.synthesis import Synth, WStats


@dataclass
class Directions:
    vectors: torch.Tensor  # k × w_dim, unit length
    scores: list[float]  # what ranks them: variance (GANSpace), eigenvalue of AᵀA (SeFa)
    sigmas: list[float]  # W's std along each


def top_eigenvectors(matrix: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``count`` largest eigenvalues of a symmetric matrix and their eigenvectors (rows)."""
    values, vectors = torch.linalg.eigh(matrix.double())
    order = values.argsort(descending=True)[:count]
    return values[order].float(), vectors[:, order].T.float()


def ganspace(stats: WStats, count: int) -> Directions:
    values, vectors = top_eigenvectors(stats.covariance, count)
    return Directions(vectors, values.tolist(), values.clamp(min=0).sqrt().tolist())


def check_layers(layers: list[int] | None, num_ws: int) -> list[int]:
    if layers is None:
        return list(range(num_ws))
    bad = [i for i in layers if i >= num_ws]
    if bad or not layers:
        raise StageError(
            f"render.directions.layers: {layers} must be ws indices below {num_ws} "
            "(this generator's number of ws), or null for all"
        )
    return sorted(set(layers))


def sefa(synth: Synth, stats: WStats, count: int, layers: list[int] | None) -> Directions:
    synth.require_mapping("SeFa")
    weights = synth.G.modulation_weights()
    chosen = check_layers(layers, len(weights))
    stacked = torch.cat([weights[i].detach().float().cpu() for i in chosen])  # Σc × w_dim
    values, vectors = top_eigenvectors(stacked.T @ stacked, count)
    return Directions(vectors, values.tolist(), [stats.std_along(v) for v in vectors])


def edit_rows(
    synth: Synth,
    seed: int,
    directions: Directions,
    steps: int,
    strength: float,
    layers: list[int] | None = None,
) -> torch.Tensor:
    """One row per direction: the seed's image moved from −strength to +strength σ along
    it, in the ws of ``layers`` (all when None). Returns the images row by row."""
    chosen = check_layers(layers, synth.G.num_ws)
    ws = synth.ws(synth.z([seed]))  # 1 × num_ws × w_dim
    amounts = torch.linspace(-strength, strength, steps)
    edited = ws.repeat(len(directions.vectors) * steps, 1, 1)
    for d, (vector, sigma) in enumerate(zip(directions.vectors, directions.sigmas, strict=True)):
        for s, amount in enumerate(amounts):
            edited[d * steps + s, chosen] += amount * sigma * vector
    return synth.synthesis(edited)

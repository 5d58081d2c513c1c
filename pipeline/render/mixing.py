"""Style mixing: coarse styles from one seed, middle and fine styles from another."""

from __future__ import annotations

import torch

from pipeline.errors import StageError
from pipeline.render.synthesis import Synth


def mix_ws(row_ws: torch.Tensor, col_ws: torch.Tensor, crossover: int) -> torch.Tensor:
    """Every (row, column) pair: the row's ws below ``crossover``, the column's from it on.
    R×num_ws×w_dim and C×num_ws×w_dim give R·C ws, row by row."""
    mixed = row_ws[:, None].expand(-1, len(col_ws), -1, -1).clone()
    mixed[:, :, crossover:] = col_ws[None, :, crossover:]
    return mixed.flatten(0, 1)


def mixing_grid(
    synth: Synth,
    row_seeds: list[int],
    col_seeds: list[int],
    crossover: int,
    psi: float = 1.0,
    cutoff: int | None = None,
) -> torch.Tensor:
    """The style-mixing table: a blank corner, the column seeds' own images along the top,
    the row seeds' own images down the left, and each mix where they meet. Returns the
    (1 + R)·(1 + C) images row by row, for ``image_grid``."""
    synth.require_mapping("style mixing")
    num_ws = synth.G.num_ws
    if not 0 < crossover < num_ws:
        raise StageError(
            f"render.mixing.crossover: {crossover} must be between 1 and {num_ws - 1} "
            f"(this generator has {num_ws} ws)"
        )
    row_ws = synth.ws(synth.z(row_seeds), psi, cutoff)
    col_ws = synth.ws(synth.z(col_seeds), psi, cutoff)
    row_images = synth.synthesis(row_ws)
    col_images = synth.synthesis(col_ws)
    mixed = synth.synthesis(mix_ws(row_ws, col_ws, crossover))
    blank = torch.ones_like(row_images[:1])  # white
    table = [blank, col_images]
    for r in range(len(row_seeds)):
        table += [row_images[r : r + 1], mixed[r * len(col_seeds) : (r + 1) * len(col_seeds)]]
    return torch.cat(table)

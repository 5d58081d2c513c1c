"""Grids: generated and real images, a run's progress over its snapshots, truncation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.errors import StageError
from pipeline.render.synthesis import Synth
from pipeline.training.checkpoint import (
    TrainedGenerator,
    changed_keys,
    load_checkpoint,
    load_generator,
)
from pipeline.training.data import ImageDataset
from pipeline.training.sampling import generate, image_grid, seeded_latents


def grid_seeds(rows: int, cols: int) -> list[int]:
    """The fakes grid shows seeds 0 … rows·cols − 1, row by row (NVlabs' ``--seeds=0-N``)."""
    return list(range(rows * cols))


def fakes_grid(synth: Synth, rows: int, cols: int, noise_seed: int = 0) -> Image.Image:
    """Samples of fixed seeds, each with its own noise (as sample grids during training).
    A conditional G: one row per class, the same seeds 0 … cols − 1 in every row."""
    labels = None
    if synth.num_classes:
        rows = synth.num_classes
        labels = torch.arange(rows).repeat_interleave(cols)
        z = seeded_latents(grid_seeds(1, cols), synth.latent_dim).repeat(rows, 1)
    else:
        z = seeded_latents(grid_seeds(rows, cols), synth.latent_dim)
    images = generate(
        synth.G, z, noise_seed, synth.device, synth.batch, noise_mode=synth.noise_mode,
        labels=labels, sample=synth.sample,
    )  # fmt: skip
    return image_grid(images, rows, cols)


def class_interpolation(synth: Synth, seeds: list[int], steps: int) -> torch.Tensor:
    """Per seed, a row through every class in turn: the same z mapped with each class's
    embedding, ``steps`` images per class-to-class segment, linear in W (conditional G)."""
    z = synth.z(seeds)
    ws = torch.stack([synth.ws(z, label=k) for k in range(synth.num_classes)], 1)  # N×K×…
    t = torch.linspace(0, 1, steps + 1)[:-1]
    path = [
        ws[:, k, None].lerp(ws[:, k + 1, None], t.view(1, -1, 1, 1))
        for k in range(synth.num_classes - 1)
    ]
    path.append(ws[:, -1:])
    frames = torch.cat(path, 1)  # N×frames×num_ws×w_dim, row by row
    return synth.synthesis(frames.flatten(0, 1))


def evenly_spaced(count: int, total: int) -> list[int]:
    """``count`` indices spread over ``range(total)``, first and last included."""
    if count >= total:
        return list(range(total))
    if count == 1:
        return [0]
    return sorted({round(i * (total - 1) / (count - 1)) for i in range(count)})


def real_images(data: str | Path, count: int, size: int) -> tuple[torch.Tensor, list[str]]:
    """``count`` real images spread over the dataset (sorted names) as N×3×size×size in
    [-1, 1], resized (Lanczos) if the dataset's size is not the generator's; and their names."""
    path = Path(data)
    if not path.exists():
        raise StageError(f"render.data: {path} not found; run the dataset stage or set it")
    dataset = ImageDataset(path, "render.data")
    if not dataset.names:
        raise StageError(f"render.data: {dataset.path} holds no images")
    picks = evenly_spaced(count, len(dataset))
    images = []
    for index in picks:
        image = dataset[index]
        if image.shape[-2:] != (size, size):
            pil = Image.fromarray(image.permute(1, 2, 0).numpy())
            pil = pil.resize((size, size), Image.Resampling.LANCZOS)
            image = torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)
        images.append(image.float() / 127.5 - 1)
    return torch.stack(images), [dataset.names[i] for i in picks]


def reals_grid(data: str | Path, rows: int, cols: int, size: int) -> Image.Image:
    images, _ = real_images(data, rows * cols, size)
    return image_grid(images, rows, cols)


def same_run(params: dict, other: dict) -> bool:
    """Whether two checkpoints' params train the same model (the snapshot folder is kept
    from run to run, so it can hold another run's snapshots)."""
    return not changed_keys(params, other)


def progress_strip(
    trained: TrainedGenerator,
    folder: str | Path,
    seeds: list[int],
    columns: int,
    synth_options: dict,
) -> tuple[Image.Image | None, list[float], list[str]]:
    """One column per snapshot of this run (oldest left, at most ``columns``, evenly
    spaced), one row per seed: the same latents as training went on. Returns the strip
    (None without snapshots), its columns' kimg, and the snapshots of other runs left out."""
    candidates = sorted(Path(folder).glob("step-*.pt")) if Path(folder).is_dir() else []
    params = trained.params.model_dump(mode="json")
    ours, foreign = [], []
    for path in candidates:
        (ours if same_run(params, load_checkpoint(path)["params"]) else foreign).append(path)
    ours = [ours[i] for i in evenly_spaced(columns, len(ours))]
    if not ours:
        return None, [], [p.name for p in foreign]
    column_images, kimgs = [], []
    for path in ours:
        snapshot = load_generator(path, synth_options["device"])
        synth = Synth(snapshot.G, **synth_options, sample=snapshot.sample)
        column_images.append(synth.images(synth.z(seeds)))
        kimgs.append(snapshot.kimg)
    stacked = torch.stack(column_images, dim=1)  # seeds × snapshots × 3 × H × W
    strip = image_grid(stacked.flatten(0, 1), len(seeds), len(ours))
    return strip, kimgs, [p.name for p in foreign]


def truncation_grid(
    synth: Synth, seeds: list[int], psis: list[float], cutoff: int | None = None
) -> torch.Tensor:
    """Per seed (row): the image at ψ = 1, then at each ψ of ``psis``. Returns the images
    row by row (len(seeds)·(1 + len(psis)) of them) for ``image_grid``."""
    z = synth.z(seeds)
    columns = [synth.images(z)] + [synth.images(z, psi, cutoff) for psi in psis]
    return torch.stack(columns, dim=1).flatten(0, 1)

"""Small real datasets and tiny configurations for training tests."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from pipeline.training.params import TrainParams
from tests.conftest import needs_shared


def flowers(folder: Path, count: int = 24, size: int = 32) -> Path:
    """``count`` of the real Oxford flowers, resized to ``size``², as a dataset folder."""
    source = needs_shared("data", "flowers256")
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.glob("*.jpg"))[:count]:
        im = Image.open(path).convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
        im.save(folder / f"{path.stem}.png")
    (folder / "dataset.json").write_text('{"labels": null}\n')
    return folder


def tiny(data: Path, **changes) -> TrainParams:
    """A configuration that trains in about a second per few steps on the CPU."""
    settings = dict(
        data=str(data),
        image_size=32,
        steps=4,
        batch_size=8,
        checkpoint_every=100,
        sample_every=100,
        log_every=1,
        workers=0,
        mirror=True,
        grid=(2, 4),
        aug=dict(types=["translation", "color", "cutout"], prob=0.5, schedule=[]),
        lightweight=dict(latent_dim=32, channels=8, attn_res=[16]),
    )
    settings.update(changes)
    return TrainParams(**settings)


# A StyleGAN2 small enough to train a step in well under a second on the CPU at 32 px.
TINY_STYLEGAN2 = dict(
    latent_dim=32, w_dim=32, map_layers=2, channel_base=512, channel_max=64, mbstd_group=4
)


def tiny_stylegan2(data: Path, **changes) -> TrainParams:
    """``tiny`` for StyleGAN2 with ADA, regularisation every other step so short runs
    cover both lazy phases."""
    stylegan2 = dict(TINY_STYLEGAN2, r1_interval=2, pl_interval=2, r1_gamma=1.0)
    stylegan2.update(changes.pop("stylegan2", {}))
    settings = dict(model="stylegan2", stylegan2=stylegan2, ada=dict(interval=1, initial_p=0.2))
    settings.update(changes)
    return tiny(data, **settings)


# A DCGAN small enough for a step in a fraction of a second on the CPU at 16-32 px.
TINY_DCGAN = dict(latent_dim=16, channels=4, channel_max=16)


def tiny_dcgan(data: Path, **changes) -> TrainParams:
    """``tiny`` for DCGAN; ``dcgan`` changes merge into the tiny section."""
    section = dict(TINY_DCGAN, **changes.pop("dcgan", {}))
    return tiny(data, **{"model": "dcgan", "dcgan": section, **changes})


def tiny_progan(data: Path, **changes) -> TrainParams:
    """``tiny`` for progressive DCGAN at 32 px: 16 px for 32 images (4 steps of 8), then
    32 px, 8 steps; ``progan`` changes merge into the tiny section."""
    stages = [dict(size=16, kimg=0.032, lr=5e-4), dict(size=32, kimg=1)]
    section = {**TINY_DCGAN, "stages": stages, **changes.pop("progan", {})}
    return tiny(data, **{"model": "progan", "steps": 8, "progan": section, **changes})

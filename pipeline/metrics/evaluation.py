"""The ``reference`` and ``evaluate`` stages' work: real statistics once, then every metric of
a checkpoint's G_ema in one streamed pass over generated images.

A reference records what its features depend on (dataset fingerprint, subset, Inception file
digest, resize mode, the precision/recall network) and ``evaluate`` refuses one that does not
match its own settings, so FIDs computed with different resizing or networks are never mixed.

Precision/recall runs on VGG16 fc2 features (``pipeline.metrics.vgg16``) when
``evaluate.pr_features`` is ``vgg16``, or ``auto`` and the VGG16 weights load; otherwise on the
Inception features. Those VGG16 features are computed in the same pass, on the same batches.

The metrics themselves are registered by name in ``pipeline.metrics.registry``; here is the
driver that loads the checkpoint, makes the one pass and calls them. A labelled dataset's
reference keeps each image's class, for per-class metrics (``fid_per_class``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline import io as pio
from pipeline.devices import pick_device
from pipeline.errors import StageError
from pipeline.faces.base import FaceDetector, load_detector
from pipeline.metrics.fid import GaussianStats, feature_stats
from pipeline.metrics.inception import FeatureSink, InceptionV3, extractor_key, iter_dataset
from pipeline.metrics.labels import DatasetLabels, generation_labels, read_dataset_labels
from pipeline.metrics.one_face import FaceCounter
from pipeline.metrics.registry import (
    GeneratedFeatures,
    MetricContext,
    first_line,
    get_metric,
    list_metrics,
    metrics_needing,
    run_metric,
)
from pipeline.metrics.samples import sample_warning
from pipeline.metrics.vgg16 import VGG16FC2, VGG16Sink, load_vgg16
from pipeline.params import EvaluateParams, ReferenceParams
from pipeline.progress import progress_bar

# 2: the precision/recall network in the key, VGG16 features; 3: the classes of a labelled
# dataset's images (and their digest in the key)
REFERENCE_FORMAT = 3
# those that need the Inception network (translation runs it on its own translations)
FEATURE_METRICS = (*metrics_needing("inception"), "translation")


def load_one_face_detector(cfg: EvaluateParams) -> tuple[FaceDetector | None, str | None]:
    """RetinaFace as ``evaluate.one_face`` says, or (None, why not) when its weights are
    missing: the rate is then reported as null with that reason, not a made-up number."""
    face = cfg.one_face
    batch = 16 if pick_device(cfg.device).type == "cuda" else 2  # as faces.batch_size auto
    try:
        detector = load_detector(
            "retinaface",
            containment=face.containment,
            variant=face.variant,
            weights=face.weights,
            confidence=face.confidence,
            nms=face.nms,
            max_size=face.max_size,
            device=cfg.device,
            weights_dir=cfg.weights_dir,
            download=cfg.download_weights,
            batch_size=batch,
        )
    except StageError as exc:
        return None, f"RetinaFace weights unavailable: {first_line(exc)}"
    return detector, None


def detector_key(detector: FaceDetector | None) -> dict[str, Any] | None:
    return None if detector is None else json.loads(json.dumps(detector.config, default=str))


def load_pr_network(cfg: EvaluateParams) -> tuple[VGG16FC2 | None, str | None]:
    """VGG16 for precision/recall as ``evaluate.pr_features`` says, or (None, why not) when it
    is ``inception`` or the weights are missing: ``auto`` then uses Inception features,
    ``vgg16`` reports precision/recall as null with that reason."""
    if cfg.pr_features == "inception":
        return None, None
    try:
        return load_vgg16(cfg.weights_dir, cfg.download_weights, cfg.device), None
    except StageError as exc:
        why = f"VGG16 weights unavailable: {first_line(exc)}"
        if cfg.pr_features == "auto":
            why += "; precision/recall on Inception features"
        return None, why


def pr_key(cfg: EvaluateParams, vgg: VGG16FC2 | None) -> dict[str, Any]:
    """Which features precision/recall uses (``vgg16``, ``inception``, or None: not computed)
    and the VGG16 file's digest."""
    if vgg is not None:
        return {"pr_features": "vgg16", "pr_sha256": vgg.sha256}
    return {"pr_features": None if cfg.pr_features == "vgg16" else "inception", "pr_sha256": None}


# --- reference ------------------------------------------------------------------------------


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
    model: InceptionV3,
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
        **extractor_key(model, resize),
        **pr,
    }


def compute_reference(
    ref: ReferenceParams,
    cfg: EvaluateParams,
    model: InceptionV3,
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
    sink = FeatureSink(model, cfg.resize, count)
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
        "extractor": model.source.name,
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
    key = reference_key(ref.data, ref, model, cfg.resize, pr, dataset_labels)
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


# --- evaluate -------------------------------------------------------------------------------


def load_ppl_distance(cfg: EvaluateParams, device: torch.device):
    """LPIPS-VGG16 for PPL, or (None, why not) when its weights are missing."""
    from pipeline.lpips import load_lpips

    try:
        lpips = load_lpips(cfg.lpips_vgg, cfg.lpips_lin, cfg.weights_dir, cfg.download_weights)
    except StageError as exc:
        return None, f"LPIPS-VGG16 weights unavailable: {first_line(exc)}"
    return lpips.to(device), None


def generate_features(ctx: MetricContext, needs: set[str]) -> GeneratedFeatures:
    """The one streamed pass: ``evaluate.num_images`` images from the model's ``sample``
    (a conditional model's classes from ``generation_labels``), each batch quantised to uint8,
    fed to every network ``needs`` names and dropped."""
    from pipeline.training.sampling import fixed_latents, iter_generate, to_uint8

    cfg, trained, reference = ctx.cfg, ctx.trained, ctx.reference
    sink = None
    if "inception" in needs:
        if ctx.inception is None:
            raise ValueError("an Inception model is needed for " + ", ".join(FEATURE_METRICS))
        sink = FeatureSink(ctx.inception, cfg.resize, cfg.num_images, probs="probs" in needs)
    use_vgg = "vgg" in needs and ctx.vgg is not None
    vgg_sink = VGG16Sink(ctx.vgg, cfg.num_images) if use_vgg else None
    use_faces = "faces" in needs and ctx.detector is not None
    faces = FaceCounter(ctx.detector) if use_faces else None
    if sink is None and vgg_sink is None and faces is None:
        return GeneratedFeatures()
    labels = generation_labels(
        trained.classes, reference.classes, reference.labels, cfg.num_images, cfg.seed
    )
    z = fixed_latents(cfg.num_images, trained.latent_dim, cfg.seed)
    stream = iter_generate(
        trained.G, z, cfg.seed, ctx.device, cfg.batch_size, cfg.truncation,
        labels=None if labels is None else torch.from_numpy(labels), sample=trained.sample,
    )  # fmt: skip
    with progress_bar(cfg.num_images, f"evaluate {trained.model}") as advance:
        for batch in stream:
            images = to_uint8(batch)
            if sink is not None:
                sink.add(images)
            if vgg_sink is not None:
                vgg_sink.add(images)
            if faces is not None:
                faces.add(images)
            advance(len(images))
    inception, probs = sink.result() if sink is not None else (None, None)
    vgg = vgg_sink.result()[0] if vgg_sink is not None else None
    return GeneratedFeatures(inception, probs, vgg, faces, labels)


def evaluate_generator(
    cfg: EvaluateParams,
    reference: Reference,
    model: InceptionV3 | None,
    detector: FaceDetector | None = None,
    detector_note: str | None = None,
    lpips=None,
    lpips_note: str | None = None,
    vgg: VGG16FC2 | None = None,
    vgg_note: str | None = None,
    data: str | None = None,
) -> dict[str, Any]:
    """Every metric of ``cfg.metrics`` for ``cfg.checkpoint``'s G_ema (``model`` is the
    Inception network), as a dict of numbers (null where a metric could not be computed,
    with the reason under ``notes``; small samples under ``warnings``). Precision/recall uses
    ``vgg``'s features when given (and the reference's VGG16 ones)."""
    from pipeline.models.base import Capability
    from pipeline.training.checkpoint import load_generator

    requested = {get_metric(name).name for name in cfg.metrics}  # unknown: names the valid
    metrics = [get_metric(name) for name in list_metrics() if name in requested]
    device = pick_device(cfg.device)
    trained = load_generator(cfg.checkpoint, device)
    if cfg.truncation != 1.0 and not trained.can(Capability.W_SPACE):
        raise StageError(
            f"evaluate.truncation: {trained.model} has no mapping network to truncate in; "
            "set evaluate.truncation=1"
        )
    ctx = MetricContext(
        cfg, trained, device, reference, model, vgg, vgg_note, detector, detector_note,
        lpips, lpips_note, data=data,
    )  # fmt: skip
    for metric in metrics:
        if metric.check is not None:
            metric.check(ctx)
    results: dict[str, Any] = {
        "kimg": trained.kimg,
        "num_images": cfg.num_images,
        "truncation": cfg.truncation,
    }
    ctx.generated = generate_features(ctx, set().union(*(m.needs for m in metrics)))
    for metric in metrics:
        results.update(run_metric(metric, ctx))
    if ctx.notes:
        results["notes"] = ctx.notes
    warnings = small_sample_warnings(results, cfg, len(reference.features), requested)
    warnings |= ctx.warnings
    if trained.net is not None and (note := trained.net.sampling_note()):
        warnings["stage"] = note
    if warnings:
        results["warnings"] = warnings
    return results


def small_sample_warnings(
    results: dict[str, Any], cfg: EvaluateParams, real: int, metrics: set[str]
) -> dict[str, str]:
    """A warning per computed metric whose sample is below ``MIN_SAMPLES``."""
    fake = cfg.num_images
    both = f"images per set ({fake:,} generated, {real:,} real)"
    checks = {
        "fid": ("fid", min(fake, real), both),
        "kid": ("kid", min(fake, real), both),
        "precision": ("precision_recall", min(fake, real), both),
        "recall": ("precision_recall", min(fake, real), both),
        "inception_score": ("inception_score", fake, "generated images"),
        "ppl_z": ("ppl", cfg.ppl_samples, "pairs (evaluate.ppl_samples)"),
        "ppl_w": ("ppl", cfg.ppl_samples, "pairs (evaluate.ppl_samples)"),
        "one_face_rate": ("one_face", fake, "generated images"),
        "one_face_rate_real": ("one_face", real, "real images"),
    }
    warnings = {}
    for name, (metric, count, what) in checks.items():
        if results.get(name) is not None:
            warning = sample_warning(metric, count, what)
            if warning:
                warnings[name] = warning
    return warnings

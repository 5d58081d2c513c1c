"""The ``reference`` and ``evaluate`` stages' work: real statistics once, then every metric of
a checkpoint's G_ema in one streamed pass over generated images.

A reference records what its features depend on (dataset fingerprint, subset, Inception file
digest, resize mode, the precision/recall network) and ``evaluate`` refuses one that does not
match its own settings, so FIDs computed with different resizing or networks are never mixed.

Precision/recall runs on VGG16 fc2 features (``pipeline.metrics.vgg16``) when
``evaluate.pr_features`` is ``vgg16``, or ``auto`` and the VGG16 weights load; otherwise on the
Inception features. Those VGG16 features are computed in the same pass, on the same batches.
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
from pipeline.metrics.fid import GaussianStats, feature_stats, frechet_distance
from pipeline.metrics.inception import FeatureSink, InceptionV3, extractor_key, iter_dataset
from pipeline.metrics.one_face import FaceCounter
from pipeline.metrics.samples import sample_warning
from pipeline.metrics.vgg16 import VGG16FC2, VGG16Sink, load_vgg16
from pipeline.params import EvaluateParams, ReferenceParams
from pipeline.progress import progress_bar

REFERENCE_FORMAT = 2  # 2: the precision/recall network in the key, VGG16 features
FEATURE_METRICS = ("fid", "kid", "precision_recall", "inception_score")


def first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [exc.__class__.__name__])[0]


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
) -> dict[str, Any]:
    return {
        "format": REFERENCE_FORMAT,
        "dataset": dataset_fingerprint(data),
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
    one-face rate), streamed."""
    from pipeline.training.data import ImageDataset

    total = len(ImageDataset(ref.data, "reference.data"))
    if total < 2:
        raise StageError(f"reference.data: {ref.data} has {total} image(s); need at least 2")
    indices = subset_indices(total, ref.max_images, ref.seed)
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
    key = reference_key(ref.data, ref, model, cfg.resize, pr)
    pr_features = vgg_sink.result()[0] if vgg_sink is not None else None
    return Reference(features, feature_stats(features), key, summary, pr_features)


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
    except (OSError, ValueError, KeyError) as exc:
        raise StageError(f"{path}: not a reference file ({first_line(exc)}); re-run it") from None
    return Reference(features, stats, key, summary, pr_features)


def check_reference(reference: Reference, expected: dict[str, Any], path: str | Path) -> None:
    """Stop with one line naming what differs between a reference and the current settings."""
    differ = [k for k in sorted(set(expected) | set(reference.key))
              if reference.key.get(k) != expected.get(k)]  # fmt: skip
    if differ:
        what = ", ".join(f"{k} {reference.key.get(k)!r} ≠ {expected.get(k)!r}" for k in differ)
        raise StageError(f"{path}: computed with other settings ({what}); run dvc repro reference")


# --- evaluate -------------------------------------------------------------------------------


def _metric(results: dict, notes: dict, names: tuple[str, ...], compute) -> None:
    """Fill ``names`` from ``compute()``; a metric that cannot be computed is null + a note."""
    try:
        values = compute()
    except (ValueError, StageError) as exc:
        for name in names:  # each null explains itself (recall beside precision, kid_std…)
            results[name] = None
            notes[name] = first_line(exc)
        return
    for name, value in zip(names, values, strict=True):
        results[name] = value


def load_ppl_distance(cfg: EvaluateParams, device: torch.device):
    """LPIPS-VGG16 for PPL, or (None, why not) when its weights are missing."""
    from pipeline.lpips import load_lpips

    try:
        lpips = load_lpips(cfg.lpips_vgg, cfg.lpips_lin, cfg.weights_dir, cfg.download_weights)
    except StageError as exc:
        return None, f"LPIPS-VGG16 weights unavailable: {first_line(exc)}"
    return lpips.to(device), None


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
) -> dict[str, Any]:
    """Every metric of ``cfg.metrics`` for ``cfg.checkpoint``'s G_ema, as a flat dict of
    numbers (null where a metric could not be computed, with the reason under ``notes``).
    Precision/recall uses ``vgg``'s features when given (and the reference's VGG16 ones)."""
    from pipeline.metrics.inception_score import inception_score
    from pipeline.metrics.kid import kernel_inception_distance
    from pipeline.metrics.ppl import perceptual_path_length
    from pipeline.metrics.precision_recall import precision_recall
    from pipeline.models.base import has_mapping
    from pipeline.training.checkpoint import load_generator
    from pipeline.training.sampling import fixed_latents, iter_generate, to_uint8

    device = pick_device(cfg.device)
    trained = load_generator(cfg.checkpoint, device)
    G, mapping = trained.G, has_mapping(trained.G)
    if cfg.truncation != 1.0 and not mapping:
        raise StageError(
            f"evaluate.truncation: {trained.model} has no mapping network to truncate in; "
            "set evaluate.truncation=1"
        )
    metrics = set(cfg.metrics)
    real_detector = reference.summary.get("one_face_detector")
    same = real_detector is None or detector is None or real_detector == detector_key(detector)
    if "one_face" in metrics and not same:
        raise StageError(
            "the reference's one-face rate used other evaluate.one_face settings; "
            "run dvc repro reference"
        )
    results: dict[str, Any] = {
        "kimg": trained.kimg,
        "num_images": cfg.num_images,
        "truncation": cfg.truncation,
    }
    notes: dict[str, str] = {}
    need_features = bool(metrics & set(FEATURE_METRICS))
    sink = None
    if need_features:
        if model is None:
            raise ValueError("an Inception model is needed for " + ", ".join(FEATURE_METRICS))
        sink = FeatureSink(model, cfg.resize, cfg.num_images, probs="inception_score" in metrics)
    use_vgg = "precision_recall" in metrics and vgg is not None
    vgg_sink = VGG16Sink(vgg, cfg.num_images) if use_vgg else None
    faces = FaceCounter(detector) if "one_face" in metrics and detector is not None else None
    if need_features or faces is not None:
        z = fixed_latents(cfg.num_images, trained.latent_dim, cfg.seed)
        stream = iter_generate(G, z, cfg.seed, device, cfg.batch_size, cfg.truncation)
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
    real = reference.features
    fake, probs = sink.result() if sink is not None else (None, None)
    if "fid" in metrics:
        _metric(results, notes, ("fid",), lambda: [frechet_distance(real, fake)])
    if "kid" in metrics:
        _metric(results, notes, ("kid", "kid_std"), lambda: kernel_inception_distance(
            real, fake, cfg.kid_subsets, cfg.kid_subset_size, cfg.seed
        ))  # fmt: skip
    if "precision_recall" in metrics:

        def pr():
            if vgg_sink is not None:
                if reference.pr_features is None:
                    raise ValueError("the reference has no VGG16 features; run dvc repro reference")
                vgg_fake, _ = vgg_sink.result()
                return precision_recall(reference.pr_features, vgg_fake, cfg.pr_k, device)
            if cfg.pr_features == "vgg16":
                raise ValueError(vgg_note or "no VGG16 network")
            return precision_recall(real, fake, cfg.pr_k, device)

        _metric(results, notes, ("precision", "recall"), pr)
    if "inception_score" in metrics:

        def score():
            if probs is None:
                raise ValueError(
                    f"the {model.source.name} Inception has no logits layer (pool features "
                    "only); set evaluate.extractor=nvlabs for the Inception Score"
                )
            return inception_score(probs, cfg.is_splits)

        _metric(results, notes, ("inception_score", "inception_score_std"), score)
    if "ppl" in metrics:
        spaces = ["z", "w"] if mapping else ["z"]
        for space in spaces:
            name = f"ppl_{space}"

            def ppl(space=space):
                if lpips is None:
                    raise ValueError(lpips_note or "no LPIPS network")
                with progress_bar(cfg.ppl_samples, f"ppl {space} ({cfg.ppl_sampling})") as adv:
                    return [
                        perceptual_path_length(
                            G, lpips, cfg.ppl_samples, trained.latent_dim, space,
                            cfg.ppl_sampling, cfg.ppl_epsilon, cfg.seed, cfg.batch_size,
                            cfg.truncation, adv,
                        )
                    ]  # fmt: skip

            _metric(results, notes, (name,), ppl)
        if not mapping:
            results["ppl_w"] = None
            notes["ppl_w"] = f"{trained.model} has no W space (no mapping network)"
    if "one_face" in metrics:
        results["one_face_rate"] = faces.rate if faces is not None else None
        results["one_face_rate_real"] = reference.summary.get("one_face_rate")
        if faces is None:
            notes["one_face_rate"] = detector_note or "no face detector"
        elif faces.note:
            notes["one_face_rate"] = faces.note
        if faces is not None and results["one_face_rate_real"] is None:
            real_note = reference.summary.get("notes", {}).get("one_face_rate")
            notes["one_face_rate_real"] = real_note or "the reference has no one-face rate"
    if notes:
        results["notes"] = notes
    warnings = small_sample_warnings(results, cfg, len(real), metrics)
    stage_note = getattr(trained.net, "sampling_note", None)  # a model sampled part-grown
    if stage_note is not None and (note := stage_note()):
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

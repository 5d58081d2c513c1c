"""The ``evaluate`` stage's work: every metric of a checkpoint's G_ema in one streamed pass
over generated images, against the reference (``pipeline.metrics.reference``).

Precision/recall runs on VGG16 fc2 features (``pipeline.metrics.vgg16``) when
``evaluate.pr_features`` is ``vgg16``, or ``auto`` and the VGG16 weights load; otherwise on the
Inception features. Those VGG16 features are computed in the same pass, on the same batches.

The metrics themselves are registered by name in ``pipeline.metrics.registry``, with the
networks they run (``pipeline.metrics.networks``); here is the driver that loads the
checkpoint, makes the one pass and calls them.
"""

from __future__ import annotations

from typing import Any

import torch

from pipeline.devices import pick_device
from pipeline.errors import StageError
from pipeline.faces.base import FaceDetector
from pipeline.metrics.inception import FeatureSink, InceptionV3
from pipeline.metrics.labels import generation_labels
from pipeline.metrics.networks import LoadedNetworks
from pipeline.metrics.one_face import FaceCounter
from pipeline.metrics.reference import Reference
from pipeline.metrics.registry import (
    GeneratedFeatures,
    MetricContext,
    get_metric,
    list_metrics,
    metrics_using,
    run_metric,
)
from pipeline.metrics.samples import sample_warning
from pipeline.metrics.vgg16 import VGG16FC2, VGG16Sink
from pipeline.params import EvaluateParams
from pipeline.progress import progress_bar

# the metrics that run the Inception network (translation runs it on its own translations)
FEATURE_METRICS = metrics_using("inception")


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
    inception: InceptionV3 | None = None,
    detector: FaceDetector | None = None,
    detector_note: str | None = None,
    lpips=None,
    lpips_note: str | None = None,
    vgg: VGG16FC2 | None = None,
    vgg_note: str | None = None,
    data: str | None = None,
    networks: LoadedNetworks | None = None,
) -> dict[str, Any]:
    """Every metric of ``cfg.metrics`` for ``cfg.checkpoint``'s G_ema, as a dict of numbers
    (null where a metric could not be computed, with the reason under ``notes``; small
    samples under ``warnings``). ``networks``: what ``load_networks`` loaded for the metrics
    (the stage's way); or the built-in ones one by one (``inception`` and the others;
    precision/recall uses ``vgg``'s features when given, and the reference's VGG16 ones)."""
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
    if networks is None:
        given = {"inception": inception, "vgg": vgg, "detector": detector, "lpips": lpips}
        notes = {"vgg": vgg_note, "detector": detector_note, "lpips": lpips_note}
        networks = LoadedNetworks(
            {k: v for k, v in given.items() if v is not None}, {k: v for k, v in notes.items() if v}
        )
    nets = networks
    ctx = MetricContext(
        cfg, trained, device, reference, nets.get("inception"), nets.get("vgg"),
        nets.note("vgg"), nets.get("detector"), nets.note("detector"), nets.get("lpips"),
        nets.note("lpips"), data=data, networks=nets,
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

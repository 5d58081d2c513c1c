"""Metrics by name, as NVlabs' ``metric_main``: each metric is one function of a
``MetricContext`` that returns its numbers, registered with ``@register_metric``.

``evaluate`` (``pipeline.metrics.evaluation.evaluate_generator``) builds one context (the
checkpoint's model, the reference, the loaded networks), streams the generated images once
through the networks the requested metrics ``need`` (``NEEDS``), then calls each metric in
the order registered here. A metric that cannot be computed raises ``ValueError`` (or
``StageError``) with the reason: each of its keys is then null, with that reason in
``notes.json``. One that computes some keys and not others returns None for those and writes
why under ``ctx.notes``.

Adding a metric is one file, ``pipeline/metrics/<name>.py``, with its function (and the
loader of a network of its own, if it runs one)::

    register_network("sharpnet", load_sharpnet)  # (cfg) -> (network, None) | (None, why)

    @register_metric(keys=("sharpness",), networks=("sharpnet",))
    def sharpness(ctx: MetricContext) -> dict[str, float | None]:
        return {"sharpness": sharpness_of(ctx.network("sharpnet"))}

and its name last in ``pipeline.params.MetricName`` (the ``evaluate.metrics`` names, which
params.yaml validation reads without importing this module): this module imports the file
by that name, and refuses to load while the names and the registered metrics differ. Evaluate
loads the union of the networks the asked metrics declare (``networks_for``).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pipeline.errors import StageError, first_line
from pipeline.faces.base import FaceDetector
from pipeline.metrics.fid import frechet_distance, frechet_distance_per_class
from pipeline.metrics.inception import InceptionV3
from pipeline.metrics.inception_score import inception_score as inception_score_of
from pipeline.metrics.kid import kernel_inception_distance
from pipeline.metrics.networks import LoadedNetworks, network_names
from pipeline.metrics.one_face import FaceCounter
from pipeline.metrics.ppl import perceptual_path_length
from pipeline.metrics.precision_recall import precision_recall as precision_recall_of
from pipeline.metrics.samples import sample_warning
from pipeline.metrics.vgg16 import VGG16FC2
from pipeline.models.base import Capability, MissingCapability
from pipeline.params import METRIC_NAMES, EvaluateParams
from pipeline.progress import progress_bar

if TYPE_CHECKING:
    from pipeline.metrics.reference import Reference
    from pipeline.training.checkpoint import TrainedGenerator

# What the one streamed pass over generated images can compute for the metrics:
# Inception pool features, Inception class probabilities, VGG16 fc2 features (when VGG16
# loaded), the one-face counter (when a detector loaded).
NEEDS = ("inception", "probs", "vgg", "faces")

Results = dict[str, Any]  # result key → number, None, or a dict of numbers (per class)


@dataclass
class GeneratedFeatures:
    """What the one pass over ``evaluate.num_images`` generated images kept."""

    inception: np.ndarray | None = None  # N×2048 pool features
    probs: np.ndarray | None = None  # N×classes probabilities (an Inception with logits)
    vgg: np.ndarray | None = None  # N×4096 VGG16 fc2 features
    faces: FaceCounter | None = None  # the one-face counter, fed every image
    labels: np.ndarray | None = None  # N class indices asked of a conditional model


@dataclass
class MetricContext:
    """Everything a metric may read: the settings, the checkpoint's model, the reference,
    the loaded networks (None with a ``*_note`` saying why, where one could not be loaded),
    the generated images' features, and ``notes`` (result key → why it is null)."""

    cfg: EvaluateParams
    trained: TrainedGenerator
    device: torch.device
    reference: Reference
    inception: InceptionV3 | None = None
    vgg: VGG16FC2 | None = None
    vgg_note: str | None = None
    detector: FaceDetector | None = None
    detector_note: str | None = None
    lpips: Any = None  # LPIPS-VGG16 for PPL
    lpips_note: str | None = None
    generated: GeneratedFeatures = field(default_factory=GeneratedFeatures)
    notes: dict[str, str] = field(default_factory=dict)
    warnings: dict[str, str] = field(default_factory=dict)  # small samples, beyond the usual
    data: str | None = None  # the real dataset (reference.data): its held-out split
    # every loaded network by name, with why a missing one is missing: what a metric with
    # a network of its own reads (``network``); the built-ins also have the fields above
    networks: LoadedNetworks = field(default_factory=LoadedNetworks)

    def network(self, name: str) -> Any:
        """A loaded network, or ValueError with why it is missing (the metric is null)."""
        found = self.networks.get(name)
        if found is None:
            raise ValueError(self.networks.note(name) or f"the {name} network is not loaded")
        return found


@dataclass(frozen=True)
class Metric:
    name: str
    compute: Callable[[MetricContext], Results]
    keys: tuple[str, ...]  # what it fills in metrics.json (all null when it fails)
    needs: frozenset[str]  # what of the generated pass it reads (NEEDS)
    check: Callable[[MetricContext], None] | None = None  # before the pass: stop early
    networks: frozenset[str] = frozenset()  # what it runs (pipeline.metrics.networks)


_METRICS: dict[str, Metric] = {}


def register_metric(
    keys: Iterable[str] | None = None,
    needs: Iterable[str] = (),
    check: Callable[[MetricContext], None] | None = None,
    networks: Iterable[str] = (),
) -> Callable:
    """Register the decorated function under its name. ``keys``: the result keys it returns
    (default: its name); ``needs``: what of the generated pass it reads; ``check``: a test of
    the settings run before any image is generated (raise StageError to stop);
    ``networks``: the networks it runs (``pipeline.metrics.networks``), which evaluate loads
    only when a metric asked for needs them."""

    def register(compute: Callable[[MetricContext], Results]) -> Callable:
        name = compute.__name__
        unknown = set(needs) - set(NEEDS)
        if unknown:
            raise ValueError(f"metric {name}: unknown needs {sorted(unknown)}; use {NEEDS}")
        unregistered = set(networks) - set(network_names())
        if unregistered:
            raise ValueError(
                f"metric {name}: networks {sorted(unregistered)} are not registered "
                "(pipeline.metrics.networks.register_network)"
            )
        if name in _METRICS:
            raise ValueError(f"metric {name} is registered twice")
        _METRICS[name] = Metric(
            name, compute, tuple(keys or (name,)), frozenset(needs), check, frozenset(networks)
        )
        return compute

    return register


def list_metrics() -> list[str]:
    """Every valid ``evaluate.metrics`` name, in the order evaluate computes them."""
    return list(_METRICS)


def check_metric_name(name: str) -> str:
    """``name``, or ValueError naming the valid ones."""
    if name not in _METRICS:
        raise ValueError(f"unknown metric {name!r}; use one of {', '.join(_METRICS)}")
    return name


def get_metric(name: str) -> Metric:
    return _METRICS[check_metric_name(name)]


def metrics_needing(need: str) -> tuple[str, ...]:
    """The metrics that read ``need`` of the generated pass."""
    return tuple(name for name, metric in _METRICS.items() if need in metric.needs)


def metrics_using(network: str) -> tuple[str, ...]:
    """The metrics that run ``network``."""
    return tuple(name for name, metric in _METRICS.items() if network in metric.networks)


def networks_for(names: Iterable[str]) -> set[str]:
    """The union of the networks the metrics ``names`` run: what evaluate loads."""
    return set().union(*(get_metric(name).networks for name in names))


def attempt(ctx: MetricContext, keys: tuple[str, ...], compute: Callable[[], Any]) -> Results:
    """``keys`` filled from ``compute()`` (a dict, or values in ``keys``' order); when it
    raises ValueError or StageError, each key is null and explains itself in ``ctx.notes``
    (a null recall beside a null precision too)."""
    try:
        values = compute()
    except (ValueError, StageError) as exc:
        for key in keys:
            ctx.notes[key] = first_line(exc, limit=2000)
        return dict.fromkeys(keys)
    if isinstance(values, dict):
        if set(values) != set(keys):
            raise RuntimeError(f"a metric returned {sorted(values)}, not {sorted(keys)}")
        return {key: values[key] for key in keys}
    return dict(zip(keys, values, strict=True))


def run_metric(metric: Metric, ctx: MetricContext) -> Results:
    """One metric's results, null with the reason where it cannot be computed."""
    return attempt(ctx, metric.keys, lambda: metric.compute(ctx))


# --- the metrics, in the order evaluate reports them ----------------------------------------


@register_metric(needs=("inception",), networks=("inception",))
def fid(ctx: MetricContext) -> Results:
    """Fréchet Inception Distance against the reference (``pipeline.metrics.fid``)."""
    return {"fid": frechet_distance(ctx.reference.features, ctx.generated.inception)}


@register_metric(keys=("kid", "kid_std"), needs=("inception",), networks=("inception",))
def kid(ctx: MetricContext) -> Results:
    """Kernel Inception Distance over seeded subsets (``pipeline.metrics.kid``)."""
    cfg = ctx.cfg
    real, fake = ctx.reference.features, ctx.generated.inception
    mean, std = kernel_inception_distance(
        real, fake, cfg.kid_subsets, cfg.kid_subset_size, cfg.seed
    )
    return {"kid": mean, "kid_std": std}


@register_metric(
    keys=("precision", "recall"), needs=("inception", "vgg"), networks=("inception", "vgg")
)
def precision_recall(ctx: MetricContext) -> Results:
    """k-NN precision and recall on VGG16 features when VGG16 loaded, else on Inception ones
    (``evaluate.pr_features``)."""
    cfg, reference, generated = ctx.cfg, ctx.reference, ctx.generated
    if generated.vgg is not None:
        if reference.pr_features is None:
            raise ValueError("the reference has no VGG16 features; run dvc repro reference")
        return precision_recall_of(reference.pr_features, generated.vgg, cfg.pr_k, ctx.device)
    if cfg.pr_features == "vgg16":
        raise ValueError(ctx.vgg_note or "no VGG16 network")
    return precision_recall_of(reference.features, generated.inception, cfg.pr_k, ctx.device)


@register_metric(
    keys=("inception_score", "inception_score_std"),
    needs=("inception", "probs"),
    networks=("inception",),
)
def inception_score(ctx: MetricContext) -> Results:
    """Inception Score of the generated images (needs an Inception with its logits layer)."""
    if ctx.generated.probs is None:
        raise ValueError(
            f"the {ctx.inception.source.name} Inception has no logits layer (pool features "
            "only); set evaluate.extractor=nvlabs for the Inception Score"
        )
    return inception_score_of(ctx.generated.probs, ctx.cfg.is_splits)


@register_metric(keys=("ppl_z", "ppl_w"), networks=("lpips",))
def ppl(ctx: MetricContext) -> Results:
    """Perceptual path length in Z, and in W for a generator with a mapping network. Its own
    pairs of images, made by G directly (it interpolates in G's latent spaces)."""
    cfg, trained = ctx.cfg, ctx.trained
    mapping = trained.can(Capability.W_SPACE)

    def length(space: str) -> list[float]:
        if ctx.lpips is None:
            raise ValueError(ctx.lpips_note or "no LPIPS network")
        with progress_bar(cfg.ppl_samples, f"ppl {space} ({cfg.ppl_sampling})") as advance:
            return [
                perceptual_path_length(
                    trained.G, ctx.lpips, cfg.ppl_samples, trained.latent_dim, space,
                    cfg.ppl_sampling, cfg.ppl_epsilon, cfg.seed, cfg.batch_size,
                    cfg.truncation, advance,
                )
            ]  # fmt: skip

    results: Results = {}
    for space in ("z", "w"):
        name = f"ppl_{space}"
        if space == "w" and not mapping:
            results[name] = None
            ctx.notes[name] = f"{trained.model} has no W space (no mapping network)"
        else:
            results.update(attempt(ctx, (name,), lambda space=space: length(space)))
    return results


def _same_face_detector(ctx: MetricContext) -> None:
    from pipeline.faces.base import detector_key

    real_detector = ctx.reference.summary.get("one_face_detector")
    detector = ctx.detector
    if (
        real_detector is not None
        and detector is not None
        and real_detector != detector_key(detector)
    ):
        raise StageError(
            "the reference's one-face rate used other evaluate.one_face settings; "
            "run dvc repro reference"
        )


@register_metric(
    keys=("one_face_rate", "one_face_rate_real"),
    needs=("faces",),
    check=_same_face_detector,
    networks=("detector",),
)
def one_face(ctx: MetricContext) -> Results:
    """The fraction of generated images with exactly one face, beside the reference's."""
    faces, summary = ctx.generated.faces, ctx.reference.summary
    results = {
        "one_face_rate": faces.rate if faces is not None else None,
        "one_face_rate_real": summary.get("one_face_rate"),
    }
    if faces is None:
        ctx.notes["one_face_rate"] = ctx.detector_note or "no face detector"
    elif faces.note:
        ctx.notes["one_face_rate"] = faces.note
    if faces is not None and results["one_face_rate_real"] is None:
        real_note = summary.get("notes", {}).get("one_face_rate")
        ctx.notes["one_face_rate_real"] = real_note or "the reference has no one-face rate"
    return results


@register_metric(
    keys=("fid_per_class", "fid_per_class_mean"), needs=("inception",), networks=("inception",)
)
def fid_per_class(ctx: MetricContext) -> Results:
    """FID of each class of a class-conditional model against the reference's images of that
    class (``fid_per_class``: class name → FID), and their mean. The generated images of a
    class are those of the one pass asked for that class (the reference's class shares of
    ``evaluate.num_images``: ``pipeline.metrics.labels.generation_labels``)."""
    trained, reference, generated = ctx.trained, ctx.reference, ctx.generated
    if not trained.num_classes:
        raise ValueError(
            f"the {trained.model} checkpoint is unconditional: per-class FID needs a "
            "class-conditional model (trained on a labelled dataset)"
        )
    if reference.labels is None:
        raise ValueError(
            "the reference has no class labels (reference.data's dataset.json has none)"
        )
    if set(reference.classes) != set(trained.classes):
        raise ValueError(
            f"the checkpoint's classes ({', '.join(trained.classes)}) are not the "
            f"reference's ({', '.join(reference.classes)})"
        )
    model_index = np.array([trained.classes.index(name) for name in reference.classes])
    real_labels = model_index[reference.labels]
    values, reasons = frechet_distance_per_class(
        reference.features, real_labels, generated.inception, generated.labels, trained.classes
    )
    measured = [name for name, value in values.items() if value is not None]
    if not measured:
        raise ValueError(next(iter(reasons.values())))
    for name, why in reasons.items():
        ctx.notes[f"fid_per_class.{name}"] = why
    sizes = {
        name: (int((generated.labels == k).sum()), int((real_labels == k).sum()))
        for k, name in enumerate(trained.classes)
    }
    smallest = min(measured, key=lambda name: min(sizes[name]))
    fake, real = sizes[smallest]
    what = f"images per set in its smallest class ({smallest}: {fake:,} generated, {real:,} real)"
    warning = sample_warning("fid", min(fake, real), what)
    if warning:
        ctx.warnings["fid_per_class"] = warning
    mean = float(np.mean([values[name] for name in measured]))
    return {"fid_per_class": values, "fid_per_class_mean": mean}


TRANSLATION_KEYS = tuple(
    f"{kind}_{guide}" for guide in ("latent", "reference") for kind in ("fid", "fid_mean", "lpips")
)


@register_metric(keys=TRANSLATION_KEYS, networks=("inception", "lpips"))
def translation(ctx: MetricContext) -> Results:
    """StarGAN v2's own metrics (``pipeline.metrics.translation``): FID per target domain of
    latent- and reference-guided translations of the dataset's held-out images (test.zip),
    their mean, and LPIPS diversity between styles of one source."""
    from pipeline.metrics.translation import translation_metrics

    if not ctx.trained.can(Capability.TRANSLATION):
        raise MissingCapability(
            f"translation metrics are StarGAN v2's; this is {ctx.trained.model}, which does not "
            "declare translation (an image-to-image model)"
        )
    if ctx.inception is None or ctx.data is None:
        raise ValueError("translation needs the Inception network and reference.data")
    metrics, notes = translation_metrics(
        ctx.trained, ctx.data, ctx.inception, ctx.lpips, ctx.lpips_note or "",
        seed=ctx.cfg.seed, device=ctx.device,
    )  # fmt: skip
    ctx.notes.update(notes)
    return metrics


def _import_metric_files() -> None:
    """A metric in a file of its own, ``pipeline/metrics/<name>.py``, registers itself (and
    any network of its own) when imported: it is imported here by its name in
    ``pipeline.params.MetricName``, so that file and that name are all a new metric takes."""
    for name in METRIC_NAMES:
        if name not in _METRICS and importlib.util.find_spec(f"pipeline.metrics.{name}"):
            importlib.import_module(f"pipeline.metrics.{name}")


def _check_names() -> None:
    """The registered metrics are params.yaml's names, in the same order."""
    if tuple(_METRICS) != METRIC_NAMES:
        raise ImportError(
            f"pipeline/metrics/registry.py registers {', '.join(_METRICS)} but "
            f"pipeline.params.MetricName lists {', '.join(METRIC_NAMES)}: make them the same"
        )


_import_metric_files()
_check_names()

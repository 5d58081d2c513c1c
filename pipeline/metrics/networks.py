"""The networks metrics run, by name, each with its loader: ``register_metric`` declares
the ones a metric needs and evaluate loads the union of what the asked metrics need.

A loader takes ``evaluate``'s params and returns ``(network, None)``, or ``(None, why not)``
where the weights are missing (the metrics needing it are then null with that reason); it
may raise StageError to stop the stage. A metric with a network of its own registers it
here with ``register_network`` from its own file. Loaders import their network (torch and
its weights) only when called.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.devices import pick_device
from pipeline.errors import StageError, first_line
from pipeline.params import EvaluateParams

if TYPE_CHECKING:
    from pipeline.faces.base import FaceDetector
    from pipeline.metrics.vgg16 import VGG16FC2

Loader = Callable[[EvaluateParams], tuple[Any, str | None]]
_LOADERS: dict[str, Loader] = {}


def register_network(name: str, load: Loader) -> None:
    if name in _LOADERS:
        raise ValueError(f"network {name} is registered twice")
    _LOADERS[name] = load


def network_names() -> tuple[str, ...]:
    return tuple(_LOADERS)


@dataclass
class LoadedNetworks:
    """The networks evaluate loaded, by name, and why each missing one is missing."""

    networks: dict[str, Any] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> Any:
        return self.networks.get(name)

    def note(self, name: str) -> str | None:
        return self.notes.get(name)


def load_networks(cfg: EvaluateParams, names: Iterable[str]) -> LoadedNetworks:
    """Load each of ``names`` once, in registration order."""
    wanted = set(names)
    unknown = wanted - set(_LOADERS)
    if unknown:
        raise ValueError(f"unknown networks {sorted(unknown)}; registered: {network_names()}")
    loaded = LoadedNetworks()
    for name, load in _LOADERS.items():
        if name in wanted:
            network, why = load(cfg)
            if network is not None:
                loaded.networks[name] = network
            if why:
                loaded.notes[name] = why
    return loaded


# --- the networks every built-in metric uses ------------------------------------------------


def load_inception_network(cfg: EvaluateParams) -> tuple[Any, None]:
    """The Inception network ``evaluate.extractor`` names (stops the stage if missing: no
    FID without it)."""
    from pipeline.metrics.inception import load_inception

    return load_inception(cfg.extractor, cfg.device, cfg.weights_dir, cfg.download_weights), None


def load_one_face_detector(cfg: EvaluateParams) -> tuple[FaceDetector | None, str | None]:
    """RetinaFace as ``evaluate.one_face`` says, or (None, why not) when its weights are
    missing: the rate is then reported as null with that reason, not a made-up number."""
    from pipeline.faces.base import load_detector

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


def load_pr_network(cfg: EvaluateParams) -> tuple[VGG16FC2 | None, str | None]:
    """VGG16 for precision/recall as ``evaluate.pr_features`` says, or (None, why not) when it
    is ``inception`` or the weights are missing: ``auto`` then uses Inception features,
    ``vgg16`` reports precision/recall as null with that reason."""
    from pipeline.metrics.vgg16 import load_vgg16

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


def load_ppl_distance(cfg: EvaluateParams, device=None):
    """LPIPS-VGG16 for PPL, or (None, why not) when its weights are missing."""
    from pipeline.lpips import load_lpips

    try:
        lpips = load_lpips(cfg.lpips_vgg, cfg.lpips_lin, cfg.weights_dir, cfg.download_weights)
    except StageError as exc:
        return None, f"LPIPS-VGG16 weights unavailable: {first_line(exc)}"
    return lpips.to(device if device is not None else pick_device(cfg.device)), None


register_network("inception", load_inception_network)
register_network("vgg", load_pr_network)
register_network("detector", load_one_face_detector)
register_network("lpips", load_ppl_distance)

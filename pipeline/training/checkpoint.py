"""Checkpoints: everything a run needs to continue bit for bit, written atomically.

Loaded with ``weights_only=True`` only: a checkpoint is tensors, numbers, strings, lists and
dicts, never pickled code. Each carries a checksum of its contents, verified on load: torch's
zip format does not check its tensors' bytes, so a bit flip on disk would load silently.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pipeline import io as pio
from pipeline.errors import StageError, first_line
from pipeline.models.base import Capability, capabilities_of
from pipeline.models.registry import MODELS
from pipeline.training.params import TrainParams

if TYPE_CHECKING:
    from pipeline.models.base import GANModel

# 2: with a checksum (format 1, without one, still loads, unverified)
FORMAT = 2
FORMATS = (1, 2)
CHECKSUM_KEY = "checksum"
# What only continuing a run needs (optimizer and grad-scaler states, the RNG states): a
# snapshot or a mix has none of it.
RESUME_PREFIXES = ("opt_", "scaler_")
RESUME_KEYS = {"rng"}
MIXED_FROM = "mixed_from"  # a mix's record of its inputs (steamgan mix)
HASH_LENGTH = 16  # hex digits of params_hash
# Keys that change how long a run is, how it is logged or where it runs, not what it computes:
# a run may be continued with other values of these.
RUN_KEYS = {
    "steps",
    "checkpoint_every",
    "sample_every",
    "snapshot_every",
    "log_every",
    "eval_every",
    "eval_images",
    "workers",
    "threads",
    "resume_from",
    "nan_tolerance",
    "nan_lr_factor",
    "device",
    "compile",
    "grid",
}
# One section per model (train.model's choices) and per augmentation (train.augment's
# resolved kind → its section): only the chosen ones shape a run.
MODEL_SECTIONS = tuple(MODELS)
AUGMENT_SECTIONS = {"diffaugment": "aug", "ada": "ada"}
# The engine's keys added after runs existed, with the value that means what those runs
# did: at that value they are left out of the hash, so upgrading does not set every old run
# aside (a model's own such keys: its params class's ``later_keys``).
LATER_KEYS: dict[tuple[str, ...], Any] = {
    ("balance_classes",): False,
}


def defining_params(params: dict, augment_kind: str) -> dict:
    """The part of a ``train`` params dump that a run's math depends on: the engine's keys
    (less RUN_KEYS), the chosen model's section and the active augmentation's section. A
    change to another model's section (``lightweight.lr`` under ``model: stylegan2``) or to
    an unused augmentation does not make another run."""
    sections = {*MODEL_SECTIONS, *AUGMENT_SECTIONS.values(), "augment"}
    defining = {k: v for k, v in params.items() if k not in RUN_KEYS and k not in sections}
    defining["augment"] = augment_kind  # resolved: auto and its explicit value are one run
    model = params.get("model")
    if model in MODEL_SECTIONS:
        spec = MODELS[model]
        section = params.get(model)
        # resolved, as augment is: a null and the value it stands for are one run
        defining[model] = (
            spec.params.resolved(section, params.get("image_size"))
            if isinstance(section, dict)
            else section
        )
    augment_section = AUGMENT_SECTIONS.get(augment_kind)
    if augment_section:
        defining[augment_section] = params.get(augment_section)
    for path, value in later_keys(model).items():
        *parents, key = path
        holder = defining
        for parent in parents:
            holder = holder.get(parent) if isinstance(holder, dict) else None
        if isinstance(holder, dict) and holder.get(key, value) == value:
            if parents:  # a copy: the params dump itself is left as it was
                _drop_nested(defining, parents, key)
            else:
                holder.pop(key, None)
    return defining


def later_keys(model: Any) -> dict[tuple[str, ...], Any]:
    """Every key added after runs existed, as a path into a ``train`` params dump, with
    the value that means what those runs did: the engine's and ``model``'s own."""
    later = dict(LATER_KEYS)
    if model in MODEL_SECTIONS:
        later.update({(model, k): v for k, v in MODELS[model].params.later_keys.items()})
    return later


def run_params(dump: dict) -> dict:
    """A checkpoint's ``train`` params dump with the keys added since it was written set to
    what its run did (``later_keys``), not to today's defaults: a default that changes
    (``dcgan.g_activation``) must not rebuild an old generator differently from how it was
    trained. The dump itself is left as it was."""
    dump = dict(dump)
    for path, value in later_keys(dump.get("model")).items():
        *parents, key = path
        holder = dump
        for parent in parents:
            if not isinstance(holder.get(parent), dict):
                break
            holder[parent] = holder = dict(holder[parent])
        else:
            holder.setdefault(key, value)
    return dump


def _drop_nested(tree: dict, parents: list[str], key: str) -> None:
    for parent in parents:
        tree[parent] = dict(tree[parent])
        tree = tree[parent]
    tree.pop(key, None)


def params_hash(params: TrainParams, data_fingerprint: str, augment_kind: str) -> str:
    """What a checkpoint's training depends on: the defining params, and the data."""
    defining = defining_params(params.model_dump(mode="json"), augment_kind)
    text = json.dumps({"params": defining, "data": data_fingerprint}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_LENGTH]


def safe_hash(value: Any) -> str | None:
    """``value`` if it is a params hash (hex, HASH_LENGTH digits), else None: a value read
    from a checkpoint may name a folder only after this check (a crafted checkpoint could
    hold ``../../x`` or an absolute path)."""
    if isinstance(value, str) and re.fullmatch(f"[0-9a-f]{{{HASH_LENGTH}}}", value):
        return value
    return None


def changed_keys(old: dict, new: dict) -> list[str]:
    """Dotted keys whose values differ between two params dumps (for the refusal message)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return []
    keys = []
    for key in sorted(set(old) | set(new), key=str):
        if key in RUN_KEYS:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += [f"{key}.{k}" for k in changed_keys(a, b)]
        elif a != b:
            keys.append(str(key))
    return keys


def all_finite(state: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in state.values() if torch.is_floating_point(t))


def checksum(checkpoint: dict[str, Any]) -> str:
    """SHA-256 over every value of a checkpoint but the checksum itself: tensors by dtype,
    shape and bytes, other values by ``repr``, dict keys in sorted order."""
    digest = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            digest.update(b"{")
            for key in sorted(value, key=repr):
                digest.update(repr(key).encode())
                feed(value[key])
            digest.update(b"}")
        elif isinstance(value, list | tuple):
            digest.update(b"[")
            for item in value:
                feed(item)
            digest.update(b"]")
        else:
            digest.update(repr(value).encode())

    feed({k: v for k, v in checkpoint.items() if k != CHECKSUM_KEY})
    return digest.hexdigest()


def save_checkpoint(path: str | Path, checkpoint: dict[str, Any]) -> None:
    contents = {"format": FORMAT, **checkpoint}
    contents[CHECKSUM_KEY] = checksum(contents)
    with pio.atomic_path(path) as tmp:
        torch.save(contents, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint, verified against its checksum (format 1 ones, from before checksums,
    load unverified); anything else stops with one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise StageError(f"{path}: checkpoint not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = first_line(exc)
        raise StageError(f"{path}: not a loadable checkpoint ({first}); delete it") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") not in FORMATS:
        raise StageError(f"{path}: not a steam-gan checkpoint (format {FORMAT})")
    if checkpoint["format"] >= 2 and checkpoint.get(CHECKSUM_KEY) != checksum(checkpoint):
        raise StageError(
            f"{path}: damaged checkpoint (its contents do not match its checksum); "
            "delete it or restore it from a copy (dvc checkout, or data/train/superseded/)"
        )
    return checkpoint


def can_continue(checkpoint: dict[str, Any]) -> bool:
    """Whether a run can continue from ``checkpoint``: only a training checkpoint holds the
    optimizer and RNG states. A snapshot or a mix (``steamgan mix``) holds weights only;
    written over a run's checkpoint, it must not be taken for it."""
    return (
        checkpoint.keys() >= RESUME_KEYS
        and any(key.startswith(RESUME_PREFIXES) for key in checkpoint)
        and MIXED_FROM not in checkpoint
    )


def kind_of(checkpoint: dict[str, Any]) -> str:
    """What a checkpoint is, for messages."""
    if MIXED_FROM in checkpoint:
        return "a mix of snapshots (steamgan mix)"
    return "a training checkpoint" if can_continue(checkpoint) else "a snapshot (weights only)"


def kimg(nimg: int) -> float:
    return math.floor(nimg / 100) / 10


@dataclass
class TrainedGenerator:
    """A checkpoint's G_ema, ready to sample: what evaluate and render start from."""

    G: torch.nn.Module
    model: str  # train.model
    image_size: int
    latent_dim: int
    kimg: float
    params: TrainParams
    path: Path
    net: GANModel | None = None  # the whole model for sampling, its G being ``G``
    classes: list[str] = field(default_factory=list)  # class names; empty: unconditional

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def capabilities(self) -> frozenset[Capability]:
        """The model's declared capabilities (a bare generator: what its members show)."""
        return capabilities_of(self.G if self.net is None else self.net)

    def can(self, capability: Capability) -> bool:
        return capability in self.capabilities

    def sample(
        self,
        z: torch.Tensor,
        labels: torch.Tensor | None = None,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
    ) -> torch.Tensor:
        """Images for latents ``z`` (and class ``labels`` for a conditional model), made by
        the model's own ``sample`` so that evaluate and render work for every model."""
        if self.net is None:  # a bare generator (built in code, not from a checkpoint)
            from pipeline.training.sampling import generator_call

            if labels is not None:
                raise ValueError(f"{self.path}: a bare generator takes no labels")
            return generator_call(self.G, z, truncation_psi, truncation_cutoff)
        return self.net.sample(z, labels, truncation_psi, truncation_cutoff)


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> TrainedGenerator:
    """Rebuild ``train.model`` from a checkpoint's params and load its ``G_ema`` (eval mode)."""
    from pipeline.models import build_model  # models import this module's package

    path = Path(path)
    checkpoint = load_checkpoint(path)
    try:
        params = TrainParams.model_validate(run_params(checkpoint["params"]))
        params = params.model_copy(update={"resume_from": None})
        classes = list(checkpoint.get("classes") or [])
        net = build_model(params, for_sampling=True, num_classes=len(classes))
        net.load_ema(checkpoint)
        G = net.G
    except (KeyError, ValueError, RuntimeError) as exc:
        first = first_line(exc)
        raise StageError(f"{path}: cannot rebuild its generator ({first})") from None
    net = net.to(device).eval().requires_grad_(False)
    return TrainedGenerator(
        G,
        checkpoint["model"],
        checkpoint["image_size"],
        checkpoint["latent_dim"],
        float(checkpoint.get("kimg", 0.0)),
        params,
        path,
        net,
        classes if net.num_classes else [],  # an unconditional model ignores the labels
    )

"""Checkpoints: everything a run needs to continue bit for bit, written atomically.

Loaded with ``weights_only=True`` only: a checkpoint is tensors, numbers, strings, lists and
dicts, never pickled code.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline import io as pio
from pipeline.errors import StageError
from pipeline.training.params import TrainParams

FORMAT = 1
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


def params_hash(params: TrainParams, data_fingerprint: str) -> str:
    """What a checkpoint's training depends on: the params that shape the math, and the data."""
    defining = {k: v for k, v in params.model_dump(mode="json").items() if k not in RUN_KEYS}
    text = json.dumps({"params": defining, "data": data_fingerprint}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def changed_keys(old: dict, new: dict) -> list[str]:
    """Dotted keys whose values differ between two params dumps (for the refusal message)."""
    keys = []
    for key in sorted(set(old) | set(new)):
        if key in RUN_KEYS:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += [f"{key}.{k}" for k in changed_keys(a, b)]
        elif a != b:
            keys.append(key)
    return keys


def all_finite(state: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in state.values() if torch.is_floating_point(t))


def save_checkpoint(path: str | Path, checkpoint: dict[str, Any]) -> None:
    with pio.atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **checkpoint}, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise StageError(f"{path}: checkpoint not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = (str(exc).splitlines() or [""])[0][:200]
        raise StageError(f"{path}: not a loadable checkpoint ({first}); delete it") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise StageError(f"{path}: not a steam-gan checkpoint (format {FORMAT})")
    return checkpoint


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


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> TrainedGenerator:
    """Rebuild ``train.model`` from a checkpoint's params and load its ``G_ema`` (eval mode)."""
    from pipeline.models import build_model  # models import this module's package

    path = Path(path)
    checkpoint = load_checkpoint(path)
    try:
        params = TrainParams.model_validate(checkpoint["params"])
        params = params.model_copy(update={"resume_from": None})
        G = build_model(params, for_sampling=True).G
        G.load_state_dict(checkpoint["G_ema"])
    except (KeyError, ValueError, RuntimeError) as exc:
        first = (str(exc).splitlines() or [""])[0][:200]
        raise StageError(f"{path}: cannot rebuild its generator ({first})") from None
    G = G.to(device).eval().requires_grad_(False)
    return TrainedGenerator(
        G,
        checkpoint["model"],
        checkpoint["image_size"],
        checkpoint["latent_dim"],
        float(checkpoint.get("kimg", 0.0)),
        params,
        path,
    )

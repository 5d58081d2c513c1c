"""Mixing snapshots (stochastic weight averaging): the mean of one run's weights over several
of its snapshots, written as a checkpoint that samples like any other.

A GAN's weights keep moving around a good solution instead of settling in it (the seed's
StarGAN v2 runs showed parameters oscillating from snapshot to snapshot); averaging
snapshots of one run (Izmailov et al. 2018, "Averaging Weights Leads to Wider Optima and
Better Generalization") lands nearer the middle, and is free to try: the snapshots exist.

``mix_checkpoints`` is pure (loaded checkpoints in, a checkpoint dict out); ``pick_snapshots``
finds which files to load.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import StageError
from pipeline.training.checkpoint import (
    CHECKSUM_KEY,
    MIXED_FROM,
    RESUME_KEYS,
    RESUME_PREFIXES,
    changed_keys,
    checksum,
    load_checkpoint,
)
from pipeline.training.ema import OTHERS_KEY, SAMPLED_KEY, flat_ema_name, nest_flat

# What only resuming needs (RESUME_PREFIXES, RESUME_KEYS): a mix is for sampling (render,
# evaluate) or for starting a new run from (train.resume_from), never for continuing one, so
# they are dropped.
FILE_KEYS = {"format", CHECKSUM_KEY}  # written again by save_checkpoint
SAMPLED = SAMPLED_KEY  # what every sampler loads (checkpoint.load_generator)
# Spectral normalisation's power-iteration state (torch.nn.utils.parametrizations:
# ``<module>.parametrizations.weight.0._u`` / ``._v``): estimates of the top singular vectors
# of the newest weights, not weights. Averaged, they would shrink below unit length and
# under-estimate the spectral norm; the newest ones estimate the averaged weights' to second
# order, as G's own vectors already serve G_ema's weights (the EMA copies buffers).
SPECTRAL_VECTORS = re.compile(r"(^|\.)parametrizations\.\w+\.\d+\._[uv]$")
HEADER = ("model", "params_hash", "params", "state")  # what a mix needs of every input


def is_state_dict(value: Any) -> bool:
    """A module's ``state_dict()``: names to tensors (not an optimizer's or a scaler's)."""
    return (
        isinstance(value, dict)
        and bool(value)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    )


def networks(checkpoint: dict) -> dict[str, dict[str, torch.Tensor]]:
    """Every network's state dict by name: the trained modules (``G``, ``D``, a model's
    others), ``G_ema``, and each of ``ema`` as ``ema/<name>`` (``ema.flat_ema_name``)."""
    found = {}
    for key, value in checkpoint.items():
        if key in RESUME_KEYS or key.startswith(RESUME_PREFIXES):
            continue
        if key == OTHERS_KEY and isinstance(value, dict):
            found.update({flat_ema_name(n): s for n, s in value.items() if is_state_dict(s)})
        elif is_state_dict(value):
            found[key] = value
    return found


def step_of(checkpoint: dict) -> int:
    return int(checkpoint["state"]["step"])


def average(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The mean, summed in float64 and rounded once to the tensors' dtype: for two float32
    tensors exactly ``(a + b) / 2``; for many, no drift from a long float32 sum."""
    total = tensors[0].to(torch.float64, copy=True)
    for tensor in tensors[1:]:
        total += tensor
    return (total / len(tensors)).to(tensors[0].dtype)


def mix_state(name: str, states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One network's state dicts (oldest first) averaged: floating tensors (weights, biases,
    BatchNorm running means and variances, a mapping network's W average) by their mean; integer
    and boolean buffers (BatchNorm's ``num_batches_tracked``) and spectral normalisation's
    power-iteration vectors from the newest."""
    newest = states[-1]
    mixed = {}
    for key, value in newest.items():
        if torch.is_floating_point(value) and not SPECTRAL_VECTORS.search(key):
            mixed[key] = average([state[key] for state in states])
        else:
            mixed[key] = value.detach().clone()
    return mixed


def _check_header(path: str, checkpoint: dict) -> None:
    for key in HEADER:
        if key not in checkpoint:
            raise StageError(
                f"{path}: not a snapshot or checkpoint of a training run (no {key!r}); "
                "mix files from data/train/snapshots or data/train/checkpoints"
            )
    state = checkpoint["state"]
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise StageError(
            f"{path}: not a snapshot or checkpoint of a training run (no state.step); "
            "mix files from data/train/snapshots or data/train/checkpoints"
        )
    if not is_state_dict(checkpoint.get(SAMPLED)):
        raise StageError(
            f"{path}: holds no {SAMPLED} (no generator to sample); "
            "mix files from data/train/snapshots or data/train/checkpoints"
        )


def _check_same_run(path: str, checkpoint: dict, ref_path: str, ref: dict) -> None:
    if checkpoint["model"] != ref["model"]:
        raise StageError(
            f"{path}: a {checkpoint['model']} snapshot, {ref_path} a {ref['model']} one; "
            "mix snapshots of one run"
        )
    if checkpoint["params_hash"] != ref["params_hash"]:
        changed = changed_keys(checkpoint["params"], ref["params"])
        what = ", ".join(f"train.{k}" for k in changed)[:200] if changed else "the dataset"
        raise StageError(
            f"{path}: another run than {ref_path} (params_hash {checkpoint['params_hash']} ≠ "
            f"{ref['params_hash']}, changed: {what}); mix snapshots of one run (this run's "
            "are in data/train/snapshots, earlier runs' in data/train/superseded/*/snapshots)"
        )


def _check_tensors(
    name: str, path: str, state: dict, ref_path: str, ref: dict[str, torch.Tensor]
) -> None:
    missing = sorted(ref.keys() - state.keys()) or sorted(state.keys() - ref.keys())
    if missing:
        raise StageError(
            f"{path}: {name}.{missing[0]} is in one of {path}, {ref_path} only: "
            "not snapshots of one model; mix snapshots of one run"
        )
    for key, value in state.items():
        other = ref[key]
        if value.shape != other.shape or value.dtype != other.dtype:
            raise StageError(
                f"{path}: {name}.{key} is {value.dtype} {tuple(value.shape)}, in {ref_path} "
                f"{other.dtype} {tuple(other.shape)}: not snapshots of one model; "
                "mix snapshots of one run"
            )
        if torch.is_floating_point(value) and not bool(torch.isfinite(value).all()):
            raise StageError(
                f"{path}: {name}.{key} has non-finite values (NaN or inf); leave this "
                "snapshot out of the mix"
            )


def mix_checkpoints(sources: Sequence[tuple[str, dict]]) -> tuple[dict, list[str]]:
    """The average of ``sources`` (path, loaded checkpoint), all of one run, as a checkpoint
    dict for ``save_checkpoint``, and the networks left out (not in every input).

    Every network all inputs hold is averaged (``mix_state``); the header (model, params,
    state, kimg, classes…) is the newest input's (highest step), with ``mixed_from`` added:
    each input's path, step, kimg and checksum, oldest first. Optimizer, scaler and RNG
    states are dropped. Refuses (StageError naming the file) an empty list, a file that is
    not a run's snapshot or checkpoint, the same snapshot twice, snapshots of other runs or
    models, and tensors whose names, shapes or dtypes differ or that are not finite.
    """
    if not sources:
        raise StageError(
            "no snapshots to mix: give their paths (steamgan mix SNAPSHOT...), "
            "or set mix.last or mix.snapshots"
        )
    for path, checkpoint in sources:
        _check_header(path, checkpoint)
    ordered = sorted(sources, key=lambda source: step_of(source[1]))  # stable: ties keep order
    digests: dict[str, str] = {}
    for path, checkpoint in ordered:
        digest = checkpoint.get(CHECKSUM_KEY) or checksum(checkpoint)
        if digest in digests:
            raise StageError(f"{path}: the same snapshot as {digests[digest]}; give each once")
        digests[digest] = path
    ref_path, ref = ordered[-1]  # the newest: its header and its integer buffers
    found = [networks(checkpoint) for _, checkpoint in ordered]
    common = [name for name in found[-1] if all(name in nets for nets in found)]
    left_out = sorted({name for nets in found for name in nets} - set(common))
    mixed_networks: dict[str, dict[str, torch.Tensor]] = {}
    for (path, checkpoint), nets in zip(ordered, found, strict=True):
        _check_same_run(path, checkpoint, ref_path, ref)
        for name in common:
            _check_tensors(name, path, nets[name], ref_path, found[-1][name])
    for name in common:
        mixed_networks[name] = mix_state(name, [nets[name] for nets in found])

    header = {
        key: value
        for key, value in ref.items()
        if key not in FILE_KEYS
        and key not in RESUME_KEYS
        and not key.startswith(RESUME_PREFIXES)
        and key != OTHERS_KEY
        and key not in found[-1]
    }
    header[MIXED_FROM] = [
        {
            "path": path,
            "step": step_of(checkpoint),
            "kimg": float(checkpoint.get("kimg", 0.0)),
            "checksum": digest,
        }
        for (path, checkpoint), digest in zip(ordered, digests, strict=True)
    ]
    return {**header, **nest_flat(mixed_networks)}, left_out


def expand(patterns: Sequence[str]) -> list[Path]:
    """Paths and globs (``data/train/snapshots/step-0000*.pt``) as files, in the order
    given (a glob's matches sorted), each once; a pattern matching nothing is refused."""
    files: dict[Path, None] = {}
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        matches = [m for m in matches if Path(m).is_file()]
        if not matches:
            raise StageError(
                f"{pattern}: matches no file; give snapshot or checkpoint paths (or globs "
                "such as data/train/snapshots/step-*.pt)"
            )
        for match in matches:
            files.setdefault(Path(match), None)
    return list(files)


def pick_snapshots(
    files: Sequence[Path], last: int, run_hash: str | None = None, newest_first: bool = False
) -> list[tuple[str, dict]]:
    """Load ``files`` and keep the newest ``last`` of them (by step; 0: all), of the run
    ``run_hash`` when given (others skipped: a snapshot folder can hold another run's).
    At most ``last`` + 1 checkpoints are in memory at a time; ``newest_first``: the files
    come newest first (``step-NNNNNNNN.pt`` names sorted backwards), so reading stops once
    ``last`` are found."""
    kept: list[tuple[str, dict]] = []
    for path in files:
        checkpoint = load_checkpoint(path)
        if run_hash is not None and checkpoint.get("params_hash") != run_hash:
            continue
        _check_header(str(path), checkpoint)
        kept.append((str(path), checkpoint))
        kept.sort(key=lambda source: step_of(source[1]))
        if last:
            kept = kept[-last:]
            if newest_first and len(kept) == last:
                break
    return kept

"""Which torch device a stage runs on: one rule for every stage's ``device`` param."""

from __future__ import annotations

import torch

from pipeline.errors import StageError


def pick_device(setting: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` is CUDA when there is one, else the CPU; ``cuda`` is this process's GPU
    (``local_rank`` under torchrun); ``cuda:N``, ``cpu`` and ``mps`` are taken as given."""
    if isinstance(setting, torch.device):
        return setting
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda":
        setting = f"cuda:{local_rank}"
    try:
        device = torch.device(setting)
    except RuntimeError:
        raise StageError(f"device {setting!r}: expected auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise StageError(f"device {setting!r}: no CUDA device here; use auto or cpu")
    return device

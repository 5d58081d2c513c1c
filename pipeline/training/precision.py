"""Mixed precision: ``auto`` is bf16 autocast where the GPU supports it, fp16 with a
GradScaler on older GPUs, and fp32 on the CPU."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from pipeline.errors import StageError


@dataclass(frozen=True)
class Precision:
    name: str  # bf16, fp16 or fp32
    dtype: torch.dtype | None  # autocast dtype; None: no autocast

    @property
    def needs_scaler(self) -> bool:
        return self.name == "fp16"

    def autocast(self, device: torch.device):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)

    def scaler(self, device: torch.device) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(device.type, enabled=self.needs_scaler)


def resolve_precision(setting: str, device: torch.device) -> Precision:
    if setting == "auto":
        if device.type != "cuda":
            return Precision("fp32", None)
        setting = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if setting == "fp32":
        return Precision("fp32", None)
    if setting == "fp16" and device.type != "cuda":
        raise StageError("train.precision: fp16 needs a CUDA GPU; use bf16 or fp32 on the CPU")
    return Precision(setting, torch.bfloat16 if setting == "bf16" else torch.float16)

"""Exponential moving average of the generator's weights: what samples and metrics use."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.training.params import EmaParams


def ema_beta(cfg: EmaParams, batch_size: int, nimg: int) -> float:
    """Per-step decay: ``cfg.decay``, or from a half-life in kimg (NVlabs' form), whose
    ramp-up keeps the half-life at most ``rampup`` × images seen so far early in training."""
    if cfg.decay is not None:
        return cfg.decay
    half_life = cfg.half_life_kimg * 1000
    if cfg.rampup is not None:
        half_life = min(half_life, nimg * cfg.rampup)
    return 0.5 ** (batch_size / max(half_life, 1e-8))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, beta: float) -> None:
    ema_params, params = list(ema.parameters()), list(model.parameters())
    if len(ema_params) != len(params):
        raise ValueError("EMA and model have different parameters")
    # one fused kernel launch per group of tensors instead of one per parameter
    torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1 - beta)
    for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)  # batch-norm statistics and spectral-norm vectors follow G directly

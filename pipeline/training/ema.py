"""Exponential moving average of the generator's weights: what samples and metrics use."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.training.params import EmaParams

# Where a checkpoint keeps the averaged networks, written out here only: G's (what every
# sampler loads) under ``G_ema``; any other's (StarGAN v2's mapping network and style
# encoder) in the ``ema`` dict by module name. Flattened, those are ``ema/<name>``.
SAMPLED_KEY = "G_ema"
OTHERS_KEY = "ema"


def ema_entries(states: dict[str, dict]) -> dict[str, dict]:
    """The averaged networks' state dicts by module name as checkpoint entries."""
    others = {name: state for name, state in states.items() if name != "G"}
    return {SAMPLED_KEY: states["G"], **({OTHERS_KEY: others} if others else {})}


def ema_state(checkpoint: dict, name: str) -> dict:
    """Module ``name``'s averaged weights in a checkpoint (KeyError if it has none)."""
    return checkpoint[SAMPLED_KEY] if name == "G" else checkpoint[OTHERS_KEY][name]


def flat_ema_name(name: str) -> str:
    """Module ``name``'s averaged network as one key: ``G_ema`` or ``ema/<name>``."""
    return SAMPLED_KEY if name == "G" else f"{OTHERS_KEY}/{name}"


def nest_flat(networks: dict[str, dict]) -> dict[str, dict]:
    """Flat keys (``G``, ``G_ema``, ``ema/<name>``…) back into checkpoint entries."""
    prefix = f"{OTHERS_KEY}/"
    others = {n.removeprefix(prefix): s for n, s in networks.items() if n.startswith(prefix)}
    nested = {n: s for n, s in networks.items() if not n.startswith(prefix)}
    return {**nested, **({OTHERS_KEY: others} if others else {})}


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

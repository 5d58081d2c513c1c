"""Projection of real images into a style-based generator's W or W+ space.

The optimisation of Karras et al., "Analyzing and Improving the Image Quality of StyleGAN"
(CVPR 2020), appendix D, written from the paper: start at W's mean; Adam on w (one w for
every layer, or one per layer in W+) and on the noise maps; Gaussian noise on w, scaled by
W's std and ramped down, explores early; the learning rate ramps up and down (cosine); the
noise maps are kept from carrying the image by penalising their autocorrelation at every
scale and renormalising them after each step.

The reconstruction loss is LPIPS-VGG16 when its weights are available. Otherwise it is the
pixel MSE plus, when a feature network is given (the FID Inception network), the distance
between the images' unit-length features; which one ran is returned with the result.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.errors import StageError
from pipeline.lpips import LPIPS, load_lpips
from pipeline.models.base import NoiseInjection, set_noise_mode
from pipeline.render.params import ProjectParams
from pipeline.render.synthesis import Synth, WStats
from pipeline.training.sampling import to_uint8

# images in [-1, 1] (any size) → N×D features, differentiable
FeatureNetwork = Callable[[torch.Tensor], torch.Tensor]
# (images, targets) → one loss per image
LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class ReconstructionLoss:
    function: LossFunction
    name: str  # "lpips_vgg16", "pixel_mse+inception_features" or "pixel_mse"
    note: str = ""  # why it is not LPIPS, when it is not


def lpips_distance(lpips: LPIPS) -> LossFunction:
    def distance(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] < 64:  # LPIPS' five VGG stages need at least 64 px
            images = F.interpolate(images, size=64, mode="bilinear", align_corners=False)
            targets = F.interpolate(targets, size=64, mode="bilinear", align_corners=False)
        return lpips(images, targets)

    return distance


def pixel_feature_distance(
    features: FeatureNetwork | None, pixel_weight: float, feature_weight: float
) -> LossFunction:
    def distance(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = pixel_weight * (images - targets).pow(2).mean(dim=(1, 2, 3))
        if features is not None and feature_weight:
            a = F.normalize(features(images).flatten(1), dim=1)
            b = F.normalize(features(targets).flatten(1), dim=1)
            loss = loss + feature_weight * (a - b).pow(2).sum(1)
        return loss

    return distance


INCEPTION_SIZE = 299


def inception_features(network: Callable[[torch.Tensor], torch.Tensor]) -> FeatureNetwork:
    """The FID Inception network (N×3×299×299 of (x − 128) / 128 for x in 0…255, to N×2048)
    as a feature network for images in [-1, 1] of any size: resized bilinearly to 299."""

    def features(images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != INCEPTION_SIZE:
            images = F.interpolate(
                images, size=INCEPTION_SIZE, mode="bilinear", align_corners=False
            )
        return network(((images + 1) * 127.5 - 128) / 128)

    return features


def fid_inception_features(
    p: ProjectParams, device: torch.device, on_missing: Callable[[str], None] = lambda why: None
) -> FeatureNetwork | None:
    """The FID Inception trunk, frozen but differentiable, as projection's feature network;
    None (and ``on_missing`` told why) when its weights cannot be had."""
    from pipeline.metrics.inception import load_inception

    try:
        inception = load_inception("auto", device, p.weights_dir, p.download_weights)
    except StageError as exc:
        on_missing(str(exc))
        return None
    trunk = inception.trunk
    for param in trunk.parameters():  # a ScriptModule: no requires_grad_()
        param.requires_grad_(False)

    def features(x: torch.Tensor) -> torch.Tensor:
        with torch.jit.optimized_execution(False):  # see InceptionV3.forward
            return trunk(x).reshape(len(x), -1)

    return inception_features(features)


def reconstruction_loss(
    p: ProjectParams,
    device: torch.device,
    load_features: Callable[[], FeatureNetwork | None] | None = None,
) -> ReconstructionLoss:
    """``project.loss``: ``lpips``; ``auto`` = LPIPS if its weights load, else pixel +
    features; ``pixel_inception`` = pixel + features. ``load_features`` is called only when
    the features are used; without it (or when it gives None) the loss is the pixel MSE."""
    note = ""
    if p.loss in ("auto", "lpips"):
        try:
            lpips = load_lpips(p.lpips_vgg, p.lpips_lin, p.weights_dir, p.download_weights)
            return ReconstructionLoss(lpips_distance(lpips.to(device)), "lpips_vgg16")
        except StageError as exc:
            if p.loss == "lpips":
                raise
            note = f"LPIPS-VGG16 unavailable: {exc}"
    features = load_features() if load_features is not None else None
    if features is None:
        note = "; ".join(filter(None, [note, "no feature network given: pixel MSE alone"]))
        return ReconstructionLoss(
            pixel_feature_distance(None, p.pixel_weight, 0), "pixel_mse", note
        )
    function = pixel_feature_distance(features, p.pixel_weight, p.feature_weight)
    return ReconstructionLoss(function, "pixel_mse+inception_features", note)


def noise_penalty(maps: list[torch.Tensor]) -> torch.Tensor:
    """Squared autocorrelation of each noise map with itself shifted by one pixel, down and
    right, at every scale down to 8×8: zero for white noise, large when a map draws."""
    total = torch.zeros((), device=maps[0].device) if maps else torch.zeros(())
    for noise in maps:
        while True:
            total = total + (noise * noise.roll(1, dims=3)).mean().pow(2)
            total = total + (noise * noise.roll(1, dims=2)).mean().pow(2)
            if noise.shape[-1] <= 8:
                break
            noise = F.avg_pool2d(noise, 2)
    return total


def learning_rate(p: ProjectParams, t: float) -> float:
    """Cosine ramp down over the last ``lr_rampdown`` of the steps, linear ramp up over the
    first ``lr_rampup``; ``t`` is the fraction of steps done."""
    ramp = min(1.0, (1 - t) / p.lr_rampdown) if p.lr_rampdown else 1.0
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    if p.lr_rampup:
        ramp *= min(1.0, t / p.lr_rampup)
    return p.lr * ramp


@dataclass
class Projection:
    targets: torch.Tensor  # N×3×H×W in [-1, 1], CPU
    start: torch.Tensor  # the images at the start (W's mean)
    final: torch.Tensor  # the images at the projected ws
    ws: torch.Tensor  # N×num_ws×w_dim
    start_loss: list[float]  # reconstruction loss per target at the start
    final_loss: list[float]  # and at the end (both without the exploration noise on w)
    loss_curve: list[float] = field(default_factory=list)  # mean loss per step
    frames: list[np.ndarray] = field(default_factory=list)  # target | current, per frame


def project(
    synth: Synth,
    targets: torch.Tensor,
    stats: WStats,
    p: ProjectParams,
    loss: ReconstructionLoss,
    seed: int = 0,
    advance: Callable[[], None] | None = None,
) -> Projection:
    """Find ws (and noise maps) whose images reproduce ``targets`` (N×3×H×W in [-1, 1]).
    Each target has its own w and noise maps; their losses are summed, so the targets are
    optimised independently, in one batch."""
    synth.require_mapping("projection")
    device, count = synth.device, len(targets)
    G = copy.deepcopy(synth.G).eval().requires_grad_(False)  # its noise maps get replaced
    targets_device = targets.to(device)
    generator = torch.Generator().manual_seed(seed)

    maps = []
    for layer in G.modules():
        if isinstance(layer, NoiseInjection) and hasattr(layer, "const"):
            noise = torch.randn((count, *layer.const.shape[1:]), generator=generator)
            layer.const = noise.to(device).requires_grad_(True)
            maps.append(layer.const)
    set_noise_mode(G, "const")

    width = G.num_ws if p.space == "w_plus" else 1
    w_start = stats.mean.to(device)[None, None].repeat(count, width, 1)
    w_opt = w_start.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([w_opt, *maps], betas=(0.9, 0.999), lr=p.lr)

    def images_at(w: torch.Tensor) -> torch.Tensor:
        return G.synthesis(w.expand(-1, G.num_ws, -1))

    def frame(images: torch.Tensor) -> np.ndarray:
        side_by_side = torch.cat([targets_device, images], dim=3)  # N × 3 × H × 2W
        return np.concatenate(list(to_uint8(side_by_side)), axis=0)  # targets stacked

    with torch.no_grad():
        start = images_at(w_start)
        start_loss = loss.function(start, targets_device)
    frames, loss_curve = [frame(start)], []

    for step in range(p.steps):
        t = step / p.steps
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(p, t)
        spread = stats.std * p.initial_noise * max(0.0, 1 - t / p.noise_ramp) ** 2
        w_noise = torch.randn(w_opt.shape, generator=generator).to(device) * spread
        images = images_at(w_opt + w_noise)
        distance = loss.function(images, targets_device)
        total = distance.sum() + p.noise_regularize * noise_penalty(maps)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        with torch.no_grad():  # keep each map white noise of unit variance
            for noise in maps:
                noise -= noise.mean(dim=(1, 2, 3), keepdim=True)
                noise /= noise.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
        loss_curve.append(float(distance.detach().mean()))
        if (step + 1) % p.video_every == 0 or step + 1 == p.steps:
            with torch.no_grad():
                frames.append(frame(images_at(w_opt)))
        if advance is not None:
            advance()

    with torch.no_grad():
        final = images_at(w_opt)
        final_loss = loss.function(final, targets_device)
    return Projection(
        targets=targets,
        start=start.float().cpu(),
        final=final.float().cpu(),
        ws=w_opt.detach().expand(-1, G.num_ws, -1).float().cpu(),
        start_loss=start_loss.tolist(),
        final_loss=final_loss.tolist(),
        loss_curve=loss_curve,
        frames=frames,
    )

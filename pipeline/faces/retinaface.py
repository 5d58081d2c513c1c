"""RetinaFace (Deng et al. 2019) in PyTorch: MobileNet-0.25 or ResNet-50 backbone, FPN, SSH
context modules, class/box/landmark heads on three levels, prior boxes, decoding and NMS.

Written here because the packaged implementations cannot be used: ``retinaface-pytorch``
(ternaus) pins torch==1.9.0 and needs torchvision, which does not install with our torch,
and biubug6's projects are not packages. The module and parameter names follow biubug6's
``Pytorch_Retinaface`` so its checkpoints and ternaus' (the same network, trained again) load
as they are.

The variants differ in more than their weights, so each is named with everything that goes
with its checkpoint (see ``VARIANTS``): activation, anchor sizes, input colour order and
normalisation, and the input size it was meant for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.devices import pick_device
from pipeline.errors import StageError
from pipeline.faces.base import (
    FaceDetector,
    Faces,
    autocast,
    batched_nms,
    detect_in_batches,
    memory_format,
    pad_to_batch,
    register,
)
from pipeline.weights import fetch_weights, load_state_dict, sha256_file, weight_spec

BGR_MEAN = (104.0, 117.0, 123.0)  # biubug6: BGR pixels minus this
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # ternaus: RGB / 255, minus this, over IMAGENET_STD
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Variant:
    """One released RetinaFace: the network and the input handling its weights expect."""

    name: str
    backbone: str  # mobilenet0.25 | resnet50
    slope: float  # negative slope of the LeakyReLUs in backbone, FPN and SSH (0: ReLU)
    min_sizes: tuple[tuple[int, ...], ...]  # anchor sizes per level, in input pixels
    steps: tuple[int, ...]  # stride of each level
    variances: tuple[float, float]
    normalise: str  # bgr_mean | rgb_imagenet
    max_size: int | None  # long side capped at this (never enlarged); None: input size as is
    weights: str  # registry name in pipeline.weights
    # Thresholds for deciding how many faces there are, tuned for these weights: the seeds'
    # 0.08 / 0.01 suit the ternaus ResNet-50 and give 61-65% right with the 1MB model.
    confidence: float
    nms: float


RELEASE_ANCHORS = ((16, 32), (64, 128), (256, 512))
VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        # biubug6/Face-Detector-1MB-with-landmark: plain ReLU, smaller anchors, meant for
        # inputs whose long side is 320 or 640.
        Variant(
            "mobilenet0.25_1mb",
            "mobilenet0.25",
            0.0,
            ((10, 20), (32, 64), (128, 256)),
            (8, 16, 32),
            (0.1, 0.2),
            "bgr_mean",
            640,
            "retinaface_mobilenet0.25_1mb",
            0.9,  # Face-Detector-1MB; with nms 0.4, right on 43/46 shared photos alone
            0.4,
        ),
        # biubug6/Pytorch_Retinaface mobilenet0.25_Final.pth: LeakyReLU 0.1 throughout.
        Variant(
            "mobilenet0.25",
            "mobilenet0.25",
            0.1,
            RELEASE_ANCHORS,
            (8, 16, 32),
            (0.1, 0.2),
            "bgr_mean",
            None,
            "retinaface_mobilenet0.25",
            0.9,  # biubug6's test thresholds for drawing faces are 0.6 / 0.4; counting
            0.4,  # faces wants the stricter 0.9 of the 1MB model
        ),
        # biubug6/Pytorch_Retinaface Resnet50_Final.pth: FPN and SSH with 256 channels use
        # slope 0 (biubug6 uses 0.1 only up to 64 channels).
        Variant(
            "resnet50",
            "resnet50",
            0.0,
            RELEASE_ANCHORS,
            (8, 16, 32),
            (0.1, 0.2),
            "bgr_mean",
            None,
            "retinaface_resnet50",
            0.9,
            0.4,
        ),
        # ternaus/retinaface resnet50_2020-07-20: the same network, RGB input with ImageNet
        # normalisation, long side resized to max_size (the seeds used 840).
        Variant(
            "resnet50_ternaus",
            "resnet50",
            0.0,
            RELEASE_ANCHORS,
            (8, 16, 32),
            (0.1, 0.2),
            "rgb_imagenet",
            840,
            "retinaface_resnet50_ternaus",
            0.08,  # the seeds' confidence_threshold and nms_threshold
            0.01,
        ),
    )
}
DEFAULT_VARIANT = {"mobilenet0.25": "mobilenet0.25_1mb", "resnet50": "resnet50_ternaus"}


# --- the network --------------------------------------------------------------------------


def activation(slope: float) -> nn.Module:
    return nn.LeakyReLU(slope, inplace=True) if slope else nn.ReLU(inplace=True)


def conv_bn(cin: int, cout: int, stride: int, slope: float | None, kernel: int = 3):
    """Conv (no bias) + BatchNorm (+ activation unless ``slope`` is None)."""
    layers = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if slope is not None:
        layers.append(activation(slope))
    return nn.Sequential(*layers)


def conv_dw(cin: int, cout: int, stride: int, slope: float) -> nn.Sequential:
    """MobileNet's depthwise 3×3 then pointwise 1×1, each with BatchNorm and activation."""
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
        nn.BatchNorm2d(cin),
        activation(slope),
        nn.Conv2d(cin, cout, 1, 1, 0, bias=False),
        nn.BatchNorm2d(cout),
        activation(slope),
    )


class MobileNet025(nn.Module):
    """MobileNet-v1 at width 0.25, cut after its stride-32 stage; returns strides 8, 16, 32."""

    channels = (64, 128, 256)

    def __init__(self, slope: float):
        super().__init__()
        self.stage1 = nn.Sequential(
            conv_bn(3, 8, 2, slope),
            conv_dw(8, 16, 1, slope),
            conv_dw(16, 32, 2, slope),
            conv_dw(32, 32, 1, slope),
            conv_dw(32, 64, 2, slope),
            conv_dw(64, 64, 1, slope),
        )
        self.stage2 = nn.Sequential(
            conv_dw(64, 128, 2, slope), *(conv_dw(128, 128, 1, slope) for _ in range(5))
        )
        self.stage3 = nn.Sequential(conv_dw(128, 256, 2, slope), conv_dw(256, 256, 1, slope))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c3 = self.stage1(x)
        c4 = self.stage2(c3)
        return [c3, c4, self.stage3(c4)]


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck (stride on the 3×3), named as torchvision names it."""

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * 4
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ResNet50(nn.Module):
    """ResNet-50 without its classifier; returns layer2-4 (strides 8, 16, 32)."""

    channels = (512, 1024, 2048)

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for index, (width, blocks, stride) in enumerate(
            [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)], start=1
        ):
            layer = [Bottleneck(cin, width, stride)]
            layer += [Bottleneck(width * 4, width, 1) for _ in range(blocks - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*layer))
            cin = width * 4

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        return [c3, c4, self.layer4(c4)]


class FPN(nn.Module):
    """Top-down pathway: 1×1 lateral convs, nearest upsampling, 3×3 merges."""

    def __init__(self, channels: Sequence[int], out: int, slope: float):
        super().__init__()
        self.output1 = conv_bn(channels[0], out, 1, slope, kernel=1)
        self.output2 = conv_bn(channels[1], out, 1, slope, kernel=1)
        self.output3 = conv_bn(channels[2], out, 1, slope, kernel=1)
        self.merge1 = conv_bn(out, out, 1, slope)
        self.merge2 = conv_bn(out, out, 1, slope)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        p3, p4, p5 = self.output1(features[0]), self.output2(features[1]), self.output3(features[2])
        p4 = self.merge2(p4 + F.interpolate(p5, size=p4.shape[-2:], mode="nearest"))
        p3 = self.merge1(p3 + F.interpolate(p4, size=p3.shape[-2:], mode="nearest"))
        return [p3, p4, p5]


class SSH(nn.Module):
    """Context module: 3×3, 5×5 and 7×7 receptive fields (stacked 3×3s), concatenated."""

    def __init__(self, cin: int, cout: int, slope: float):
        super().__init__()
        self.conv3X3 = conv_bn(cin, cout // 2, 1, None)
        self.conv5X5_1 = conv_bn(cin, cout // 4, 1, slope)
        self.conv5X5_2 = conv_bn(cout // 4, cout // 4, 1, None)
        self.conv7X7_2 = conv_bn(cout // 4, cout // 4, 1, slope)
        self.conv7x7_3 = conv_bn(cout // 4, cout // 4, 1, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch5 = self.conv5X5_1(x)
        out = [self.conv3X3(x), self.conv5X5_2(branch5), self.conv7x7_3(self.conv7X7_2(branch5))]
        return F.relu(torch.cat(out, dim=1))


class Head(nn.Module):
    """A 1×1 conv giving ``size`` numbers per anchor, flattened to B×(H·W·anchors)×size."""

    def __init__(self, cin: int, anchors: int, size: int):
        super().__init__()
        self.size = size
        self.conv1x1 = nn.Conv2d(cin, anchors * size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1)
        return out.reshape(out.shape[0], -1, self.size)


class RetinaFaceNet(nn.Module):
    """Backbone → FPN → SSH per level → heads. Returns box deltas, class logits, landmarks."""

    def __init__(self, backbone: str, slope: float, anchors: int = 2):
        super().__init__()
        if backbone == "mobilenet0.25":
            self.body, out = MobileNet025(slope), 64
        elif backbone == "resnet50":
            self.body, out = ResNet50(), 256
        else:
            raise ValueError(f"unknown RetinaFace backbone {backbone!r}")
        self.fpn = FPN(self.body.channels, out, slope)
        self.ssh1, self.ssh2, self.ssh3 = (SSH(out, out, slope) for _ in range(3))
        self.ClassHead = nn.ModuleList(Head(out, anchors, 2) for _ in range(3))
        self.BboxHead = nn.ModuleList(Head(out, anchors, 4) for _ in range(3))
        self.LandmarkHead = nn.ModuleList(Head(out, anchors, 10) for _ in range(3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        levels = self.fpn(self.body(x))
        features = [self.ssh1(levels[0]), self.ssh2(levels[1]), self.ssh3(levels[2])]
        boxes = torch.cat([h(f) for h, f in zip(self.BboxHead, features, strict=True)], 1)
        logits = torch.cat([h(f) for h, f in zip(self.ClassHead, features, strict=True)], 1)
        marks = torch.cat([h(f) for h, f in zip(self.LandmarkHead, features, strict=True)], 1)
        return boxes, logits, marks


def map_checkpoint_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our key names from a biubug6 or ternaus checkpoint.

    biubug6 saved through DataParallel (``module.`` prefix) and ternaus' training
    checkpoints through pytorch-lightning (``model.`` prefix); both are dropped. Backbone
    classifier weights (``body.fc``, ImageNet leftovers) are not part of the detector.
    """
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "model."):
            key = key.removeprefix(prefix)
        if key.startswith(("body.fc.", "body.avg")):
            continue
        out[key] = value
    return out


def load_network(variant: Variant, state: dict[str, torch.Tensor], source: str) -> RetinaFaceNet:
    net = RetinaFaceNet(variant.backbone, variant.slope)
    state = map_checkpoint_keys(state)
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{label} {', '.join(keys[:3])}{'…' if len(keys) > 3 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", wrong))
            if keys
        )
        raise StageError(
            f"{source}: not a RetinaFace {variant.backbone} checkpoint ({detail}); "
            f"check faces.retinaface.variant ({variant.name}) and its weights"
        )
    net.load_state_dict(state)
    return net.eval()


# --- anchors and decoding -----------------------------------------------------------------


def prior_boxes(
    height: int, width: int, steps: Sequence[int], min_sizes: Sequence[Sequence[int]]
) -> torch.Tensor:
    """Anchors (cx, cy, w, h) in input pixels, in the heads' order: level, row, column, size."""
    out = []
    for step, sizes in zip(steps, min_sizes, strict=True):
        rows, cols = -(-height // step), -(-width // step)
        cy, cx = torch.meshgrid(
            (torch.arange(rows) + 0.5) * step, (torch.arange(cols) + 0.5) * step, indexing="ij"
        )
        for_sizes = []
        for size in sizes:
            wh = torch.full_like(cx, float(size))
            for_sizes.append(torch.stack([cx, cy, wh, wh], dim=-1))
        out.append(torch.stack(for_sizes, dim=2).reshape(-1, 4))
    return torch.cat(out)


def decode_boxes(deltas: torch.Tensor, priors: torch.Tensor, variances) -> torch.Tensor:
    """SSD box decoding: centre offsets scaled by the anchor size, log-space width/height."""
    centre = priors[..., :2] + deltas[..., :2] * variances[0] * priors[..., 2:]
    size = priors[..., 2:] * torch.exp(deltas[..., 2:] * variances[1])
    return torch.cat([centre - size / 2, centre + size / 2], dim=-1)


def decode_landmarks(deltas: torch.Tensor, priors: torch.Tensor, variances) -> torch.Tensor:
    points = deltas.reshape(*deltas.shape[:-1], 5, 2)
    return priors[..., None, :2] + points * variances[0] * priors[..., None, 2:]


# --- the detector -------------------------------------------------------------------------


@register("retinaface")
class RetinaFaceDetector(FaceDetector):
    """RetinaFace with one of ``VARIANTS`` (or the default variant of ``backbone``:
    mobilenet0.25 → mobilenet0.25_1mb, resnet50 → resnet50_ternaus).

    ``weights`` is a checkpoint file; None fetches the variant's file from the registry into
    ``weights_dir`` (verified by sha256). ``confidence``, ``nms`` and ``max_size`` default
    (None) to the variant's own (``VARIANTS``): thresholds belong to the weights they were
    tuned for. ``max_size`` caps the long side: a larger image is shrunk to it first, as
    ternaus and Face-Detector-1MB do, a smaller one runs at its own size (enlarging a 256 px
    image to 640 pushes its faces past the largest anchors and splits them into nested
    boxes); 0 runs every image at its own size. Boxes and landmarks come back in the input's
    pixels either way.
    """

    def __init__(
        self,
        variant: str | None = None,
        backbone: str | None = None,
        weights: str | Path | None = None,
        confidence: float | None = None,
        nms: float | None = None,
        max_size: int | None = None,
        device: str | torch.device = "auto",
        weights_dir: str | Path | None = None,
        download: bool = True,
        batch_size: int = 16,
        top_k: int = 5000,
        keep_top_k: int = 750,
    ):
        if variant is None:
            variant = DEFAULT_VARIANT.get(backbone or "mobilenet0.25")
        if variant not in VARIANTS:
            raise StageError(
                f"retinaface: unknown variant {variant!r} (known: {', '.join(VARIANTS)})"
            )
        self.variant = VARIANTS[variant]
        if backbone is not None and backbone != self.variant.backbone:
            raise StageError(
                f"retinaface: variant {variant} has backbone {self.variant.backbone}, "
                f"not {backbone}"
            )
        if weights is None:
            path = fetch_weights(weight_spec(self.variant.weights), weights_dir, download)
        else:
            path = Path(weights)
        self.weights_sha256 = sha256_file(path) if path.is_file() else None
        self.device = pick_device(device)
        net = load_network(self.variant, load_state_dict(path), str(path))
        self.net = net.to(self.device, memory_format=memory_format(self.device))
        self.confidence = float(self.variant.confidence if confidence is None else confidence)
        self.nms = float(self.variant.nms if nms is None else nms)
        self.max_size = self.variant.max_size if max_size is None else (max_size or None)
        self.batch_size = int(batch_size)
        self.top_k, self.keep_top_k = int(top_k), int(keep_top_k)
        self._priors: dict[tuple[int, int], torch.Tensor] = {}
        if self.variant.normalise == "bgr_mean":
            self._fill = BGR_MEAN[::-1]  # RGB pixels that normalise to zero
        else:
            self._fill = tuple(255 * m for m in IMAGENET_MEAN)

    @property
    def settings(self) -> dict[str, Any]:
        return {
            "detector": self.name,
            **asdict(self.variant),
            "weights_sha256": self.weights_sha256,
            "confidence": self.confidence,
            "nms": self.nms,
            "max_size": self.max_size,
            "top_k": self.top_k,
            "keep_top_k": self.keep_top_k,
        }

    def find(self, images: Sequence[np.ndarray]) -> list[Faces]:
        return detect_in_batches(images, self.batch_size, self._detect_batch)

    def _scaled(self, im: np.ndarray) -> tuple[torch.Tensor, float]:
        """One image as a 3×h×w float tensor on the device, shrunk to ``max_size`` if larger."""
        tensor = torch.from_numpy(np.require(im, requirements=["C", "W"]))
        tensor = tensor.to(self.device).permute(2, 0, 1).float()
        if not self.max_size or max(im.shape[:2]) <= self.max_size:
            return tensor, 1.0
        scale = self.max_size / max(im.shape[:2])
        size = (max(1, round(im.shape[0] * scale)), max(1, round(im.shape[1] * scale)))
        resized = F.interpolate(
            tensor[None], size=size, mode="bilinear", align_corners=False, antialias=True
        )[0]
        return resized.clamp_(0, 255), scale

    def _normalise(self, batch: torch.Tensor) -> torch.Tensor:
        if self.variant.normalise == "bgr_mean":
            mean = torch.tensor(BGR_MEAN, device=batch.device).view(1, 3, 1, 1)
            return batch.flip(1) - mean
        mean = torch.tensor(IMAGENET_MEAN, device=batch.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=batch.device).view(1, 3, 1, 1)
        return (batch / 255.0 - mean) / std

    def priors(self, height: int, width: int) -> torch.Tensor:
        key = (height, width)
        if key not in self._priors:
            priors = prior_boxes(height, width, self.variant.steps, self.variant.min_sizes)
            self._priors[key] = priors.to(self.device)
        return self._priors[key]

    @torch.inference_mode()
    def _detect_batch(self, images: Sequence[np.ndarray]) -> list[Faces]:
        scaled = [self._scaled(im) for im in images]
        batch = pad_to_batch([t for t, _ in scaled], self._fill)
        batch = self._normalise(batch).contiguous(memory_format=memory_format(self.device))
        with autocast(self.device):
            deltas, logits, marks = self.net(batch)
        deltas, logits, marks = deltas.float(), logits.float(), marks.float()
        priors = self.priors(batch.shape[2], batch.shape[3])
        scores = logits.softmax(-1)[..., 1]

        # Candidates above the threshold, at most top_k per image, best first.
        candidates = []
        for index in range(len(images)):
            above = torch.nonzero(scores[index] > self.confidence).squeeze(1)
            candidates.append(above[scores[index, above].argsort(descending=True)[: self.top_k]])
        group = torch.cat([torch.full_like(c, i) for i, c in enumerate(candidates)])
        flat = torch.cat(candidates)
        variances = self.variant.variances
        boxes = decode_boxes(deltas[group, flat], priors[flat], variances)
        points = decode_landmarks(marks[group, flat], priors[flat], variances)
        flat_scores = scores[group, flat]
        # Drop boxes centred in another image's padding (their size is not this image's).
        sizes = torch.tensor([[t.shape[2], t.shape[1]] for t, _ in scaled], device=self.device)
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        in_image = ((centre >= 0) & (centre < sizes[group])).all(dim=1)
        boxes, points = boxes[in_image], points[in_image]
        flat_scores, group = flat_scores[in_image], group[in_image]
        kept = batched_nms(boxes, flat_scores, group, self.nms)

        results = []
        boxes, points = boxes[kept].cpu().numpy(), points[kept].cpu().numpy()
        kept_scores, kept_group = flat_scores[kept].cpu().numpy(), group[kept].cpu().numpy()
        for index, (im, (_, scale)) in enumerate(zip(images, scaled, strict=True)):
            mine = np.flatnonzero(kept_group == index)[: self.keep_top_k]
            height, width = im.shape[:2]
            b = boxes[mine] / scale
            b[:, [0, 2]] = b[:, [0, 2]].clip(0, width)
            b[:, [1, 3]] = b[:, [1, 3]].clip(0, height)
            real = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
            results.append(
                Faces(
                    b[real].astype(np.float32),
                    kept_scores[mine][real].astype(np.float32),
                    (points[mine][real] / scale).astype(np.float32),
                )
            )
        return results

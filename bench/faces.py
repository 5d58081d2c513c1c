"""Benchmark the face detectors: images/s batched vs one image at a time, as the seeds did.

Inputs are banner-sized (300×450) copies of the real photos in ../shared/data/faces, at the
stage's two default resolutions: ``original`` (300×450) and ``256`` (256×256, stretched).

    python bench/faces.py [--images 32] [--heavy-images 8] [--batch-sizes 16,2] [--device auto]
                          [--threads auto,1,2]

``--threads``: each torch CPU thread setting in turn (``faces.threads``: ``auto`` is what
``pipeline.devices.cpu_threads`` picks now, given the cores and the load of other jobs).

Detectors timed (each with the seeds' or its README settings):

- ``retinaface mobilenet0.25_1mb``: the real shared checkpoint, long side 640.
- ``retinaface resnet50_ternaus``: long side 840 (the seeds). Its weights are not available
  offline, so it runs on random weights whose face logit is pushed down: the network's full
  cost, and the decoding of an image with no candidate (as most banners are).
- ``face_alignment`` (S3FD): the real ``s3fd-619a316812.pth`` if it is in the weights
  cache, else random weights with the face logit pushed down, as above.
- ``dlib`` HOG (if installed): one image at a time by nature; "batch" is the same loop.

"single" calls ``detect`` once per image, as the seeds did; "batch N" passes all images in
one call, run N at a time (padded to a common size).

``--heavy-images`` caps the images for the two large networks (ResNet-50 at 840², VGG-16)
so a CPU run ends in minutes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline import weights  # noqa: E402
from pipeline.devices import cpu_threads, pick_device  # noqa: E402
from pipeline.faces import load_detector  # noqa: E402
from pipeline.faces.retinaface import RetinaFaceNet  # noqa: E402

SHARED = REPO.parent / "shared"
FACES = SHARED / "data" / "faces"
RETINAFACE_1MB = SHARED / "weights" / "retinaface_mobilenet0.25.pth"


def banners(count: int) -> dict[str, list[np.ndarray]]:
    """``count`` 300×450 banners from the shared photos (cycled), and their 256² versions."""
    files = sorted(p for p in FACES.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        sys.exit(f"no photos in {FACES}: the benchmark needs ../shared beside the repo")
    original = []
    for index in range(count):
        im = Image.open(files[index % len(files)])
        im.draft("RGB", (300, 450))
        im = im.convert("RGB").resize((300, 450), Image.Resampling.LANCZOS)
        if index >= len(files):
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        original.append(np.asarray(im))
    small = [
        np.asarray(Image.fromarray(a).resize((256, 256), Image.Resampling.LANCZOS))
        for a in original
    ]
    return {"original": original, "256": small}


def silent_retinaface(folder: Path) -> Path:
    """Random ResNet-50 RetinaFace weights whose background logit always wins."""
    torch.manual_seed(0)
    net = RetinaFaceNet("resnet50", 0.0)
    for head in net.ClassHead:
        head.conv1x1.bias.data[0::2] = 20.0  # per anchor: (background, face)
    path = folder / "retinaface_resnet50_random.pth"
    torch.save(net.state_dict(), path)
    return path


def silent_s3fd(folder: Path) -> Path:
    from face_alignment.detection.sfd.net_s3fd import s3fd

    torch.manual_seed(0)
    net = s3fd()
    for name, module in net.named_modules():
        if name.endswith("mbox_conf"):
            module.bias.data[-1] = -20.0  # the last channel is the face score
    path = folder / "s3fd_random.pth"
    torch.save(net.state_dict(), path)
    return path


def images_per_s(detector, images: list[np.ndarray], batch_size: int | None) -> float:
    """Images/s with ``batch_size`` images per pass, or one ``detect`` call per image (None)."""
    if batch_size is not None and hasattr(detector, "batch_size"):
        detector.batch_size = batch_size
    detector.detect(images[:2])  # warm-up: allocations, oneDNN kernel choice
    start = time.perf_counter()
    if batch_size is not None:
        detector.detect(images)
    else:
        for im in images:
            detector.detect([im])
    return len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--heavy-images", type=int, default=8)
    parser.add_argument("--batch-sizes", default="16,2", help="comma-separated")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", default="auto", help="comma-separated: auto and/or counts")
    args = parser.parse_args()
    device = pick_device(args.device)
    data = banners(args.images)
    scratch = Path(tempfile.mkdtemp(prefix="steamgan-bench-faces-"))
    s3fd_real = weights.default_weights_dir() / weights.WEIGHTS["s3fd"].file
    sizes = [int(n) for n in args.batch_sizes.split(",")]
    common = {"device": device}
    setups = [
        (
            "retinaface mobilenet0.25_1mb @640",
            False,
            lambda: load_detector(
                "retinaface", variant="mobilenet0.25_1mb", weights=RETINAFACE_1MB,
                confidence=0.9, nms=0.4, max_size=640, **common,
            ),
        ),
        (
            "retinaface resnet50_ternaus @840 (random weights)",
            True,
            lambda: load_detector(
                "retinaface", variant="resnet50_ternaus", weights=silent_retinaface(scratch),
                confidence=0.08, nms=0.01, max_size=840, **common,
            ),
        ),
        (
            "face_alignment S3FD" + ("" if s3fd_real.is_file() else " (random weights)"),
            True,
            lambda: load_detector(
                "face_alignment",
                weights=s3fd_real if s3fd_real.is_file() else silent_s3fd(scratch),
                confidence=0.5, **common,
            ),
        ),
        ("dlib HOG upsample 1", False, lambda: load_detector("dlib", upsample=1)),
    ]  # fmt: skip
    cores = len(os.sched_getaffinity(0))
    print(
        f"device {device}, {cores} cores, load {os.getloadavg()[0]:.1f}, torch {torch.__version__} "
        f"(default {torch.get_num_threads()} threads); images/s"
    )
    columns = "".join(f"{f'batch {n}':>10s}" for n in sizes)
    head = f"{'detector':52s} {'threads':>9s} {'resolution':>10s} {'images':>6s}"
    print(f"{head}{columns}{'single':>10s}")
    settings = [s if s == "auto" else int(s) for s in args.threads.split(",")]
    for label, heavy, make in setups:
        try:
            detector = make()
        except Exception as exc:  # e.g. dlib not installed
            print(f"{label:52s} skipped: {str(exc).splitlines()[0]}")
            continue
        count = min(args.images, args.heavy_images) if heavy else args.images
        for setting in settings:
            threads = cpu_threads(setting)
            torch.set_num_threads(threads)
            shown = f"{setting}={threads}" if setting == "auto" else str(threads)
            for resolution, images in data.items():
                rates = [images_per_s(detector, images[:count], n) for n in [*sizes, None]]
                cells = "".join(f"{rate:10.1f}" for rate in rates)
                print(f"{label:52s} {shown:>9s} {resolution:>10s} {count:6d}{cells}", flush=True)


if __name__ == "__main__":
    main()

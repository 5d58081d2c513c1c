"""Benchmark the FID pipeline: Inception feature throughput and the time of a whole FID.

Inputs are the real 256×256 flowers of ../shared/data/flowers256 (cycled to ``--images``),
as uint8 batches, the way ``evaluate`` feeds generated images:

    python bench/metrics.py [--images 10000] [--batch 64] [--resize clean] [--device auto]

Prints, per device (the CPU, and CUDA when there is one, or only ``--device``):

- Inception throughput, images/s: resize to 299 + network, on ``--warmup`` + timed batches;
- the time of an FID on ``--images`` images: features of all of them (streamed in batches),
  their statistics, and the Fréchet distance to the statistics of the real flowers (the
  2048-dimensional eigendecompositions are timed on their own too).

A 10k-image FID takes about 40 minutes on a 2-core CPU: pass a smaller ``--images`` there.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.devices import pick_device  # noqa: E402
from pipeline.metrics.fid import frechet_distance  # noqa: E402
from pipeline.metrics.inception import FeatureSink, load_inception  # noqa: E402

FLOWERS = REPO.parent / "shared" / "data" / "flowers256"


def flowers(count: int) -> np.ndarray:
    files = sorted(FLOWERS.glob("*.jpg"))[:count]
    if not files:
        sys.exit(f"no images in {FLOWERS}: the benchmark needs ../shared beside the repo")
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in files])


def batches(images: np.ndarray, total: int, batch: int):
    for start in range(0, total, batch):
        index = np.arange(start, min(start + batch, total)) % len(images)
        yield images[index]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(model, images, batch, resize, warmup, timed) -> float:
    sink = FeatureSink(model, resize)
    device = model.device
    for chunk in batches(images, warmup * batch, batch):
        sink.add(chunk)
    sync(device)
    start = time.perf_counter()
    for chunk in batches(images, timed * batch, batch):
        sink.add(chunk)
    sync(device)
    return timed * batch / (time.perf_counter() - start)


def fid_time(model, images, real, total, batch, resize) -> dict[str, float]:
    start = time.perf_counter()
    sink = FeatureSink(model, resize, total)
    for chunk in batches(images, total, batch):
        sink.add(chunk)
    sync(model.device)
    features_s = time.perf_counter() - start
    start = time.perf_counter()
    value = frechet_distance(real, sink.result()[0])  # as evaluate computes it
    distance_s = time.perf_counter() - start
    return {"fid": value, "features_s": features_s, "distance_s": distance_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000, help="images in the timed FID")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--resize", default="clean", choices=["clean", "legacy_tensorflow"])
    parser.add_argument("--device", default=None, help="only this device (default: cpu + cuda)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches")
    parser.add_argument("--timed", type=int, default=3, help="timed batches for images/s")
    parser.add_argument("--real", type=int, default=256, help="real flowers for the reference")
    args = parser.parse_args()

    devices = [pick_device(args.device)] if args.device else [torch.device("cpu")]
    if not args.device and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    images = flowers(1360)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"batch {args.batch}, resize {args.resize}, 256×256 inputs")  # fmt: skip
    for device in devices:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        model = load_inception("auto", device)
        rate = throughput(model, images, args.batch, args.resize, args.warmup, args.timed)
        print(f"{name}: Inception ({model.source.name}) {rate:,.1f} images/s")
        sink = FeatureSink(model, args.resize)
        for chunk in batches(images, args.real, args.batch):
            sink.add(chunk)
        real = sink.result()[0]
        timing = fid_time(model, images, real, args.images, args.batch, args.resize)
        total = timing["features_s"] + timing["distance_s"]
        print(
            f"{name}: FID on {args.images:,} images {total:,.1f} s "
            f"(features {timing['features_s']:,.1f} s, statistics + distance "
            f"{timing['distance_s']:,.1f} s; FID {timing['fid']:.2f} vs {args.real} real)"
        )


if __name__ == "__main__":
    main()

"""Training throughput of a model on the engine: images/s, s/kimg and peak GPU memory.

    python bench/train.py --model lightweight --size 256 --batch 64 [--steps 20] [--data DIR]
    python bench/train.py --model dcgan --size 64 --batch 32
    python bench/train.py --model progan --size 64 --batch 32   # at its first stage (16 px)
    python bench/train.py --model stargan2 --size 256 --batch 8   # labelled: --domains 2

Without --data it uses ../shared/data/flowers256 (resized to --size), labelled by flower
class (the first --domains classes, dataset.json) for a model that needs labels. Steps
after --warmup are timed; on a GPU the engine's defaults apply (bf16 autocast,
channels_last). Peak memory: the GPU's, or on the CPU the process's peak resident size.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.models import MODELS, models_with  # noqa: E402
from pipeline.models.base import Capability  # noqa: E402
from pipeline.training.loop import Trainer  # noqa: E402
from pipeline.training.params import TrainParams  # noqa: E402

FLOWERS = REPO.parent / "shared" / "data" / "flowers256"
# models that need a labelled dataset: the image-to-image ones (domains)
LABELLED = set(models_with(Capability.TRANSLATION))


def prepare_data(size: int, work: Path, count: int, domains: int = 0) -> Path:
    """``count`` flowers as PNGs; with ``domains``, only the first ``domains`` classes and a
    dataset.json labelling each by its class (c<class>_image_<n>.jpg)."""
    folder = work / f"flowers{size}"
    folder.mkdir()
    files = sorted(FLOWERS.glob("*.jpg"))
    classes = sorted({p.name.split("_")[0] for p in files})[:domains]
    if domains:
        files = [p for p in files if p.name.split("_")[0] in classes]
    files = files[:count]
    if not files:
        sys.exit(f"no images in {FLOWERS}; pass --data")
    labels = []
    for path in files:
        im = Image.open(path).convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.LANCZOS)
        im.save(folder / f"{path.stem}.png")
        if domains:
            labels.append([f"{path.stem}.png", classes.index(path.name.split("_")[0])])
    if domains:
        meta = {"labels": labels, "classes": classes}
        (folder / "dataset.json").write_text(json.dumps(meta) + "\n")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lightweight", choices=MODELS)
    parser.add_argument(
        "--domains", type=int, default=None, help="classes of the data (stargan2: 2, others 0)"
    )
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--images", type=int, default=1360, help="images to prepare")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own)")
    parser.add_argument(
        "-S",
        dest="extra",
        action="append",
        default=[],
        help="train param, e.g. -S lightweight.attn_res=[32]",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import yaml

    with tempfile.TemporaryDirectory(prefix="steamgan-bench-train-") as tmp:
        work = Path(tmp)
        domains = args.domains if args.domains is not None else 2 * (args.model in LABELLED)
        data = args.data or prepare_data(args.size, work, args.images, domains)
        settings: dict = dict(
            model=args.model,
            data=str(data),
            image_size=args.size,
            batch_size=args.batch,
            steps=10_000_000,  # the most train.steps allows; only a few steps are timed
            precision=args.precision,
            compile=args.compile,
            workers=args.workers,
            checkpoint_every=10**9,
            sample_every=10**9,
            log_every=10**9,
        )
        for item in args.extra:
            key, value = item.split("=", 1)
            node = settings
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = yaml.safe_load(value)
        trainer = Trainer(TrainParams(**settings), work / "out", live_dir=None)
        device = trainer.device
        batches = trainer._batches()
        for _ in range(args.warmup):
            trainer.train_step(batches)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(args.steps):
            trainer.train_step(batches)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        images = args.steps * args.batch
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        print(
            f"{args.model} {args.size}px batch {args.batch} on {name}, "
            f"precision {trainer.precision.name}, compile {args.compile}, "
            f"{torch.get_num_threads()} threads, {args.workers} workers"
        )
        print(f"images/s {images / seconds:,.1f}   s/kimg {seconds / images * 1000:,.2f}")
        if device.type == "cuda":
            print(f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
        else:  # ru_maxrss is in KiB on Linux
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            print(f"peak resident memory {peak:.2f} GiB (the whole process)")


if __name__ == "__main__":
    main()

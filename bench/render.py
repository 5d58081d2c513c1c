"""Seconds per render part with the shipped render params, on this machine's device.

    python bench/render.py                         64 px StyleGAN2 at the shipped widths
    python bench/render.py --size 32 --model lightweight
    python bench/render.py --checkpoint data/train/checkpoints/latest.pt --data data/dataset

Without --checkpoint it trains the model (``params.yaml``'s train section, at --size, on
--images of the shared flowers) for --steps steps with two snapshots: the time of a render
does not depend on how well the generator learned. The render section is the committed
params.yaml's (``project.steps: auto`` resolved for the device), as ``dvc repro`` runs it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.train import prepare_data  # noqa: E402
from pipeline.devices import pick_device  # noqa: E402
from pipeline.progress import Advance  # noqa: E402
from pipeline.render.params import RenderParams  # noqa: E402
from pipeline.render.projection import fid_inception_features  # noqa: E402
from pipeline.render.run import render  # noqa: E402
from pipeline.training.checkpoint import load_generator  # noqa: E402
from pipeline.training.loop import train  # noqa: E402
from pipeline.training.params import TrainParams  # noqa: E402


class PartClock(Advance):
    """Notes the time each part finishes (render calls ``advance(status=part)`` then)."""

    def __init__(self) -> None:
        super().__init__()
        self.last = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def __call__(self, n: int = 1, status: str | None = None) -> None:
        if status is not None:
            now = time.perf_counter()
            self.seconds[status] = now - self.last
            print(f"  {status:<22} {now - self.last:8.1f} s", flush=True)
            self.last = now


def committed_params() -> dict:
    shown = subprocess.run(
        ["git", "show", "HEAD:params.yaml"], cwd=REPO, capture_output=True, text=True
    )
    text = shown.stdout if shown.returncode == 0 else (REPO / "params.yaml").read_text()
    return yaml.safe_load(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="stylegan2")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2, help="training steps (no checkpoint)")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--data", type=Path)
    args = parser.parse_args()

    shipped = committed_params()
    with tempfile.TemporaryDirectory(prefix="steamgan-bench-render-") as tmp:
        work = Path(tmp)
        data = args.data or prepare_data(args.size, work, args.images)
        checkpoint = args.checkpoint
        if checkpoint is None:
            settings = {k: v for k, v in shipped["train"].items() if k not in ("threads",)}
            settings.update(
                model=args.model, data=str(data), image_size=args.size, batch_size=4,
                steps=args.steps, snapshot_every=1, sample_every=10**9, log_every=10**9,
                checkpoint_every=10**9, workers=0, progan=dict(stages=None),
            )  # fmt: skip
            train(TrainParams(**settings), work / "train", live_dir=None)
            checkpoint = work / "train/checkpoints/latest.pt"
        render_settings = dict(shipped["render"], data=str(data))
        render_settings["snapshots"] = str(checkpoint.parent.parent / "snapshots")
        p = RenderParams(**render_settings)
        device = pick_device(p.device)
        trained = load_generator(checkpoint, device)
        clock = PartClock()
        start = time.perf_counter()
        summary = render(
            trained, p, work / "render", device, advance=clock,
            load_features=lambda: fid_inception_features(p.project, device, print),
        )  # fmt: skip
        total = time.perf_counter() - start
    steps = p.for_device(device.type).project.steps
    print(
        f"render of a {args.size} px {trained.model} on {device.type} "
        f"(project.steps auto = {steps}, {p.project.targets} targets)"
    )
    for part, seconds in clock.seconds.items():
        print(f"  {part:<22} {seconds:8.1f} s")
    print(f"  {'total':<22} {total:8.1f} s")
    left = ", ".join(summary["unsupported"]) or "none"
    print(f"  not drawn: {left}")


if __name__ == "__main__":
    main()

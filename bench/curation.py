"""Benchmark validate + resize + dataset on >= 1,000 real 300×450 JPEGs.

The images are the real Steam capsules in ../shared/data/steam_capsules scaled to the
library_600x900 size (300×450); each capsule is used in up to four orientations and three
horizontal crops so the set is large without being near duplicates of itself. Each stage
runs as DVC runs it (``python -m stages.<name>``, process start-up included) in a scratch
folder.

    python bench/curation.py [--images 1200] [--repeat 3] [--keep]

With --repeat N the stages run N times on the same images and the median is printed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CAPSULES = REPO.parent / "shared" / "data" / "steam_capsules"
ORIENTATIONS = [
    None,
    Image.Transpose.FLIP_LEFT_RIGHT,
    Image.Transpose.FLIP_TOP_BOTTOM,
    Image.Transpose.ROTATE_180,
]
WINDOWS = [(0.0, 1.0), (0.0, 0.7), (0.3, 1.0)]  # horizontal crops of the capsule


def capsule_files() -> list[Path]:
    return sorted(CAPSULES.glob("*.jpg"))


def library_banner(files: list[Path], index: int) -> Image.Image:
    """Banner number ``index``: capsule ``index % len(files)`` cropped to one of ``WINDOWS``,
    scaled to 300×450 and turned by one of ``ORIENTATIONS`` (the variant ``index //
    len(files)`` picks which), so up to 12 × 398 banners differ from each other."""
    variant = index // len(files)
    turn = ORIENTATIONS[variant % len(ORIENTATIONS)]
    left, right = WINDOWS[(variant // len(ORIENTATIONS)) % len(WINDOWS)]
    im = Image.open(files[index % len(files)]).convert("RGB")
    im = im.crop((round(left * im.width), 0, round(right * im.width), im.height))
    im = im.resize((300, 450), Image.Resampling.BICUBIC)
    return im.transpose(turn) if turn is not None else im


def make_images(out: Path, count: int) -> pd.DataFrame:
    """Write ``count`` 300×450 JPEGs and the download manifest that would list them."""
    files = capsule_files()
    if not files:
        sys.exit(f"no capsules in {CAPSULES}: the benchmark needs ../shared beside the repo")
    (out / "data/download/images").mkdir(parents=True)
    rows = []
    for index in range(count):
        appid = 1_000_000 + index
        path = f"data/download/images/{appid}.jpg"
        library_banner(files, index).save(out / path, quality=90)
        data = (out / path).read_bytes()
        rows.append(
            dict(
                appid=appid,
                kind="library_600x900",
                url="",
                status="ok",
                http_status=200,
                bytes=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                error=None,
                path=path,
            )
        )
    manifest = pd.DataFrame(rows)
    manifest.to_parquet(out / "data/download/manifest.parquet", index=False)
    return manifest


def keep_every_face_verdict(work: Path) -> None:
    """Stand in for the faces stage (not measured here; bench/faces.py measures it): resize
    reads faces' accepted table, so validate's is passed through unchanged."""
    faces = work / "data/faces"
    faces.mkdir(parents=True, exist_ok=True)
    shutil.copy(work / "data/validate/accepted.parquet", faces / "accepted.parquet")


def run_stage(name: str, cwd: Path, extra: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", f"stages.{name}", *extra],
        cwd=cwd,
        env=env,
        check=True,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1200)
    parser.add_argument("--repeat", type=int, default=1, help="runs; the median is printed")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument(
        "-S",
        dest="overrides",
        action="append",
        default=[],
        help="param override passed to every stage, e.g. -S dataset.mirror=true",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="steamgan-bench-"))
    try:
        shutil.copy(REPO / "params.yaml", work / "params.yaml")
        make_images(work, args.images)
        extra = [a for o in args.overrides for a in ("-S", o)]
        runs = []
        for _ in range(args.repeat):
            for name in ("validate", "faces", "resize", "dataset"):
                shutil.rmtree(work / "data" / name, ignore_errors=True)
            run = {"validate": run_stage("validate", work, extra)}
            keep_every_face_verdict(work)
            run.update({n: run_stage(n, work, extra) for n in ("resize", "dataset")})
            runs.append(run)
        times = {n: statistics.median(run[n] for run in runs) for n in runs[0]}
        summary = json.loads((work / "data/validate/summary.json").read_text())
        stats = json.loads((work / "data/dataset/stats.json").read_text())
        total = statistics.median(sum(run.values()) for run in runs)
        print(
            f"cores: {len(os.sched_getaffinity(0))}, input: {args.images} JPEGs 300x450, "
            f"median of {args.repeat} run(s)"
        )
        print(
            f"validate: {summary['accepted']} accepted, {summary['rejected']} rejected "
            f"{ {k: v for k, v in summary['reasons'].items() if v} }"
        )
        for name, seconds in times.items():
            print(f"  {name:9s} {seconds:6.2f} s  {args.images / seconds:8.1f} images/s")
        print(
            f"end to end {total:6.2f} s  {args.images / total:8.1f} images/s "
            f"(input images; dataset holds {stats['count']})"
        )
    finally:
        if args.keep:
            print(f"scratch folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

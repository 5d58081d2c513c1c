"""Benchmark the report stage on a large run: build time and the page's load time in Chromium.

A run of ``--rows`` app ids is made in a scratch folder: every curation table (appids,
manifest, validate, faces with detections, resize, dataset stats), the images being the real
Steam capsules of ../shared/data/steam_capsules (cycled, read in place), about 5% of the
downloads missing and a third of the images rejected over the validate reasons and faces.
``report`` runs as DVC runs it (``python -m stages.report``, start-up included); then, when
Playwright and a system Chromium are installed, the page is opened headless and the time to
a drawn traceability table and to a search are printed.

    python bench/report.py [--rows 10000] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline import io as pio  # noqa: E402

CAPSULES = REPO.parent / "shared" / "data" / "steam_capsules"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def make_run(root: Path, rows: int) -> None:
    rng = np.random.default_rng(0)
    files = sorted(CAPSULES.glob("*.jpg"))
    if not files:
        sys.exit(f"{CAPSULES} is absent (real test data lives in ../shared beside the repo)")
    appids = np.arange(10, 10 * rows + 10, 10)
    paths = [str(files[i % len(files)]) for i in range(rows)]
    status = np.where(rng.random(rows) < 0.05, "missing", "ok")
    manifest = pd.DataFrame(
        {
            "appid": appids,
            "kind": "capsule_184x69",
            "url": [f"https://cdn.example/steam/apps/{a}/capsule_184x69.jpg" for a in appids],
            "status": status,
            "http_status": np.where(status == "ok", 200, 404),
            "bytes": 5000,
            "sha256": [f"{a:064x}" for a in appids],
            "error": None,
            "path": paths,
        }
    )
    names = [f"Game number {a}" for a in appids]
    pio.write_table(
        root / "data/appids/appids.parquet",
        pd.DataFrame({"appid": appids, "name": names, "source": "steam"}),
    )
    pio.write_table(root / "data/download/manifest.parquet", manifest)
    ok = manifest[manifest["status"] == "ok"].reset_index(drop=True)
    reasons = rng.choice(["keep"] * 7 + ["wrong_size", "blank", "vignette"], len(ok))
    detail = {"wrong_size": "183x69, want 184x69", "blank": "channel std 1.00"}
    rejected = ok[reasons != "keep"].assign(reason=reasons[reasons != "keep"])
    rejected["detail"] = [detail.get(r, "content box (4, 2, 180, 66)") for r in rejected["reason"]]
    valid = ok[reasons == "keep"][["appid", "path"]].reset_index(drop=True)
    pio.write_table(root / "data/validate/accepted.parquet", valid)
    pio.write_table(
        root / "data/validate/rejected.parquet", rejected[["appid", "path", "reason", "detail"]]
    )
    faces = rng.integers(0, 3, len(valid))
    pio.write_table(
        root / "data/faces/detections.parquet",
        pd.DataFrame(
            {
                "appid": valid["appid"],
                "detector": "retinaface",
                "resolution": "original",
                "n_faces": faces,
                "boxes": [
                    [[20.0 + 40 * i, 10.0, 50.0 + 40 * i, 45.0] for i in range(n)] for n in faces
                ],
                "scores": [[0.95] * n for n in faces],
            }
        ),
    )
    one = faces == 1
    pio.write_table(root / "data/faces/accepted.parquet", valid[one])
    pio.write_table(
        root / "data/faces/rejected.parquet",
        valid[~one].assign(
            reason="face_count", detail=[f"retinaface: original {n}" for n in faces[~one]]
        ),
    )
    pio.write_table(root / "data/resize/accepted.parquet", valid[one])
    pio.write_table(
        root / "data/resize/rejected.parquet", pd.DataFrame(columns=["appid", "source", "error"])
    )
    pio.write_json(
        root / "data/dataset/stats.json", {"count": int(one.sum()), "source_images": int(one.sum())}
    )


def browse(page_path: Path) -> None:
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("page load: not measured (pip install playwright)")
        return
    if executable is None:
        print("page load: not measured (apt-get install chromium)")
        return
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        page = context.new_page()
        start = time.perf_counter()
        page.goto(page_path.as_uri(), wait_until="load")
        page.wait_for_selector("#trace-table tbody tr")
        loaded = time.perf_counter() - start
        navigation = page.evaluate("performance.getEntriesByType('navigation')[0].toJSON()")
        start = time.perf_counter()
        page.fill("#trace-search", "vignette")
        searched = time.perf_counter() - start
        context.close()
    print(
        f"page load in Chromium: {loaded:.2f} s to a drawn table "
        f"(DOMContentLoaded {navigation['domContentLoadedEventEnd']:.0f} ms, "
        f"load {navigation['loadEventEnd']:.0f} ms); search over every row {searched * 1000:.0f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-report-"))
    try:
        make_run(root, args.rows)
        shutil.copy(REPO / "params.yaml", root / "params.yaml")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "stages.report", "-S", "report.experiments=false"],
            cwd=root,
            env=env,
            check=True,
        )
        built = time.perf_counter() - start
        page = root / "data/report/index.html"
        size = sum(p.stat().st_size for p in page.parent.rglob("*") if p.is_file())
        print(
            f"report of {args.rows:,} app ids: built in {built:.1f} s (process start included); "
            f"index.html {page.stat().st_size / 1e6:.1f} MB, folder {size / 1e6:.1f} MB"
        )
        browse(page)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

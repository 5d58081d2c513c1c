"""resize: accepted banners to resize.size square PNGs (Lanczos) → data/resize/."""

from __future__ import annotations

from pathlib import Path

from pipeline import io as pio
from pipeline.parallel import parallel_map
from pipeline.progress import progress_bar
from pipeline.resize import STAMP, plan_resize, resize_one, split_results
from stages.common import ParamsOption, SetOption, run_stage, say, stage_app

OUT_DIR = pio.stage_dir("resize")
IMAGES = OUT_DIR / "images"
ACCEPTED = pio.accepted_table("resize")
REJECTED = OUT_DIR / "rejected.parquet"
app = stage_app(__doc__, "resize")


@app.command()
def main(params: ParamsOption = Path("params.yaml"), overrides: SetOption = None) -> None:
    """Resize every accepted image (stretch, crop or pad) on a process pool."""
    with run_stage("resize", params, overrides) as p:
        cfg = p.resize
        upstream = pio.upstream_table("resize")
        table = pio.read_table(upstream)
        rows = list(zip(table["appid"], table["path"], strict=True))
        # Written into a staging folder, swapped in at the end: a failure leaves the
        # previous images and tables whole, and a re-run resumes from the staging folder.
        tasks = plan_resize(rows, IMAGES, cfg.size, cfg.mode, cfg.png_compression)
        results = []
        with progress_bar(len(tasks), f"resize {cfg.mode} {cfg.size}px") as advance:
            for row in parallel_map(resize_one, tasks, cfg.workers):
                results.append(row)
                advance()
        accepted, rejected = split_results(results)
        accepted = pio.carry_trace(accepted, table)  # url, sha256, labels
        staging = pio.staging_dir(IMAGES)
        pio.prune_dir(staging, {Path(x).name for x in accepted["path"]} | {STAMP})
        pio.write_table(ACCEPTED, accepted)
        pio.write_table(REJECTED, rejected)
        pio.swap_dir(staging, IMAGES)
        if table.empty:
            say(f"resize: 0 images: the '{upstream.parent.name}' stage kept none ({upstream})")
            return
        say(
            f"resize: {len(accepted):,} images at {cfg.size}x{cfg.size} ({cfg.mode})"
            + (f", {len(rejected)} failed (see {REJECTED})" if len(rejected) else "")
        )


if __name__ == "__main__":
    app()

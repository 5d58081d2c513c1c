"""resize: accepted banners to resize.size square PNGs (Lanczos) → data/resize/."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline import io as pio
from pipeline.parallel import parallel_map
from pipeline.progress import progress_bar
from pipeline.resize import RESULT_COLUMNS, plan_resize, resize_one
from stages.common import ParamsOption, SetOption, run_stage, say, stage_app

OUT_DIR = pio.stage_dir("resize")
IMAGES = OUT_DIR / "images"
ACCEPTED = pio.accepted_table("resize")
REJECTED = OUT_DIR / "rejected.parquet"
app = stage_app(__doc__)


@app.command()
def main(params: ParamsOption = Path("params.yaml"), overrides: SetOption = None) -> None:
    """Resize every accepted image (stretch, crop or pad) on a process pool."""
    with run_stage("resize", params, overrides) as p:
        cfg = p.resize
        table = pio.read_table(pio.upstream_table("resize"))
        rows = list(zip(table["appid"], table["path"], strict=True))
        tasks = plan_resize(rows, IMAGES, cfg.size, cfg.mode, cfg.png_compression)
        results = []
        with progress_bar(len(tasks), f"resize {cfg.mode} {cfg.size}px") as advance:
            for row in parallel_map(resize_one, tasks, cfg.workers):
                results.append(row)
                advance()
        df = pd.DataFrame(results, columns=RESULT_COLUMNS)
        failed = df["error"].notna()
        accepted = df[~failed].drop(columns="error").astype({"pixels": "int64"})
        rejected = df.loc[failed, ["appid", "source", "error"]]
        pio.write_table(ACCEPTED, accepted.reset_index(drop=True))
        pio.write_table(REJECTED, rejected.reset_index(drop=True))
        pio.prune_dir(IMAGES, {Path(x).name for x in accepted["path"]} | {".resize.json"})
        say(
            f"resize: {len(accepted):,} images at {cfg.size}x{cfg.size} ({cfg.mode})"
            + (f", {len(rejected)} failed (see {REJECTED})" if len(rejected) else "")
        )


if __name__ == "__main__":
    app()

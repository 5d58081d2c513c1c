"""dataset: package resized images as an NVlabs-style dataset (folder or zip) → data/dataset/."""

from __future__ import annotations

from pathlib import Path

from pipeline import io as pio
from pipeline.dataset import dataset_stats, members, write_folder, write_zip
from pipeline.progress import progress_bar
from stages.common import ParamsOption, SetOption, run_stage, say, stage_app

OUT_DIR = pio.stage_dir("dataset")
STATS = "stats.json"
app = stage_app(__doc__, "dataset")


@app.command()
def main(params: ParamsOption = Path("params.yaml"), overrides: SetOption = None) -> None:
    """Write PNGs + dataset.json as a folder or dataset.zip, and stats.json."""
    with run_stage("dataset", params, overrides) as p:
        cfg = p.dataset
        table = pio.read_table(pio.upstream_table("dataset"), columns=("appid", "path", "pixels"))
        items = members(table.sort_values("appid"), cfg.mirror)
        with pio.atomic_dir(OUT_DIR) as tmp, progress_bar(len(items), "dataset") as advance:
            if cfg.format == "zip":
                write_zip(tmp / "dataset.zip", items, 0, advance)
            else:
                write_folder(tmp, items, 0, advance)
            stats = dataset_stats(table, cfg.mirror)
            pio.write_json(tmp / STATS, stats)
        say(
            f"dataset: {stats['count']:,} images ({cfg.format}) → {OUT_DIR}, "
            f"mean {stats['mean']}, std {stats['std']}"
        )


if __name__ == "__main__":
    app()

"""dataset: package resized images as an NVlabs-style dataset (folder or zip) → data/dataset/."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from pipeline import io as pio
from pipeline.dataset import (
    MULTI_LABEL,
    NO_LABEL,
    TEST_ZIP,
    Member,
    assign_tag_classes,
    check_every_class,
    class_counts,
    curation_counts,
    dataset_stats,
    members,
    resize_folder_images,
    scan_class_folders,
    tag_classes,
    too_few_images,
    write_folder,
    write_zip,
)
from pipeline.errors import StageError
from pipeline.params import Params
from pipeline.progress import progress_bar
from stages.common import ParamsOption, SetOption, run_stage, say, stage_app

OUT_DIR = pio.stage_dir("dataset")
STATS = "stats.json"
REJECTED = "rejected.parquet"  # labelled datasets: what was left out, and why
app = stage_app(__doc__, "dataset")


@app.command()
def main(params: ParamsOption = Path("params.yaml"), overrides: SetOption = None) -> None:
    """Write PNGs + dataset.json as a folder or dataset.zip, and stats.json."""
    with run_stage("dataset", params, overrides) as p:
        cfg = p.dataset
        with pio.atomic_dir(OUT_DIR) as tmp:
            stats = from_folders(p, tmp) if cfg.labels == "folders" else from_resize(p, tmp)
            pio.write_json(tmp / STATS, stats)
        say(summary_line(stats, cfg.format))


def summary_line(stats: dict, fmt: str) -> str:
    def listed(counts: dict[str, int]) -> str:
        return ", ".join(f"{name} {n:,}" for name, n in counts.items())

    line = f"dataset: {stats['count']:,} images ({fmt})"
    if "classes" in stats:
        line += f" in {len(stats['classes'])} classes ({listed(stats['classes'])})"
    line += f" → {OUT_DIR}, mean {stats['mean']}, std {stats['std']}"
    if sum(stats.get("rejected", {}).values()):
        line += f"; left out {listed(stats['rejected'])} (see {OUT_DIR / REJECTED})"
    if "test" in stats:
        line += f"; test split {stats['test']['count']:,} images ({OUT_DIR / TEST_ZIP})"
    return line


def from_resize(p: Params, tmp: Path) -> dict:
    """The resize stage's images: unlabelled, or one class per requested tag or genre."""
    cfg = p.dataset
    table = pio.read_table(pio.upstream_table("dataset"), columns=("appid", "path", "pixels"))
    classes = None
    if cfg.labels == "tags":
        classes = tag_classes(table, p.appids.label_names)
        table, rejected = assign_tag_classes(table, classes, cfg.multi_label)
    enough_images(len(table), cfg.min_images)
    items = members(table.sort_values("appid"), cfg.mirror)
    write(tmp, items, cfg.format, classes)
    stats = dataset_stats(table, cfg.mirror)
    if classes is not None:
        stats |= labelled_stats(items, classes, rejected, (NO_LABEL, MULTI_LABEL))
        pio.write_table(tmp / REJECTED, rejected)
    return stats


def from_folders(p: Params, tmp: Path) -> dict:
    """A folder of class folders, resized to resize.size; <class>/test/ → test.zip."""
    cfg = p.dataset
    classes, images = scan_class_folders(cfg.folders_root)
    scratch = tmp / ".resized"  # inside the output's temporary folder: gone on any failure
    scratch.mkdir()
    with progress_bar(len(images), f"dataset: resize {cfg.folders_root}") as advance:
        resized, rejected = resize_folder_images(
            images, scratch, p.resize.size, p.resize.png_compression, 0, advance
        )
    train, test = resized[~resized["test"]], resized[resized["test"]]
    check_every_class(classes, train, rejected, cfg.folders_root)
    enough_images(len(train), cfg.min_images, curation=False)
    items = members(train.sort_values("name"), cfg.mirror)
    write(tmp, items, cfg.format, classes)
    stats = dataset_stats(train, cfg.mirror) | labelled_stats(items, classes, rejected)
    if len(test):
        held_out = members(test.sort_values("name"), mirror=False)
        with progress_bar(len(held_out), "dataset: test split") as advance:
            write_zip(tmp / TEST_ZIP, held_out, 0, advance, classes)
        stats["test"] = {"count": len(held_out), "classes": class_counts(held_out, classes)}
    shutil.rmtree(scratch)
    pio.write_table(tmp / REJECTED, rejected)
    return stats


def enough_images(count: int, min_images: int, curation: bool = True) -> None:
    """Stop here, before any training, when the dataset is too small to train on; from the
    curation chain, name the stage whose rule kept few (mirrored copies do not count)."""
    if count < min_images:
        counts = curation_counts() if curation else []
        raise StageError(too_few_images(count, min_images, counts))


def write(tmp: Path, items: list[Member], fmt: str, classes: list[str] | None) -> None:
    with progress_bar(len(items), "dataset") as advance:
        if fmt == "zip":
            write_zip(tmp / "dataset.zip", items, 0, advance, classes)
        else:
            write_folder(tmp, items, 0, advance, classes)


def labelled_stats(
    items: list[Member], classes: list[str], rejected: pd.DataFrame, reasons: tuple = ()
) -> dict:
    """stats.json's part for a labelled dataset: images per class, and the images left out
    per reason (``reasons`` always listed, 0 or not, so experiments compare)."""
    counts = dict.fromkeys(reasons, 0) | rejected["reason"].value_counts().to_dict()
    return {
        "classes": class_counts(items, classes),
        "rejected": {str(k): int(v) for k, v in counts.items()},
    }


if __name__ == "__main__":
    app()

"""Resize accepted banners to the square training resolution (Lanczos), as PNG.

Modes: ``stretch`` ignores the aspect ratio (what the seeds did: a 300×450 banner squashed to
256×256), ``crop`` keeps the centre square, ``pad`` letterboxes on the banner's border colour.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from pipeline import io as pio
from pipeline.images import ImageProblem, channel_sums, open_image, save_png, to_rgb

LANCZOS = Image.Resampling.LANCZOS


def border_colour(im: Image.Image) -> tuple[int, int, int]:
    """Median colour of the outermost ring of pixels: what ``pad`` mode fills with."""
    arr = np.asarray(im.convert("RGB"))
    ring = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    return tuple(int(v) for v in np.median(ring, axis=0))  # type: ignore[return-value]


def resize_image(im: Image.Image, size: int, mode: str) -> Image.Image:
    """One RGB image to ``size``×``size`` by ``mode`` (stretch, crop or pad)."""
    im = to_rgb(im)
    if mode == "stretch":
        return im.resize((size, size), LANCZOS)
    if mode == "crop":
        return ImageOps.fit(im, (size, size), LANCZOS, centering=(0.5, 0.5))
    if mode == "pad":
        return ImageOps.pad(im, (size, size), LANCZOS, color=border_colour(im))
    raise ValueError(f"unknown resize mode {mode!r}")


@dataclass(frozen=True)
class ResizeTask:
    appid: int
    src: str
    dst: str  # where it is written: the staging folder
    path: str  # where it will be once the staging folder is swapped in (the table's path)
    size: int
    mode: str
    compression: str
    reuse: bool  # the output exists from an interrupted run with the same settings


# The columns of resize_one's rows, so a table of no rows (faces kept nothing) has them too.
RESULT_COLUMNS = [
    "appid", "path", "source", "error",
    *(f"{stat}_{c}" for stat in ("sum", "sumsq") for c in "rgb"), "pixels",
]  # fmt: skip


def resize_one(task: ResizeTask) -> dict:
    """Resize one image to ``task.dst``; return its table row (with pixel sums for stats)."""
    row = {"appid": task.appid, "path": task.path, "source": task.src, "error": None}
    try:
        if task.reuse:
            out = open_image(task.dst)
        else:
            out = resize_image(open_image(task.src), task.size, task.mode)
            save_png(out, task.dst, task.compression)
    except ImageProblem as problem:
        row["error"] = str(problem)
        return row
    sums, squares = channel_sums(out)
    row.update({f"sum_{c}": s for c, s in zip("rgb", sums, strict=True)})
    row.update({f"sumsq_{c}": s for c, s in zip("rgb", squares, strict=True)})
    row["pixels"] = out.width * out.height
    return row


STAMP = ".resize.json"


def _stamped(folder: Path, settings: dict) -> bool:
    stamp = folder / STAMP
    try:
        return stamp.is_file() and pio.read_json(stamp) == settings
    except ValueError:  # a damaged stamp: not the same settings
        return False


def plan_resize(
    rows: list[tuple[int, str]], out_dir: Path, size: int, mode: str, compression: str
) -> list[ResizeTask]:
    """Tasks for every (appid, source path), written into ``out_dir``'s staging folder.

    ``out_dir`` itself is not touched until the stage swaps the finished staging folder in
    (``pio.swap_dir``), so a failed run leaves the previous outputs whole. Outputs are
    reused when made with the same settings (the folder's stamp) and newer than their
    source: those of an interrupted run in the staging folder, and the current outputs,
    hard-linked in (no copy).
    """
    settings = {"size": size, "mode": mode, "compression": compression}
    staging = pio.staging_dir(out_dir)
    if not _stamped(staging, settings):
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        if _stamped(out_dir, settings):
            for appid, _ in rows:
                _link(out_dir / f"{int(appid)}.png", staging / f"{int(appid)}.png")
        pio.write_json(staging / STAMP, settings)
    pio.remove_partials(staging)
    tasks = []
    for appid, src in rows:
        name = f"{int(appid)}.png"
        dst = staging / name
        reuse = _newer(dst, src)
        tasks.append(
            ResizeTask(
                int(appid),
                str(src),
                dst.as_posix(),
                (out_dir / name).as_posix(),
                size,
                mode,
                compression,
                reuse,
            )
        )
    return tasks


def _link(existing: Path, new: Path) -> None:
    """``new`` as a second name of ``existing`` (a copy where hard links are not allowed)."""
    try:
        os.link(existing, new)
    except FileNotFoundError:
        pass
    except OSError:
        shutil.copy2(existing, new)  # keeps the mtime, which decides reuse


ACCEPTED_COLUMNS = ["appid", "path", "source"] + [
    f"{stat}_{c}" for stat in ("sum", "sumsq") for c in "rgb"
]


def split_results(results: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The accepted table (with pixel sums) and the rejected one; right columns when empty."""
    df = pd.DataFrame(results, columns=[*ACCEPTED_COLUMNS, "pixels", "error"])
    failed = df["error"].notna()
    accepted = df.loc[~failed].drop(columns="error").astype({"appid": "int64", "pixels": "int64"})
    for column in ACCEPTED_COLUMNS[3:]:
        accepted[column] = accepted[column].astype("int64")
    rejected = df.loc[failed, ["appid", "source", "error"]].astype({"appid": "int64"})
    return accepted.reset_index(drop=True), rejected.reset_index(drop=True)


def _newer(dst: Path, src: str) -> bool:
    try:
        return dst.stat().st_mtime_ns >= os.stat(src).st_mtime_ns
    except FileNotFoundError:
        return False

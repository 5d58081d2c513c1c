"""Resize accepted banners to the square training resolution (Lanczos), as PNG.

Modes: ``stretch`` ignores the aspect ratio (what the seeds did: a 300×450 banner squashed to
256×256), ``crop`` keeps the centre square, ``pad`` letterboxes on the banner's border colour.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
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
    dst: str
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
    row = {"appid": task.appid, "path": task.dst, "source": task.src, "error": None}
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


def plan_resize(
    rows: list[tuple[int, str]], out_dir: Path, size: int, mode: str, compression: str
) -> list[ResizeTask]:
    """Tasks for every (appid, source path); reuse outputs an interrupted run already wrote.

    An output is reused only if the directory's stamp records the same settings and the
    output is newer than its source, so changed params or a re-downloaded banner redo it.
    """
    settings = {"size": size, "mode": mode, "compression": compression}
    stamp = out_dir / STAMP
    same_settings = stamp.exists() and pio.read_json(stamp) == settings
    if not same_settings:
        pio.prune_dir(out_dir, set())
    out_dir.mkdir(parents=True, exist_ok=True)
    pio.remove_partials(out_dir)
    pio.write_json(stamp, settings)
    tasks = []
    for appid, src in rows:
        dst = out_dir / f"{int(appid)}.png"
        reuse = same_settings and _newer(dst, src)
        tasks.append(
            ResizeTask(int(appid), str(src), dst.as_posix(), size, mode, compression, reuse)
        )
    return tasks


def _newer(dst: Path, src: str) -> bool:
    try:
        return dst.stat().st_mtime_ns >= os.stat(src).st_mtime_ns
    except FileNotFoundError:
        return False

"""Package resized images in the layout of NVlabs' ``dataset_tool.py``.

A folder (or ``dataset.zip``) of PNGs plus ``dataset.json`` with ``{"labels": null}``, which
stylegan2-ada-pytorch, StyleGAN3 and our own ``train`` stage all read. ``mirror`` adds a
horizontally flipped copy of each image, named ``<appid>_m.png``.
"""

from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image

from pipeline.errors import StageError
from pipeline.images import ImageProblem, check_regular_file, encode_png, open_image
from pipeline.parallel import parallel_map

DATASET_JSON = json.dumps({"labels": None}) + "\n"


@dataclass(frozen=True)
class Member:
    name: str  # file name inside the dataset
    src: str  # resized PNG it comes from
    mirrored: bool


def members(table: pd.DataFrame, mirror: bool) -> list[Member]:
    out = []
    for appid, path in zip(table["appid"], table["path"], strict=True):
        out.append(Member(f"{int(appid)}.png", str(path), False))
        if mirror:
            out.append(Member(f"{int(appid)}_m.png", str(path), True))
    return out


def mirrored_png(member: Member) -> bytes:
    """The PNG bytes of a member's mirror image (runs in a worker process)."""
    with open_image(member.src) as im:
        return encode_png(im.transpose(Image.Transpose.FLIP_LEFT_RIGHT))


def _stream(items: list[Member], workers: int) -> Iterator[tuple[Member, bytes]]:
    # Originals are read here; only mirrored images need a worker to decode and re-encode.
    mirrored = iter(parallel_map(mirrored_png, [m for m in items if m.mirrored], workers))
    for member in items:
        if member.mirrored:
            yield member, next(mirrored)
            continue
        try:
            check_regular_file(member.src)  # a FIFO would block the read for ever
        except ImageProblem as problem:
            raise StageError(f"{member.src}: {problem.detail}; run resize again") from None
        yield member, Path(member.src).read_bytes()


def write_folder(out: Path, items: list[Member], workers: int, advance: Callable) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for member, data in _stream(items, workers):
        (out / member.name).write_bytes(data)
        advance()
    (out / "dataset.json").write_text(DATASET_JSON)


def write_zip(path: Path, items: list[Member], workers: int, advance: Callable) -> None:
    # PNG is already deflated: storing avoids compressing twice and keeps reads fast.
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for member, data in _stream(items, workers):
            archive.writestr(member.name, data)
            advance()
        archive.writestr("dataset.json", DATASET_JSON)


def dataset_stats(table: pd.DataFrame, mirror: bool) -> dict:
    """Image count and per-channel mean/std (0–255 scale) from the resize stage's pixel sums.

    A mirrored copy has the same pixels, so it changes the count but not the statistics.
    """
    count = len(table) * (2 if mirror else 1)
    if table.empty:
        return {"count": 0, "source_images": 0, "mean": None, "std": None}
    pixels = int(table["pixels"].sum())
    mean, std = [], []
    for channel in "rgb":
        m = int(table[f"sum_{channel}"].sum()) / pixels
        var = int(table[f"sumsq_{channel}"].sum()) / pixels - m * m
        mean.append(round(m, 4))
        std.append(round(math.sqrt(max(var, 0.0)), 4))
    return {"count": count, "source_images": len(table), "mean": mean, "std": std}

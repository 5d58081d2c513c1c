"""Package images in the layout of NVlabs' ``dataset_tool.py``.

A folder (or ``dataset.zip``) of PNGs plus ``dataset.json``, which stylegan2-ada-pytorch,
StyleGAN3 and our own ``train`` stage all read: ``{"labels": null}`` for an unlabelled
dataset, else NVlabs' ``{"labels": [["<name>.png", class_index], ...]}`` plus our
``"classes": ["<name of class 0>", ...]`` so the names survive. ``mirror`` adds a
horizontally flipped copy of each image, named ``<appid>_m.png``, with its source's label.

The images come from the resize stage (``dataset.labels`` none, or tags: one class per
requested tag or genre), or from a folder of class folders (``folders``: StarGAN v2's
``<root>/<class>/*.png``, with ``<class>/test/`` held out as ``test.zip``), resized here
with the resize stage's code.
"""

from __future__ import annotations

import contextlib
import json
import math
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image

from pipeline.errors import StageError
from pipeline.images import ImageProblem, check_regular_file, encode_png, open_image
from pipeline.io import CURATION_CHAIN, accepted_table, split_labels, stage_dir, unique_name
from pipeline.parallel import parallel_map
from pipeline.resize import ResizeTask, resize_one

DATASET_JSON = "dataset.json"
TEST_ZIP = "test.zip"  # labels folders: the images of every <class>/test/ folder
FOLDER_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
FOLDERS_RESIZE_MODE = "crop"  # a user's own images keep their proportions: centre square
# What a labelled dataset leaves out, and why (rejected.parquet's reason).
NO_LABEL = "no_label"  # tags: the app has none of the classes
MULTI_LABEL = "multi_label"  # tags with multi_label drop: the app has several
REJECTED_COLUMNS = ["appid", "path", "reason", "detail"]


@dataclass(frozen=True)
class Member:
    name: str  # file name inside the dataset
    src: str  # the PNG it comes from (resized to the dataset's size)
    mirrored: bool
    label: int | None = None  # class index; None: unlabelled


def members(table: pd.DataFrame, mirror: bool) -> list[Member]:
    """The dataset's files: one per row (``<appid>.png``, or the row's ``name``), its
    ``class_index`` when the table has one, and a mirrored copy of each if ``mirror``
    (``<name>_m.png``; with a digest where a file of the folder already has that name)."""
    names = table["name"] if "name" in table else [f"{int(a)}.png" for a in table["appid"]]
    labels = table["class_index"] if "class_index" in table else [None] * len(table)
    taken = set(names)
    out = []
    for name, path, label in zip(names, table["path"], labels, strict=True):
        label = None if label is None else int(label)
        out.append(Member(name, str(path), False, label))
        if mirror:
            stem = name.removesuffix(".png")
            mirrored = unique_name([f"{stem}_m"], taken, f"{name} mirrored", ".png")
            out.append(Member(mirrored, str(path), True, label))
    return out


def dataset_json(items: Sequence[Member], classes: Sequence[str] | None) -> str:
    """``dataset.json``: ``{"labels": null}``, or each file's class index and the names."""
    if classes is None:
        return json.dumps({"labels": None}) + "\n"
    labels = [[member.name, member.label] for member in items]
    return json.dumps({"labels": labels, "classes": list(classes)}) + "\n"


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


def write_folder(
    out: Path,
    items: list[Member],
    workers: int,
    advance: Callable,
    classes: Sequence[str] | None = None,
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for member, data in _stream(items, workers):
        path = out / member.name
        path.parent.mkdir(parents=True, exist_ok=True)  # <class>/ of a folders dataset
        path.write_bytes(data)
        advance()
    (out / DATASET_JSON).write_text(dataset_json(items, classes))


def write_zip(
    path: Path,
    items: list[Member],
    workers: int,
    advance: Callable,
    classes: Sequence[str] | None = None,
) -> None:
    # PNG is already deflated: storing avoids compressing twice and keeps reads fast.
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for member, data in _stream(items, workers):
            archive.writestr(member.name, data)
            advance()
        archive.writestr(DATASET_JSON, dataset_json(items, classes))


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


def class_counts(items: Iterable[Member], classes: Sequence[str]) -> dict[str, int]:
    """Images per class (mirrored copies count), every class named, in class order."""
    counts = Counter(member.label for member in items)
    return {name: counts.get(index, 0) for index, name in enumerate(classes)}


def rejected_frame(rows: Iterable[tuple]) -> pd.DataFrame:
    """What a labelled dataset left out: (appid or None, path, reason, detail) rows."""
    df = pd.DataFrame(list(rows), columns=REJECTED_COLUMNS)
    return df.astype({"appid": "Int64", "path": "str", "reason": "str", "detail": "str"})


# --- labels: tags -------------------------------------------------------------------------


def tag_classes(table: pd.DataFrame, requested: Sequence[str]) -> list[str]:
    """The classes of ``labels: tags``: the requested tags then genres (``appids``), or,
    when none was requested (an ``appids.file`` with a label column), every label the
    table holds, sorted by name."""
    if "labels" not in table:
        raise StageError(
            "dataset.labels=tags: the resize stage's table has no labels column (made before "
            "labels existed); re-run the chain from appids (dvc repro dataset)"
        )
    classes = list(requested) or sorted({n for cell in table["labels"] for n in split_labels(cell)})
    if not classes:
        raise StageError(
            "dataset.labels=tags: no classes: set appids.tags or appids.genres (with "
            "appids.source=steamspy), or give appids.file a label column, and re-run appids"
        )
    return classes


def assign_tag_classes(
    table: pd.DataFrame, classes: Sequence[str], multi_label: str = "first"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the rows with a class, with ``class_index``; the rows left out, with why).

    An app's class is the first of ``classes`` among its labels; with several,
    ``multi_label: drop`` leaves it out instead. An app with none of them is left out.
    """
    index = {name: number for number, name in enumerate(classes)}
    keep, chosen, rejected = [], [], []
    for row, (appid, path, cell) in enumerate(
        zip(table["appid"], table["path"], table["labels"], strict=True)
    ):
        mine = sorted({index[name] for name in split_labels(cell) if name in index})
        if not mine:
            detail = f"labels {cell!r}" if cell else "no labels"
            rejected.append((int(appid), str(path), NO_LABEL, detail))
        elif len(mine) > 1 and multi_label == "drop":
            detail = "|".join(classes[i] for i in mine)
            rejected.append((int(appid), str(path), MULTI_LABEL, detail))
        else:
            keep.append(row)
            chosen.append(mine[0])
    kept = table.iloc[keep].reset_index(drop=True).assign(class_index=chosen)
    return kept.astype({"class_index": "int64"}), rejected_frame(rejected)


# --- labels: folders ----------------------------------------------------------------------


@dataclass(frozen=True)
class FolderImage:
    src: str  # the file under dataset.folders_root
    name: str  # its name in the dataset: <class>/<stem>.png
    label: int
    test: bool  # in <class>/test/: held out (test.zip)


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if not p.name.startswith(".") and p.suffix.lower() in FOLDER_IMAGE_SUFFIXES
    )


def _png_names(files: list[Path], prefix: str) -> list[str]:
    """``<prefix>/<stem>.png`` for each file; a stem two files share (a.jpg, a.png) keeps
    its suffix in the name of the later ones (a_png.png), and where that is taken too
    (a.JPG, a.Jpg, a.jpg) a short digest of the file's name: no image overwrites another."""
    names: list[str] = []
    taken: set[str] = set()
    for path in files:
        stem = f"{prefix}/{path.stem}"
        kind = path.suffix.lstrip(".").lower()
        names.append(unique_name([stem, f"{stem}_{kind}"], taken, path.name, ".png"))
    return names


def scan_class_folders(root: str | Path) -> tuple[list[str], list[FolderImage]]:
    """Classes (the folders of ``root``, sorted by name) and their images: png, jpg and
    webp files directly in each class folder, and those in its ``test/`` folder (held out).

    Hidden entries, files beside the class folders and other suffixes are ignored; a root
    that is not a folder, has no class folder, or a class folder without an image stops
    with one line (one whose images all fail to read stops later, ``check_every_class``).
    """
    root = Path(root)
    if not root.is_dir():
        raise StageError(
            f"dataset.folders_root: {root} is not a folder; point it at a folder of class "
            "folders (<root>/<class>/*.png)"
        )
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise StageError(
            f"dataset.folders_root: {root} has no class folders; expected <root>/<class>/*.png"
        )
    images = []
    for label, name in enumerate(classes):
        train = _image_files(root / name)
        if not train:
            raise StageError(
                f"dataset.folders_root: {root / name} has no images (png, jpg, webp); add "
                "some or remove the folder"
            )
        test_dir = root / name / "test"
        test = _image_files(test_dir) if test_dir.is_dir() else []
        for files, held_out in ((train, False), (test, True)):
            for path, png in zip(files, _png_names(files, name), strict=True):
                images.append(FolderImage(str(path), png, label, held_out))
    return classes, images


def resize_folder_images(
    images: Sequence[FolderImage],
    scratch: Path,
    size: int,
    compression: str,
    workers: int = 0,
    advance: Callable = lambda: None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each image resized to ``size``² (centre crop) into ``scratch`` by the resize stage's
    code: (a table as the resize stage's, with ``name``, ``class_index`` and ``test``; the
    images that could not be read, with why). Never stops for a bad image."""
    tasks = []
    for number, image in enumerate(images):
        out = str(scratch / f"{number}.png")
        tasks.append(
            ResizeTask(number, image.src, out, out, size, FOLDERS_RESIZE_MODE, compression, False)
        )
    rows, rejected = [], []
    for image, result in zip(images, parallel_map(resize_one, tasks, workers), strict=True):
        advance()
        if result["error"] is not None:
            reason, _, detail = str(result["error"]).partition(": ")
            rejected.append((None, image.src, reason, detail))
            continue
        row = {k: v for k, v in result.items() if k not in ("appid", "source", "error")}
        rows.append({**row, "name": image.name, "class_index": image.label, "test": image.test})
    columns = ["name", "path", "class_index", "test", "pixels"] + [
        f"{stat}_{c}" for stat in ("sum", "sumsq") for c in "rgb"
    ]
    table = pd.DataFrame(rows, columns=columns).astype({"test": bool, "class_index": "int64"})
    return table, rejected_frame(rejected)


def check_every_class(
    classes: Sequence[str], train: pd.DataFrame, rejected: pd.DataFrame, root: str | Path
) -> None:
    """Stop with one line if a class kept no training image (all of its files unreadable):
    a domain with no real image cannot be learnt, and StarGAN v2 would train it anyway."""
    kept = set(train["class_index"].astype(int))
    for index, name in enumerate(classes):
        if index in kept:
            continue
        folder = Path(root) / name
        mine = rejected[[Path(p).parent == folder for p in rejected["path"]]]
        example = ""
        if len(mine):
            row = mine.iloc[0]
            example = f" (e.g. {Path(row['path']).name}: {row['reason']}: {row['detail']})"[:240]
        raise StageError(
            f"dataset.folders_root: {folder} has no readable image: its {len(mine)} file(s) "
            f"could not be read{example}; replace them or remove the folder"
        )


@dataclass(frozen=True)
class StageCount:
    """What one curation stage kept, and why it dropped the rest (reason → images)."""

    stage: str
    kept: int
    rejected: dict[str, int]


def curation_counts() -> list[StageCount]:
    """Images kept per stage of the curation chain (download, then pio.CURATION_CHAIN up to
    the dataset), from the tables the stages wrote (a stage that has not run, or a table
    that cannot be read, is left out): what a message about a small dataset shows, so the
    user sees which rule took the images away."""
    counts = []
    with contextlib.suppress(Exception):
        manifest = pd.read_parquet(accepted_table("download"), columns=["status"])
        status = manifest["status"].astype(str)
        counts.append(
            StageCount("download", int((status == "ok").sum()), _reasons(status[status != "ok"]))
        )
    for stage in CURATION_CHAIN[: CURATION_CHAIN.index("dataset")]:
        with contextlib.suppress(Exception):
            kept = len(pd.read_parquet(accepted_table(stage), columns=["appid"]))
            rejected = {}
            with contextlib.suppress(Exception):  # none rejected: a table without columns
                table = stage_dir(stage) / "rejected.parquet"
                rejected = _reasons(
                    pd.read_parquet(table, columns=["reason"])["reason"].astype(str)
                )
            counts.append(StageCount(stage, kept, rejected))
    return counts


def _reasons(reasons: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in reasons.value_counts().items()}


def too_few_images(count: int, min_images: int, counts: Sequence[StageCount]) -> str:
    """The one line the dataset stage stops with when it would hold fewer than
    ``dataset.min_images`` images: the stage that dropped the largest share (its reasons and
    table), the whole chain's counts, and the fixes."""
    line = f"{count:,} image(s), fewer than dataset.min_images ({min_images:,})"
    before = [c for c in counts if c.kept or c.rejected]
    worst, worst_share = None, -1.0
    for stage in before:
        total = stage.kept + sum(stage.rejected.values())
        share = 1 - stage.kept / total if total else 0.0
        if share > worst_share:
            worst, worst_share = stage, share
    if worst is not None and worst_share > 0:
        total = worst.kept + sum(worst.rejected.values())
        why = ", ".join(f"{k} {v:,}" for k, v in list(worst.rejected.items())[:4])
        table = "manifest.parquet" if worst.stage == "download" else "rejected.parquet"
        line += (
            f": {worst.stage} kept {worst.kept:,} of {total:,} ({why}; data/{worst.stage}/{table})"
        )
    if before:
        line += "; kept per stage: " + " → ".join(f"{c.stage} {c.kept:,}" for c in before)
    return line + (
        ". Loosen that stage's rule or add images (appids.limit, more sources); "
        "dataset.min_images lower trains on fewer anyway"
    )

"""Contact sheets: up to ``examples`` thumbnails per decision (every rejection reason of every
stage, and the accepted images), with what decided it drawn on the picture: the face boxes and
scores, the vignette's frame, the near-duplicate beside the image it duplicates."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw, ImageFile, ImageFont

from pipeline import io as pio
from pipeline.images import ImageProblem, open_image, to_rgb
from pipeline.params import Params
from pipeline.report.sources import NotShown, RunOutputs, project_file, with_appid
from pipeline.resize import resize_image
from pipeline.validate import SIDES, Duplicate, Frame, Reason

THUMBS = "thumbs"
# The faces stage's label of the unresized image (pipeline.faces.curate.ORIGINAL, not imported
# from there: that module loads torch, seconds of start-up for one string).
ORIGINAL = "original"
# Box colour per detector (in the order the detections table lists them), and its name.
DETECTOR_COLOURS = (
    ("#ff3b30", "red"),
    ("#34c759", "green"),
    ("#0a84ff", "blue"),
    ("#ffcc00", "yellow"),
)
# Reasons whose file cannot be shown: a decompression bomb is never decoded.
NO_PREVIEW = {Reason.too_large.value}


@dataclass
class Tile:
    appid: int | None  # None: the row's appid is not a number (shown as "?")
    name: str
    images: list[str]  # paths relative to the report folder
    caption: str
    pair_appid: int | None = None  # near duplicates: the kept image shown beside this one


@dataclass
class Sheet:
    id: str  # anchor and thumbnail prefix, e.g. validate-vignette
    stage: str
    title: str
    total: int  # how many images had this decision (the sheet shows at most ``examples``)
    tiles: list[Tile] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)  # decisions without a picture (download)
    note: str = ""


@contextlib.contextmanager
def _truncated_images_allowed() -> Iterator[None]:
    """Let Pillow decode what there is of a truncated file (its preview), then restore."""
    before = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before


def placeholder(text: str, height: int) -> Image.Image:
    """A grey tile naming why there is no picture (so every <img> on the page loads)."""
    im = Image.new("RGB", (height * 3 // 2, height), (60, 60, 66))
    draw = ImageDraw.Draw(im)
    draw.text((8, height // 2 - 8), text[:28], fill=(230, 230, 230), font=_font(14))
    return im


def preview(path: str | Path, reason: str, height: int) -> Image.Image:
    """The image as RGB for a thumbnail, a partial decode if truncated, else a placeholder."""
    if reason in NO_PREVIEW:
        return placeholder(f"{reason}: not decoded", height)
    try:
        return to_rgb(open_image(path))
    except ImageProblem as problem:
        if problem.reason == Reason.truncated.value:
            with _truncated_images_allowed(), contextlib.suppress(Exception):
                return to_rgb(open_image(path))
        return placeholder(f"{problem.reason}: no preview", height)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def scaled(im: Image.Image, height: int) -> tuple[Image.Image, float]:
    """``im`` at ``height`` pixels high (at most 3 heights wide), and the scale applied."""
    scale = min(height / im.height, 3 * height / im.width)
    size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    return im.resize(size, Image.Resampling.LANCZOS), scale


class ThumbWriter:
    """Writes thumbnails into ``<report>/thumbs/`` and returns their page-relative paths.

    Names come from table values (a reason, a resolution): each is made a safe file name
    (a reason ``a/b`` named a folder that does not exist) and unique in the folder."""

    def __init__(self, report_dir: Path, height: int):
        self.dir = report_dir / THUMBS
        self.dir.mkdir(parents=True, exist_ok=True)
        self.height = height
        self.taken: set[str] = set()

    def save(self, name: str, im: Image.Image) -> str:
        file = pio.unique_name([pio.safe_name(name)], self.taken, name, ".jpg")
        im.convert("RGB").save(self.dir / file, quality=85)
        return f"{THUMBS}/{file}"

    def thumbnail(self, name: str, im: Image.Image) -> str:
        return self.save(name, scaled(im, self.height)[0])


def draw_faces(im: Image.Image, found: list[tuple[int, list, list]], height: int) -> Image.Image:
    """Thumbnail of ``im`` with boxes (xyxy in ``im``'s pixels) and scores, per detector
    (its index picks its colour)."""
    thumb, scale = scaled(im, height)
    thumb = thumb.convert("RGB")
    draw = ImageDraw.Draw(thumb)
    font = _font(12)
    for index, boxes, scores in found:
        colour = DETECTOR_COLOURS[index % len(DETECTOR_COLOURS)][0]
        for box, score in zip(boxes, scores, strict=False):
            x0, y0, x1, y1 = (float(v) * scale for v in box)
            draw.rectangle((x0, y0, x1, y1), outline=colour, width=2)
            label = f"{float(score):.2f}"
            ty = y0 - 14 if y0 >= 14 else y1 + 1
            draw.rectangle((x0, ty, x0 + 7 * len(label) + 2, ty + 13), fill=colour)
            draw.text((x0 + 2, ty), label, fill="black", font=font)
    return thumb


def content_box(frame: Frame, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The picture inside validate's frame bands, as (left, top, right, bottom) pixels;
    ValueError when the bands do not fit the image (a detail from another image)."""
    width, height = size
    box = (frame.left, frame.top, width - frame.right, height - frame.bottom)
    if not (0 <= box[0] < box[2] <= width and 0 <= box[1] < box[3] <= height):
        raise ValueError(
            f"its frame (left {frame.left}, top {frame.top}, right {frame.right}, bottom "
            f"{frame.bottom} px) does not fit the {width}x{height} image"
        )
    return box


def draw_vignette(im: Image.Image, box: tuple[int, int, int, int], height: int) -> Image.Image:
    """Thumbnail with the uniform frame outside the content box tinted red, the box outlined."""
    thumb, scale = scaled(im, height)
    overlay = Image.new("RGBA", thumb.size, (255, 40, 40, 110))
    x0, y0, x1, y1 = (round(v * scale) for v in box)
    ImageDraw.Draw(overlay).rectangle((x0, y0, x1 - 1, y1 - 1), fill=(0, 0, 0, 0))
    out = Image.alpha_composite(thumb.convert("RGBA"), overlay).convert("RGB")
    ImageDraw.Draw(out).rectangle((x0, y0, x1 - 1, y1 - 1), outline="#ff3b30", width=1)
    return out


def _appid(value: object) -> int | None:
    return None if pd.isna(value) else int(value)


def _names(run: RunOutputs) -> dict[int, str]:
    appids = run.table("appids", "appids")
    if appids is None or "name" not in appids:
        return {}
    appids = with_appid(appids)
    return dict(
        zip(appids["appid"].astype(int), appids["name"].fillna("").astype(str), strict=True)
    )


def _image_paths(run: RunOutputs) -> dict[int, str]:
    """The file each stage judged, per appid (validate's converted RGB copy when there is one)."""
    paths: dict[int, str] = {}
    for stage, table in (("download", "manifest"), ("validate", "accepted")):
        df = run.table(stage, table)
        if df is not None and "path" in df:
            df = with_appid(df)
            paths.update(zip(df["appid"].astype(int), df["path"].astype(str), strict=True))
    return paths


def _preview(run: RunOutputs, path: object, reason: str, height: int, where: str) -> Image.Image:
    """``preview`` of a table's ``path``, when it names a file inside the project; else a
    placeholder and a note (the report folder is shared: nothing outside goes into it)."""
    try:
        real = project_file(run.root, str(path))
    except NotShown as exc:
        run.notes.append(f"{where}: {path}: {exc}; shown as a placeholder")
        return placeholder("not in the project", height)
    return preview(real, reason, height)


@contextlib.contextmanager
def _one_row(run: RunOutputs, writer: ThumbWriter, tile: Tile, prefix: str, where: str):
    """Build one row's tile; if a value of the row stops it (a frame wider than its image),
    the tile gets a placeholder and the page's notes a line: the rest of the page is made."""
    try:
        yield
    except Exception as exc:  # a table value of any kind may be bad
        why = (str(exc).splitlines() or [exc.__class__.__name__])[0][:200]
        app = "?" if tile.appid is None else tile.appid
        run.notes.append(f"{where}: appid {app}: {why}; shown as a placeholder")
        tile.images = [writer.save(prefix, placeholder("cannot be shown", writer.height))]


def _pick(df: pd.DataFrame, examples: int) -> pd.DataFrame:
    return df.sort_values("appid", kind="stable").head(examples)


def validate_sheets(run: RunOutputs, params: Params, writer: ThumbWriter) -> list[Sheet]:
    rejected = run.table("validate", "rejected")
    if rejected is None:
        return []
    names, paths, examples = _names(run), _image_paths(run), params.report.examples
    min_border = params.validate_.vignette_min_border
    order = [r.value for r in Reason] + sorted(set(rejected["reason"]) - {r.value for r in Reason})
    sheets = []
    for reason in order:
        rows = rejected[rejected["reason"] == reason]
        if not len(rows):
            continue
        sheet = Sheet(f"validate-{reason}", "validate", f"validate: {reason}", len(rows))
        if reason == Reason.near_duplicate.value:
            matches = [Duplicate.from_detail(str(d)) for d in rows["detail"]]
            distance = [m.phash_distance if m else -1 for m in matches]
            # the closest calls first: the pairs to look at when tuning dedup_max_distance
            rows = rows.assign(_d=distance).sort_values(["_d", "appid"], ascending=[False, True])
            rows = rows.head(examples)
            sheet.note = "closest to the threshold first; the kept image is on the right"
        else:
            rows = _pick(rows, examples)
        where = "data/validate/rejected.parquet"
        for appid, path, detail in zip(rows["appid"], rows["path"], rows["detail"], strict=True):
            appid = _appid(appid)
            tile = Tile(appid, names.get(appid, ""), [], str(detail))
            prefix = f"{sheet.id}-{'unknown' if appid is None else appid}"
            with _one_row(run, writer, tile, prefix, where):
                im = _preview(run, path, reason, writer.height, where)
                if reason == Reason.vignette.value and (frame := Frame.from_detail(str(detail))):
                    box = content_box(frame, im.size)
                    sides = zip(SIDES, frame.widths, strict=True)
                    framed = [f"{s} {w} px" for s, w in sides if w > min_border]
                    tile.caption = "frame on " + ", ".join(framed) if framed else str(detail)
                    if framed and frame.edge is not None:
                        tile.caption += f"; picture meets {frame.edge:.0%} of an edge"
                    tile.images.append(writer.save(prefix, draw_vignette(im, box, writer.height)))
                else:
                    tile.images.append(writer.thumbnail(prefix, im))
                if reason == Reason.near_duplicate.value and (
                    match := Duplicate.from_detail(str(detail))
                ):
                    kept = match.of
                    tile.pair_appid = kept
                    hashes = f"pHash {match.phash_distance} bits"
                    if match.dhash_distance is not None:
                        hashes += f", dHash {match.dhash_distance} bits"
                    tile.caption = f"{hashes} to {kept} (kept)"
                    kept_im = _preview(run, paths.get(kept, ""), "", writer.height, where)
                    tile.images.append(writer.thumbnail(f"{prefix}-kept-{kept}", kept_im))
            sheet.tiles.append(tile)
        sheets.append(sheet)
    return sheets


def faces_sheets(run: RunOutputs, params: Params, writer: ThumbWriter) -> list[Sheet]:
    rejected = run.table("faces", "rejected")
    if rejected is None:
        return []
    detections = run.table("faces", "detections")
    names, examples = _names(run), params.report.examples
    # the detectors that ran (the table's, in its order): params.yaml may have changed since
    detectors = list(dict.fromkeys(detections["detector"])) if detections is not None else []
    sheets = []
    for reason in sorted(set(rejected["reason"])):
        rows = rejected[rejected["reason"] == reason]
        sheet = Sheet(f"faces-{reason}", "faces", f"faces: {reason}", len(rows))
        sheet.note = "boxes and scores, one picture per resolution: " + ", ".join(
            f"{name} in {DETECTOR_COLOURS[i % len(DETECTOR_COLOURS)][1]}"
            for i, name in enumerate(detectors)
        )
        where = "data/faces/rejected.parquet"
        for appid, path, detail in zip(
            *(_pick(rows, examples)[c] for c in ("appid", "path", "detail")), strict=True
        ):
            appid = _appid(appid)
            tile = Tile(appid, names.get(appid, ""), [], str(detail))
            prefix = f"{sheet.id}-{'unknown' if appid is None else appid}"
            with _one_row(run, writer, tile, prefix, where):
                im = _preview(run, path, reason, writer.height, where)
                mine = None
                if detections is not None and appid is not None:
                    mine = detections[detections["appid"] == appid]
                if mine is None or not len(mine):
                    tile.images.append(writer.thumbnail(prefix, im))
                else:
                    for resolution, found in mine.groupby("resolution", sort=False):
                        version = (
                            im
                            if resolution == ORIGINAL
                            else resize_image(im, int(resolution), params.faces.resize_mode)
                        )
                        per_detector = [
                            (detectors.index(d), list(b), list(s))
                            for d, b, s in zip(
                                found["detector"], found["boxes"], found["scores"], strict=True
                            )
                        ]
                        thumb = draw_faces(version, per_detector, writer.height)
                        tile.images.append(writer.save(f"{prefix}-{resolution}", thumb))
            sheet.tiles.append(tile)
        sheets.append(sheet)
    return sheets


def download_sheet(run: RunOutputs, params: Params) -> list[Sheet]:
    """Downloads that failed have no file: a table of them instead of thumbnails."""
    manifest = run.table("download", "manifest")
    if manifest is None:
        return []
    sheets = []
    for status in ("missing", "invalid", "error"):
        rows = manifest[manifest["status"] == status]
        if not len(rows):
            continue
        sheet = Sheet(f"download-{status}", "download", f"download: {status}", len(rows))
        for _, row in _pick(rows, params.report.examples).iterrows():
            http = row.get("http_status")
            sheet.rows.append(
                {
                    "appid": _appid(row["appid"]),
                    "http_status": "" if pd.isna(http) else int(http),
                    "error": "" if pd.isna(row.get("error")) else str(row.get("error")),
                    "url": str(row.get("url", "")),
                }
            )
        sheets.append(sheet)
    return sheets


def resize_sheet(run: RunOutputs, params: Params) -> list[Sheet]:
    rejected = run.table("resize", "rejected")
    if rejected is None or not len(rejected):
        return []
    sheet = Sheet("resize-failed", "resize", "resize: failed", len(rejected))
    for _, row in _pick(rejected, params.report.examples).iterrows():
        sheet.rows.append(
            {"appid": _appid(row["appid"]), "error": str(row["error"]), "url": str(row["source"])}
        )
    return [sheet]


def accepted_sheet(run: RunOutputs, params: Params, writer: ThumbWriter) -> Sheet | None:
    """The images that made it into the dataset (resize's output), evenly spaced over it."""
    accepted = run.table("resize", "accepted")
    if accepted is None or run.file("dataset", "stats") is None:
        return None
    names, examples = _names(run), params.report.examples
    sheet = Sheet("accepted", "dataset", "accepted (in the dataset)", len(accepted))
    accepted = accepted.sort_values("appid", kind="stable").reset_index(drop=True)
    if len(accepted) > examples:
        step = len(accepted) / max(examples, 1)
        accepted = accepted.iloc[[int(i * step) for i in range(examples)]]
    where = "data/resize/accepted.parquet"
    for appid, path in zip(accepted["appid"], accepted["path"], strict=True):
        appid = _appid(appid)
        tile = Tile(appid, names.get(appid, ""), [], "")
        prefix = f"accepted-{'unknown' if appid is None else appid}"
        with _one_row(run, writer, tile, prefix, where):
            im = _preview(run, path, "", writer.height, where)
            tile.images.append(writer.thumbnail(prefix, im))
        sheet.tiles.append(tile)
    return sheet


def contact_sheets(run: RunOutputs, params: Params, report_dir: Path) -> list[Sheet]:
    """Every decision's sheet, in pipeline order, the accepted images last."""
    writer = ThumbWriter(report_dir, params.report.thumb_height)
    sheets = [
        *download_sheet(run, params),
        *validate_sheets(run, params, writer),
        *faces_sheets(run, params, writer),
        *resize_sheet(run, params),
    ]
    if (accepted := accepted_sheet(run, params, writer)) is not None:
        sheets.append(accepted)
    return sheets

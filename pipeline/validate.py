"""Reject images a GAN should not learn from: broken, wrong size or mode, blank, vignetted,
or near duplicates of another banner.

Each image gets one reason (the first check it fails, in the order of ``Reason``); near
duplicates are judged last and only among images that passed everything else, so a broken
file never knocks out a good one.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
from PIL import Image, ImageStat

from pipeline.images import ImageProblem, open_image, save_png, to_rgb
from pipeline.params import ValidateParams
from pipeline.steam import BannerKind


class Reason(StrEnum):
    unreadable = "unreadable"
    truncated = "truncated"
    too_large = "too_large"
    wrong_size = "wrong_size"
    mode = "mode"
    blank = "blank"
    vignette = "vignette"
    near_duplicate = "near_duplicate"


@dataclass(frozen=True)
class ValidateTask:
    appid: int
    path: str
    expected_size: tuple[int, int] | None
    params: ValidateParams
    converted_dir: str


@dataclass
class Verdict:
    appid: int
    path: str
    reason: str | None = None
    detail: str = ""
    width: int | None = None
    height: int | None = None
    mode: str | None = None
    converted: bool = False
    phash: int | None = field(default=None, repr=False)
    dhash: int | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Frame:
    """Width in pixels of the uniform band on each side of an image (0: none), and how much
    of a band's inner edge the picture meets (``edge_contact``; None: not measured)."""

    left: int
    top: int
    right: int
    bottom: int
    edge: float | None = None

    @property
    def widths(self) -> tuple[int, int, int, int]:
        """The bands' widths: left, top, right, bottom."""
        return self.left, self.top, self.right, self.bottom

    def framed(self, min_border: int) -> bool:
        """A picture inside a real frame: bands wider than ``min_border`` on two opposite
        sides (letterbox, pillarbox), which includes a frame on all four. One dark or sky-
        coloured side alone is ordinary full-bleed art, not a frame."""
        return min(self.top, self.bottom) > min_border or min(self.left, self.right) > min_border

    def __str__(self) -> str:
        text = "bands left {}, top {}, right {}, bottom {} px".format(*self.widths)
        return text if self.edge is None else f"{text}, picture meets {self.edge:.0%} of an edge"

    @classmethod
    def from_detail(cls, detail: str) -> Frame | None:
        """The frame a ``vignette`` rejection's detail describes (its ``str``), else None."""
        m = FRAME_DETAIL.search(detail)
        if not m:
            return None
        edge = int(m.group(5)) / 100 if m.group(5) else None
        return cls(*(int(v) for v in m.groups()[:4]), edge=edge)


FRAME_DETAIL = re.compile(
    r"bands left (\d+), top (\d+), right (\d+), bottom (\d+) px"
    r"(?:, picture meets (\d+)% of an edge)?"
)


def side_length(im: Image.Image, side: str) -> int:
    """How many lines run from ``side`` to the opposite side."""
    return im.height if side in ("top", "bottom") else im.width


def lines_box(im: Image.Image, side: str, start: int, stop: int) -> tuple[int, int, int, int]:
    """The crop box of lines ``start`` to ``stop`` (exclusive) counted inward from ``side``."""
    width, height = im.size
    return {
        "top": (0, start, width, stop),
        "bottom": (0, height - stop, width, height - start),
        "left": (start, 0, stop, height),
        "right": (width - stop, 0, width - start, height),
    }[side]


def band_width(im: Image.Image, side: str, tolerance: int) -> int:
    """How many lines from one side of an RGB image form one uniform colour band: over all
    of them, each channel's range (max - min) is at most ``tolerance``, so a band is uniform
    along its whole length and across its width (a gradient sky is not a band), with room
    for JPEG noise. At most half the image.

    Written here because no image library measures a frame this way. It runs on Pillow's
    C code (crop + getextrema, no copy of the image), galloping then bisecting on the width:
    full-bleed art, whose outer line is already not uniform, costs one line.
    """
    limit = (side_length(im, side) + 1) // 2

    def uniform(lines: int) -> bool:
        extrema = im.crop(lines_box(im, side, 0, lines)).getextrema()
        return all(high - low <= tolerance for low, high in extrema)

    if not uniform(1):
        return 0
    good, bad = 1, None  # widths known to be uniform / not
    while bad is None:
        trial = min(good * 4, limit)
        if uniform(trial):
            good = trial
            if trial == limit:
                return limit
        else:
            bad = trial
    while bad - good > 1:
        middle = (good + bad) // 2
        good, bad = (middle, bad) if uniform(middle) else (good, middle)
    return good


# Lines past a band's measured end where the picture may begin and still meet it: a JPEG's
# 8 px blocks (16 with subsampled colour) ring before the picture's real edge, ending the
# uniform band early.
EDGE_REACH = 16
SIDES = ("left", "top", "right", "bottom")


def edge_contact(im: Image.Image, side: str, width: int, tolerance: int) -> float:
    """How much of a band's inner edge the picture meets: the fraction of positions along
    the band where a pixel within ``EDGE_REACH`` lines past it differs from the band's
    colour by more than ``tolerance``. A picture pasted between bands meets them along a
    straight edge (the shared letterboxed and pillarboxed flowers 0.95-1.0); a subject on a
    plain studio background touches the band at a few points of its outline (a portrait on
    white 0.13, flowers on black 0.26-0.46; docs/curation.md)."""
    inner = min(width + EDGE_REACH + 1, side_length(im, side))  # the strip: [width, inner)
    # the band's colour: the middle of its range, which is at most ``tolerance`` wide, so
    # no pixel of the band itself differs from it by more (Pillow's extrema: no copy)
    band = im.crop(lines_box(im, side, 0, width)).getextrema()
    colour = np.array([(low + high) / 2 for low, high in band])
    strip = np.asarray(im.crop(lines_box(im, side, width, inner)), dtype=np.int16)
    if side in ("left", "right"):
        strip = strip.transpose(1, 0, 2)  # lines away from the edge first, as for top
    differs = np.abs(strip - colour).max(axis=2) > tolerance
    return float(differs.any(axis=0).mean())


def find_frame(
    im: Image.Image, tolerance: int, min_border: int, min_edge: float = 0.0
) -> Frame | None:
    """The frame around the picture (see ``Frame.framed``), or None. Two opposite bands
    make a frame only where the picture meets at least ``min_edge`` of one band's inner edge
    (``edge_contact``): a picture pasted between bands does, a subject on a plain studio
    background (a portrait on white, a flower on black) does not, and is kept. A side's
    opposite is measured only when the side itself has a band, so full-bleed art costs a
    few lines."""
    widths: dict[str, int] = {}

    def width(side: str) -> int:
        if side not in widths:
            widths[side] = band_width(im, side, tolerance)
        return widths[side]

    for pair in (("top", "bottom"), ("left", "right")):
        if not all(width(side) > min_border for side in pair):
            continue
        if min_edge <= 0:
            return Frame(*(width(side) for side in SIDES))
        contact = max(edge_contact(im, side, width(side), tolerance) for side in pair)
        if contact >= min_edge:
            return Frame(*(width(side) for side in SIDES), edge=round(contact, 2))
    return None


def measure_frame(im: Image.Image, tolerance: int) -> Frame:
    """The uniform band on each side of an RGB image."""
    return Frame(*(band_width(im, side, tolerance) for side in SIDES))


def image_hashes(im: Image.Image) -> tuple[int, int]:
    """64-bit pHash and dHash (imagehash's) as unsigned integers: the near-duplicate key and
    the second, independent measure that confirms a match (DCT signs vs gradients between
    neighbours). Both are computed on one greyscale 64×64 box-filtered thumbnail: imagehash
    shrinks to 32×32 and 9×8 anyway, and one cheap box pass instead of two Lanczos passes
    over the full image keeps the second hash free (see bench/curation.py)."""
    thumbnail = im.convert("L").resize((64, 64), Image.Resampling.BOX)
    phash, dhash = imagehash.phash(thumbnail), imagehash.dhash(thumbnail)
    return int(str(phash), 16), int(str(dhash), 16)


def size_matches(size: tuple[int, int], expected: tuple[int, int], tolerance: int) -> bool:
    return all(abs(got - want) <= tolerance for got, want in zip(size, expected, strict=True))


def inspect_image(task: ValidateTask) -> Verdict:
    """Every check but near-duplicates, on one image. Runs in a worker process."""
    params = task.params
    verdict = Verdict(appid=task.appid, path=task.path)
    try:
        im = open_image(task.path, params.max_pixels)
    except ImageProblem as problem:
        verdict.reason, verdict.detail = problem.reason, problem.detail
        return verdict
    verdict.width, verdict.height, verdict.mode = im.width, im.height, im.mode
    expected = task.expected_size
    if expected and not size_matches(im.size, expected, params.size_tolerance):
        want = "x".join(map(str, expected))
        within = f" ± {params.size_tolerance} px" if params.size_tolerance else ""
        verdict.reason = Reason.wrong_size
        verdict.detail = f"{im.width}x{im.height}, want {want}{within}"
        return verdict
    if im.mode != "RGB":
        if not params.convert_mode:
            verdict.reason, verdict.detail = Reason.mode, f"{im.mode} (set convert_mode to keep)"
            return verdict
        try:
            im = to_rgb(im, params.matte)
        except (ValueError, OSError) as exc:  # a mode Pillow cannot convert (e.g. "La")
            verdict.reason, verdict.detail = Reason.mode, f"{im.mode} cannot be converted: {exc}"
            return verdict
        verdict.converted = True
    std = max(ImageStat.Stat(im).stddev)  # from the histogram: exact and fast
    if std < params.min_std:
        verdict.reason, verdict.detail = Reason.blank, f"channel std {std:.2f}"
        return verdict
    if params.vignette:
        frame = find_frame(
            im, params.vignette_tolerance, params.vignette_min_border, params.vignette_min_edge
        )
        if frame is not None:
            verdict.reason, verdict.detail = Reason.vignette, str(frame)
            return verdict
    verdict.phash, verdict.dhash = image_hashes(im)
    if verdict.converted:
        converted = Path(task.converted_dir) / f"{task.appid}.png"
        save_png(im, converted)
        verdict.path = converted.as_posix()
    return verdict


def hamming(a: np.ndarray, b: int) -> np.ndarray:
    """Bit distance between each 64-bit hash in ``a`` and the hash ``b``."""
    return np.bitwise_count(a ^ np.uint64(b))


@dataclass(frozen=True)
class Duplicate:
    """Why an image is a near duplicate: the kept image it matches and both distances."""

    of: int  # the kept appid
    phash_distance: int
    dhash_distance: int | None  # None when no confirmation was asked for

    def __str__(self) -> str:
        confirm = "" if self.dhash_distance is None else f", dHash {self.dhash_distance} bits"
        return f"of {self.of} (pHash {self.phash_distance} bits{confirm})"

    @classmethod
    def from_detail(cls, detail: str) -> Duplicate | None:
        """The match a ``near_duplicate`` rejection's detail describes (its ``str``)."""
        m = DUPLICATE_DETAIL.search(detail)
        if not m:
            return None
        dhash = None if m.group(3) is None else int(m.group(3))
        return cls(int(m.group(1)), int(m.group(2)), dhash)


DUPLICATE_DETAIL = re.compile(r"of (\d+) \(pHash (\d+) bits(?:, dHash (\d+) bits)?\)")


def find_near_duplicates(
    appids: list[int],
    hashes: list[int],
    max_distance: int,
    confirm_hashes: list[int] | None = None,
    confirm_distance: int | None = None,
) -> dict[int, Duplicate]:
    """Map each near-duplicate appid to the kept image it duplicates.

    Images are taken in ascending appid order; one is a duplicate when a kept image is within
    ``max_distance`` pHash bits and, with ``confirm_hashes``, also within ``confirm_distance``
    dHash bits: a 64-bit pHash of a small image collides across different games at 8-10
    bits, while a second, independent hash rarely collides on the same pair. The nearest
    confirmed kept image (by pHash) is reported, so the lowest appid of a cluster is kept.
    Comparing only with kept images avoids chains (A~B, B~C, A!~C keeps A and C).
    """
    confirm = confirm_hashes is not None and confirm_distance is not None
    order = np.argsort(np.asarray(appids, dtype=np.int64), kind="stable")
    kept_hashes = np.empty(len(order), dtype=np.uint64)
    kept_confirm = np.empty(len(order), dtype=np.uint64)
    kept_ids: list[int] = []
    duplicates: dict[int, Duplicate] = {}
    for index in order:
        appid, value = appids[index], hashes[index]
        if kept_ids:
            distances = hamming(kept_hashes[: len(kept_ids)], value)
            close = distances <= max_distance
            if confirm and close.any():
                second_distances = hamming(kept_confirm[: len(kept_ids)], confirm_hashes[index])
                close &= second_distances <= confirm_distance
            if close.any():
                nearest = int(np.flatnonzero(close)[np.argmin(distances[close])])
                second = int(second_distances[nearest]) if confirm else None
                duplicates[appid] = Duplicate(kept_ids[nearest], int(distances[nearest]), second)
                continue
        kept_hashes[len(kept_ids)] = np.uint64(value)
        if confirm:
            kept_confirm[len(kept_ids)] = np.uint64(confirm_hashes[index])
        kept_ids.append(appid)
    return duplicates


def expected_size_for(kind: str | None, setting) -> tuple[int, int] | None:
    if setting is None:
        return None
    if setting == "auto":
        try:
            return BannerKind(kind).size
        except ValueError:
            return None
    return tuple(setting)


def tasks_from_manifest(
    manifest: pd.DataFrame, params: ValidateParams, converted_dir: str | Path
) -> list[ValidateTask]:
    ok = manifest[manifest["status"] == "ok"] if "status" in manifest else manifest
    kinds = ok["kind"] if "kind" in ok else [None] * len(ok)
    return [
        ValidateTask(
            appid=int(appid),
            path=str(path),
            expected_size=expected_size_for(kind, params.expected_size),
            params=params,
            converted_dir=str(converted_dir),
        )
        for appid, path, kind in zip(ok["appid"], ok["path"], kinds, strict=True)
    ]


def split_verdicts(
    verdicts: list[Verdict], max_distance: int | None, confirm_distance: int | None = None
):
    """Apply the near-duplicate rule and return (accepted, rejected) tables."""
    verdicts = [replace(v) for v in verdicts]
    passed = [v for v in verdicts if v.reason is None]
    if max_distance is not None and passed:
        dups = find_near_duplicates(
            [v.appid for v in passed],
            [v.phash for v in passed],
            max_distance,
            [v.dhash for v in passed],
            confirm_distance,
        )
        for v in passed:
            if v.appid in dups:
                v.reason, v.detail = Reason.near_duplicate, str(dups[v.appid])
    accepted = pd.DataFrame(
        [
            {**asdict(v), "phash": f"{v.phash:016x}", "dhash": f"{v.dhash:016x}"}
            for v in verdicts
            if v.reason is None
        ],
        columns=[*Verdict.__dataclass_fields__],
    ).drop(columns=["reason", "detail"])
    rejected = pd.DataFrame(
        [
            {"appid": v.appid, "path": v.path, "reason": str(v.reason), "detail": v.detail}
            for v in verdicts
            if v.reason is not None
        ],
        columns=["appid", "path", "reason", "detail"],
    )
    accepted = accepted.astype({"appid": "int64", "width": "int64", "height": "int64"})
    rejected = rejected.astype({"appid": "int64"})
    return (
        accepted.sort_values("appid").reset_index(drop=True),
        rejected.sort_values("appid").reset_index(drop=True),
    )


def summarize(accepted: pd.DataFrame, rejected: pd.DataFrame) -> dict:
    counts = rejected["reason"].value_counts()
    return {
        "input": len(accepted) + len(rejected),
        "accepted": len(accepted),
        "rejected": len(rejected),
        "reasons": {reason.value: int(counts.get(reason.value, 0)) for reason in Reason},
    }

"""The faces stage: keep banners in which the detectors find exactly ``require_exactly`` faces.

Each configured detector runs on each image at each of ``resolutions`` (``original``, and
square sizes made the way the ``resize`` stage makes them). A detector accepts an image when
it counts ``require_exactly`` faces at every resolution; ``combine: all`` keeps an image
every detector accepts (the seeds' Steam-OneFace ``small`` set: face_alignment ∩
retinaface), ``any`` one that some detector accepts.

Results go through a cache keyed by image sha256 + detector config (``ResultCache``), so a
re-run, a killed run or a few new banners only compute what is missing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.devices import pick_device
from pipeline.faces.base import FaceDetector, Faces, chunks, load_detector
from pipeline.faces.cache import Entry, ResultCache
from pipeline.images import ImageProblem, open_image, to_rgb
from pipeline.params import FacesParams
from pipeline.resize import resize_image

ORIGINAL = "original"
# Bump when a change of code changes what the detectors return, so old cache rows are not used.
CACHE_FORMAT = 2  # 2: max_size caps instead of resizing up; containment suppression
FACE_COUNT = "face_count"  # the rejection reason for a wrong number of faces


def resolution_label(resolution: str | int) -> str:
    return ORIGINAL if resolution == ORIGINAL else str(int(resolution))


def resolution_key(resolution: str | int, resize_mode: str) -> str:
    """The cache's name for a resolution: a square size depends on how it was made."""
    return ORIGINAL if resolution == ORIGINAL else f"{int(resolution)}:{resize_mode}"


def batch_size(cfg: FacesParams) -> int:
    """``auto``: 16 images per pass on CUDA; 2 on a CPU, where larger batches run slower."""
    if cfg.batch_size != "auto":
        return int(cfg.batch_size)
    return 16 if pick_device(cfg.device).type == "cuda" else 2


def detector_options(cfg: FacesParams, name: str) -> dict[str, Any]:
    """``load_detector`` options for one detector from the ``faces`` params."""
    weights = {"weights_dir": cfg.weights_dir, "download": cfg.download_weights}
    batch = {"device": cfg.device, "batch_size": batch_size(cfg)}
    if name == "retinaface":
        r = cfg.retinaface
        return {
            "variant": r.variant,
            "weights": r.weights,
            "confidence": r.confidence,
            "nms": r.nms,
            "max_size": r.max_size,
            **weights,
            **batch,
        }
    if name == "face_alignment":
        fa = cfg.face_alignment
        return {"weights": fa.weights, "confidence": fa.confidence, **weights, **batch}
    if name == "dlib":
        return {"upsample": cfg.dlib.upsample, "confidence": cfg.dlib.confidence}
    raise ValueError(f"no options for detector {name!r}")


def load_detectors(cfg: FacesParams) -> dict[str, FaceDetector]:
    return {
        name: load_detector(name, containment=cfg.containment, **detector_options(cfg, name))
        for name in cfg.detectors
    }


def describe_thresholds(detector: FaceDetector) -> str:
    """The thresholds a detector runs with, for the stage to print: RetinaFace's come from
    its variant unless set, and the wrong ones cost accuracy silently."""
    config = detector.config
    values = {"variant": config["name"]} if "name" in config else {}  # RetinaFace's variant
    keys = ("confidence", "nms", "max_size", "upsample", "containment")
    values.update({k: config[k] for k in keys if k in config})
    return f"{detector.name}: " + ", ".join(f"{k} {v}" for k, v in values.items())


def config_key(detector: FaceDetector) -> str:
    text = json.dumps({"cache_format": CACHE_FORMAT, **detector.config}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def image_versions(
    path: str, resolutions: Sequence[str | int], resize_mode: str
) -> dict[str, np.ndarray]:
    """The image as an RGB array at each resolution; raises ImageProblem for a bad file."""
    im = to_rgb(open_image(path))
    out = {}
    for resolution in resolutions:
        version = im if resolution == ORIGINAL else resize_image(im, int(resolution), resize_mode)
        out[resolution_key(resolution, resize_mode)] = np.asarray(version)
    return out


def to_entry(faces: Faces) -> Entry:
    boxes = [[round(float(v), 2) for v in box] for box in faces.boxes]
    return boxes, [round(float(s), 5) for s in faces.scores]


@dataclass
class FaceRun:
    """What ``detect_faces`` found: cache entries per detector, and images it could not read."""

    sha256: dict[int, str] = field(default_factory=dict)  # appid → image digest
    entries: dict[str, dict[tuple[str, str], Entry]] = field(default_factory=dict)
    problems: dict[int, ImageProblem] = field(default_factory=dict)
    computed: int = 0  # detector runs this time (image × resolution × detector)
    cached: int = 0  # the same, found in the cache


def detect_faces(
    table: pd.DataFrame,
    cfg: FacesParams,
    detectors: dict[str, FaceDetector],
    cache: ResultCache,
    on_progress: Callable[[int, str], None] | None = None,
) -> FaceRun:
    """Run every detector at every resolution on every image the cache has no result for.

    Images are decoded one chunk (4 batches) ahead on a thread while the detectors work; each
    chunk's results are committed to the cache before the next, so a kill loses one chunk at
    most.
    """
    progress = on_progress or (lambda n, status: None)
    run = FaceRun()
    keys = {name: config_key(det) for name, det in detectors.items()}
    for name, det in detectors.items():
        cache.register(keys[name], det.config)
        run.entries[name] = cache.load(keys[name])
    wanted = [resolution_key(r, cfg.resize_mode) for r in cfg.resolutions]

    paths: dict[str, str] = {}  # sha256 → a file with that content
    for appid, path in zip(table["appid"], table["path"], strict=True):
        try:
            digest = file_sha256(path)
        except OSError as exc:
            detail = "file not found" if isinstance(exc, FileNotFoundError) else str(exc)
            run.problems[int(appid)] = ImageProblem("unreadable", detail)
            continue
        run.sha256[int(appid)] = digest
        paths.setdefault(digest, str(path))

    def missing(digest: str) -> list[tuple[str, str]]:
        return [
            (name, key)
            for name in detectors
            for key in wanted
            if (digest, key) not in run.entries[name]
        ]

    todo = [digest for digest in paths if missing(digest)]
    total_runs = len(paths) * len(detectors) * len(wanted)
    run.cached = total_runs - sum(len(missing(d)) for d in todo)
    appids_of: dict[str, list[int]] = {}
    for appid, digest in run.sha256.items():
        appids_of.setdefault(digest, []).append(appid)
    done_images = len(run.problems) + sum(len(appids_of[d]) for d in paths if d not in todo)
    progress(done_images, f"{done_images:,} cached")

    def decode(batch: Sequence[str]) -> dict[str, dict[str, np.ndarray] | ImageProblem]:
        out: dict[str, dict[str, np.ndarray] | ImageProblem] = {}
        for digest in batch:
            try:
                out[digest] = image_versions(paths[digest], cfg.resolutions, cfg.resize_mode)
            except ImageProblem as problem:
                out[digest] = problem
        return out

    batches = list(chunks(todo, 4 * batch_size(cfg)))
    with ThreadPoolExecutor(max_workers=1) as pool:
        ahead = pool.submit(decode, batches[0]) if batches else None
        for index, batch in enumerate(batches):
            decoded = ahead.result()
            if index + 1 < len(batches):
                ahead = pool.submit(decode, batches[index + 1])
            for digest, versions in decoded.items():
                if isinstance(versions, ImageProblem):
                    for appid in appids_of[digest]:
                        run.problems[appid] = versions
            for name, det in detectors.items():
                for key in wanted:
                    need = [
                        d
                        for d, v in decoded.items()
                        if not isinstance(v, ImageProblem) and (d, key) not in run.entries[name]
                    ]
                    if not need:
                        continue
                    found = det.detect([decoded[d][key] for d in need])
                    rows = [(d, key, to_entry(f)) for d, f in zip(need, found, strict=True)]
                    cache.put(keys[name], rows)
                    for d, _, entry in rows:
                        run.entries[name][d, key] = entry
                    run.computed += len(rows)
            cache.commit()
            progress(sum(len(appids_of[d]) for d in batch), f"{run.computed:,} computed")
    return run


def face_counts(run: FaceRun, appid: int, cfg: FacesParams) -> dict[str, dict[str, int]]:
    """detector → resolution label → number of faces, for one readable image."""
    digest = run.sha256[appid]
    counts: dict[str, dict[str, int]] = {}
    for name in cfg.detectors:
        entries = run.entries[name]
        counts[name] = {
            resolution_label(r): len(entries[digest, resolution_key(r, cfg.resize_mode)][1])
            for r in cfg.resolutions
        }
    return counts


def detector_accepts(counts: dict[str, int], require: int) -> bool:
    """One detector's verdict: exactly ``require`` faces at every resolution."""
    return all(n == require for n in counts.values())


def combined_verdict(verdicts: dict[str, bool], combine: str) -> bool:
    """``all``: every detector accepts (intersection); ``any``: some detector does (union)."""
    return all(verdicts.values()) if combine == "all" else any(verdicts.values())


def describe_counts(counts: dict[str, dict[str, int]]) -> str:
    return "; ".join(
        f"{name}: " + ", ".join(f"{res} {n}" for res, n in by_res.items())
        for name, by_res in counts.items()
    )


def split_tables(
    table: pd.DataFrame, run: FaceRun, cfg: FacesParams
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(detections, accepted, rejected): one detections row per image × detector × resolution,
    the upstream rows that pass (all their columns), and the rest with reason and detail."""
    detections, keep, rejected = [], [], []
    for index, (appid, path) in enumerate(zip(table["appid"], table["path"], strict=True)):
        appid = int(appid)
        problem = run.problems.get(appid)
        if problem is not None:
            rejected.append((appid, str(path), problem.reason, problem.detail))
            continue
        digest = run.sha256[appid]
        for name in cfg.detectors:
            for r in cfg.resolutions:
                boxes, scores = run.entries[name][digest, resolution_key(r, cfg.resize_mode)]
                detections.append((appid, name, resolution_label(r), len(scores), boxes, scores))
        counts = face_counts(run, appid, cfg)
        verdicts = {n: detector_accepts(c, cfg.require_exactly) for n, c in counts.items()}
        if combined_verdict(verdicts, cfg.combine):
            keep.append(index)
        else:
            rejected.append((appid, str(path), FACE_COUNT, describe_counts(counts)))
    detections_df = pd.DataFrame(
        detections, columns=["appid", "detector", "resolution", "n_faces", "boxes", "scores"]
    ).astype({"appid": "int64", "n_faces": "int64"})
    accepted = table.iloc[keep].reset_index(drop=True)
    rejected_df = pd.DataFrame(rejected, columns=["appid", "path", "reason", "detail"])
    return detections_df, accepted, rejected_df.astype({"appid": "int64"})


def count_bucket(n: int, require: int) -> str:
    return str(n) if n <= require else f"{require + 1}+"


def summarize(
    detections: pd.DataFrame, accepted: pd.DataFrame, rejected: pd.DataFrame, cfg: FacesParams
) -> dict[str, Any]:
    """Counts per detector and resolution, what each detector alone would keep, and the total.

    Face counts are bucketed 0 … require_exactly, then ``require_exactly+1 +``.
    """
    buckets = [str(n) for n in range(cfg.require_exactly + 1)] + [f"{cfg.require_exactly + 1}+"]
    per_detector: dict[str, Any] = {}
    for name in cfg.detectors:
        mine = detections[detections["detector"] == name]
        resolutions = {}
        for r in cfg.resolutions:
            label = resolution_label(r)
            counts = mine.loc[mine["resolution"] == label, "n_faces"]
            tally = dict.fromkeys(buckets, 0)
            for n in counts:
                tally[count_bucket(int(n), cfg.require_exactly)] += 1
            resolutions[label] = tally
        ok = mine.assign(ok=mine["n_faces"] == cfg.require_exactly).groupby("appid")["ok"].all()
        per_detector[name] = {"accepted": int(ok.sum()), "resolutions": resolutions}
    reasons = rejected["reason"].value_counts().to_dict() if len(rejected) else {}
    return {
        "input": len(accepted) + len(rejected),
        "accepted": len(accepted),
        "rejected": len(rejected),
        "reasons": {FACE_COUNT: 0, **{str(k): int(v) for k, v in reasons.items()}},
        "combine": cfg.combine,
        "require_exactly": cfg.require_exactly,
        "detectors": per_detector,
    }

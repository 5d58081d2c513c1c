"""The curation funnel: how many banners each stage kept, why the others went, and the params
that decided it. Counts come from the stage tables (the summaries hold the same numbers)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.params import Params
from pipeline.report.sources import RunOutputs

# The params that shape each step of the funnel (the rest are speed and plumbing).
SHAPING_PARAMS: dict[str, tuple[str, ...]] = {
    "appids": ("source", "file", "limit"),
    "download": ("kind", "retry_missing"),
    "validate": (
        "expected_size",
        "convert_mode",
        "min_std",
        "vignette",
        "vignette_tolerance",
        "vignette_min_border",
        "vignette_min_edge",
        "dedup_max_distance",
        "max_pixels",
    ),
    "faces": ("detectors", "resolutions", "resize_mode", "combine", "require_exactly"),
    "resize": ("size", "mode"),
    "dataset": ("format", "mirror"),
}
FUNNEL_STAGES = tuple(SHAPING_PARAMS)
LABELS = {
    "appids": "app ids",
    "download": "downloaded",
    "validate": "valid",
    "faces": "face rule",
    "resize": "resized",
    "dataset": "dataset",
}


@dataclass
class FunnelStep:
    stage: str
    label: str
    count: int | None  # None: the stage has not run
    breakdown: list[tuple[str, int]] = field(default_factory=list)  # (what, how many)
    notes: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)


def _shaping_params(params: Params, stage: str) -> dict[str, Any]:
    section = params.section(stage)
    values = {key: getattr(section, key) for key in SHAPING_PARAMS[stage]}
    if stage == "faces":  # each detector's own thresholds
        for name in params.faces.detectors:
            for key, value in getattr(params.faces, name).model_dump().items():
                if key in ("variant", "confidence", "nms", "max_size", "upsample"):
                    values[f"{name}.{key}"] = value
    return {k: (v.value if hasattr(v, "value") else v) for k, v in values.items()}


def _reason_counts(df) -> list[tuple[str, int]]:
    if df is None or not len(df) or "reason" not in df:
        return []
    counts = df["reason"].value_counts()
    return [(f"rejected: {reason}", int(n)) for reason, n in counts.items()]


def funnel(run: RunOutputs, params: Params) -> list[FunnelStep]:
    """One step per curation stage, in pipeline order; a stage that has not run has count None."""
    steps = []
    for stage in FUNNEL_STAGES:
        step = FunnelStep(stage, LABELS[stage], None, params=_shaping_params(params, stage))
        if stage == "appids" and (df := run.table("appids", "appids")) is not None:
            step.count = len(df)
            if "source" in df:
                step.breakdown = [
                    (f"from {s}", int(n)) for s, n in df["source"].value_counts().items()
                ]
        elif stage == "download" and (df := run.table("download", "manifest")) is not None:
            counts = df["status"].value_counts()
            step.count = int(counts.get("ok", 0))
            step.breakdown = [
                (status, int(counts.get(status, 0)))
                for status in ("ok", "missing", "invalid", "error")
            ]
        elif stage == "validate" and (df := run.table("validate", "accepted")) is not None:
            step.count = len(df)
            step.breakdown = _reason_counts(run.table("validate", "rejected"))
            if "converted" in df and (converted := int(df["converted"].sum())):
                step.notes.append(f"{converted:,} converted to RGB (convert_mode)")
        elif stage == "faces" and (df := run.table("faces", "accepted")) is not None:
            step.count = len(df)
            step.breakdown = _reason_counts(run.table("faces", "rejected"))
            summary = run.file("faces", "summary") or {}
            for name, result in summary.get("detectors", {}).items():
                per_res = "; ".join(
                    f"{res}: " + ", ".join(f"{n} faces {c:,}" for n, c in tally.items())
                    for res, tally in result.get("resolutions", {}).items()
                )
                step.notes.append(f"{name} alone keeps {result['accepted']:,} ({per_res})")
            if summary:
                step.notes.append(
                    f"combine: {summary.get('combine')} of the detectors, exactly "
                    f"{summary.get('require_exactly')} face(s) at every resolution"
                )
        elif stage == "resize" and (df := run.table("resize", "accepted")) is not None:
            step.count = len(df)
            rejected = run.table("resize", "rejected")
            if rejected is not None and len(rejected):
                step.breakdown = [("failed", len(rejected))]
        elif stage == "dataset" and (stats := run.file("dataset", "stats")) is not None:
            step.count = int(stats["count"])
            source = int(stats.get("source_images", step.count))
            if source != step.count:
                step.notes.append(f"{source:,} banners, mirrored (dataset.mirror)")
        steps.append(step)
    return steps

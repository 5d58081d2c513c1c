"""Traceability: one row per app id with each stage's decision, for the page and as a CSV."""

from __future__ import annotations

import pandas as pd

from pipeline.report.sources import RunOutputs, with_appid

TRACE_COLUMNS = (
    "appid",
    "name",
    "url",
    "sha256",
    "download",
    "validate",
    "faces",
    "resize",
    "dataset",
)
KEPT = "kept"


def _decisions(run: RunOutputs, stage: str) -> dict[int, str]:
    """appid → "kept" or "reason: detail" for one curation stage (absent: not reached)."""
    out: dict[int, str] = {}
    accepted, rejected = run.table(stage, "accepted"), run.table(stage, "rejected")
    if accepted is not None:
        out.update(dict.fromkeys(with_appid(accepted)["appid"].astype(int), KEPT))
    if rejected is not None:
        rejected = with_appid(rejected)
    if rejected is not None and len(rejected):
        reason = rejected["reason"] if "reason" in rejected else pd.Series("failed", rejected.index)
        detail = rejected["detail"] if "detail" in rejected else rejected.get("error")
        text = reason.astype(str) + (
            ": " + detail.fillna("").astype(str) if detail is not None else ""
        )
        out.update(zip(rejected["appid"].astype(int), text.str.rstrip(": "), strict=True))
    return out


def trace_table(run: RunOutputs) -> pd.DataFrame:
    """Every app id the run knows (appids, or the manifest when appids is gone), in id order."""
    appids = run.table("appids", "appids")
    manifest = run.table("download", "manifest")
    base = appids if appids is not None else manifest
    if base is None:
        return pd.DataFrame(columns=TRACE_COLUMNS)
    base = with_appid(base)  # a row whose appid is not a number has no place here (noted)
    df = pd.DataFrame({"appid": base["appid"].astype("int64")})
    df["name"] = base["name"].fillna("").astype(str) if "name" in base else ""
    if manifest is not None:
        manifest = with_appid(manifest).drop_duplicates("appid")
        m = manifest.set_index(manifest["appid"].astype("int64"))
        df["url"] = df["appid"].map(m["url"]).fillna("")
        df["sha256"] = df["appid"].map(m["sha256"]).fillna("")
        status = m["status"].astype(str)
        if "http_status" in m:
            http = m["http_status"].astype("Int64").astype(str).replace("<NA>", "")
            status = status.where((m["status"] == "ok") | (http == ""), status + " (" + http + ")")
        df["download"] = df["appid"].map(status).fillna("")
    else:
        df["url"] = df["sha256"] = df["download"] = ""
    for stage in ("validate", "faces", "resize"):
        decisions = _decisions(run, stage)
        df[stage] = [decisions.get(a, "") for a in df["appid"]]
    in_dataset = (
        run.file("dataset", "stats") is not None and run.table("resize", "accepted") is not None
    )
    resized = run.table("resize", "accepted")
    kept = set(with_appid(resized)["appid"].astype(int)) if in_dataset else set()
    df["dataset"] = [("in" if a in kept else "") for a in df["appid"]] if in_dataset else ""
    return df.sort_values("appid", kind="stable").reset_index(drop=True)[list(TRACE_COLUMNS)]
